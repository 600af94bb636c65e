"""Which data the chunks come from: a text corpus or a directory of seed-format NPZ files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import dagster as dg
from pydantic import Field

from latent_atlas.data.dimensions import corpus_dimension, decide_dimension
from latent_atlas.data.documents import TextSource
from latent_atlas.data.errors import DimensionError
from latent_atlas.data.home_corpus import CorpusIdentity, check_home_corpus
from latent_atlas.data.manifests import (Registration, corpus_files, corpus_source, register_npz, register_text,
                                         remove_manifest, safe_key)
from latent_atlas.data.seed_chunks import NpzKeys


class CorpusResource(dg.ConfigurableResource):
    """Source of chunk partitions."""

    source: str = Field(default="bbc", description="'bbc' (built-in BBC News), 'files' (.txt/.jsonl/.parquet), or 'npz'")
    path: str = Field(default="", description="File or directory for 'files' and 'npz'")
    name: str = Field(default="", description="Corpus name; chunk keys are '<name>-00000', ... (text) or "
                      "'<name>-<file stem>' (NPZ). Empty: 'bbc' for BBC News, else the name of the folder (or file) "
                      "of `path`, so another corpus never takes the demo's keys")
    documents_per_category: int = Field(default=0, description="BBC only: first N articles per category (0 = all)")
    sequence_length: int = Field(default=128, description="Tokens per sequence")
    sequences_per_chunk: int = Field(default=256, description="Sequences per chunk partition (text sources)")
    npz_activations_key: str = Field(default="activations", description="NPZ array holding activations")
    npz_attention_mask_key: str = Field(default="attention_mask", description="NPZ array holding the mask")
    npz_token_ids_key: str = Field(default="token_ids", description="NPZ array holding token ids")
    expected_dim: int = Field(default=0, description="NPZ only: the activations' d; files of another d are refused by "
                              "name. 0: the d a strict majority of the files share (read from their headers at "
                              "registration; no majority is an error naming the files of each d)")
    already_whitened: bool = Field(default=False, description="Inputs are whitened already: whitening is the identity")
    shuffle_documents: bool = Field(default=True, description="Text sources: shuffle documents into chunks (seeded), so "
                                    "no chunk is one topic of a sorted corpus")
    shuffle_seed: int = Field(default=0, description="Seed of the document shuffle")
    skip_first_positions: int = Field(default=4, description="Text sources: leave the first N positions of every "
                                      "window out of the analysis (the model still reads them as context). On the "
                                      "demo, 4 removed both window-start clusters at no cost in separation or stability")

    def npz_keys(self) -> NpzKeys:
        return NpzKeys(self.npz_activations_key, self.npz_attention_mask_key, self.npz_token_ids_key)

    def token_decoder(self, model) -> Callable:
        """ids -> display strings: the model's tokenizer for text sources; NPZ chunks carry ids of an
        unknown tokenizer, shown as '<id>'."""
        from resources.model import decoder_for
        return decoder_for(None) if self.source == "npz" else model.decoder()

    def corpus_name(self) -> str:
        """The corpus part of this source's partition keys."""
        if self.name:
            return safe_key(self.name)
        if self.source == "bbc":
            return "bbc"
        path = Path(self.path).resolve()
        return safe_key(path.name if path.is_dir() else path.stem)

    def npz_dimension(self, corpus: str) -> tuple[int, str] | None:
        """(d, basis) of NPZ corpus `corpus`, decided from all of its registered files (DimensionError when
        they disagree with no majority); None when no file has a readable activations header."""
        return decide_dimension(corpus, corpus_files(corpus), self.npz_activations_key, self.expected_dim)

    def chunk_dimension(self) -> int | None:
        """The d every chunk of this source must have: `expected_dim`, else the NPZ corpus's recorded d;
        None for a text source (every chunk is its model's, checked where the activations are made)."""
        if self.source != "npz":
            return None
        record = corpus_dimension(self.corpus_name())
        return self.expected_dim or (record[0] if record else None)

    def register(self, tokenizer, model_name: str) -> list[str]:
        """Write chunk manifests for this source; returns the partition keys."""
        return self.registration(tokenizer, model_name).keys

    def registration(self, tokenizer, model_name: str, files: list[Path] | None = None) -> Registration:
        """Write chunk manifests for this source; says which keys, and which files were refused or skipped.
        What `latent-atlas run`, the demo and the incoming sensor all register through.

        files: register only these files of the source (the sensor's new ones), not all of it.
        CorpusMismatchError, registering nothing, when the home holds another corpus (home_corpus).
        """
        kind = "npz" if self.source == "npz" else "text"
        check_home_corpus(CorpusIdentity(self.corpus_name(), kind, model_name if kind == "text" else ""))
        report = Registration()
        if self.source == "npz":
            folder = Path(self.path)
            if files is None and not folder.is_dir():
                raise FileNotFoundError(f"{folder}: not a directory of .npz chunks")
            paths = sorted(folder.glob("*.npz")) if files is None else files
            register_npz(paths, self.npz_keys().__dict__, self.corpus_name(), report)
            try:
                report.dimension = self.npz_dimension(self.corpus_name())
            except DimensionError:  # refused as a whole: leave no manifest of it behind
                for key in report.written:
                    remove_manifest(key)
                raise
            return report
        docs = (corpus_source(self.source, self.path, self.documents_per_category or None) if files is None
                else TextSource(files=list(files)))
        register_text(docs, tokenizer, self.corpus_name(), self.sequence_length, self.sequences_per_chunk, model_name,
                      self.shuffle_seed if self.shuffle_documents else None, report, deduplicate=self.source == "files")
        return report
