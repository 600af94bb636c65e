"""Errors raised on bad input: each names the file and what is wrong with it."""

from __future__ import annotations

from pathlib import Path


class ChunkError(ValueError):
    """A chunk (NPZ file, text file, stored tensor) is unusable; `path` and `problem` say why."""

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class DimensionError(ValueError):
    """The files of a corpus disagree on the activations' dimension and no dimension has a strict
    majority: which d is the corpus's is the user's choice, not a guess."""


class CorpusMismatchError(ValueError):
    """A source belongs to another corpus than the one its ATLAS_HOME holds (one corpus per home):
    the message names both."""
