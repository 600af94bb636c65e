"""The configuration of `SequentialSoftClustering`: every field that determines the learned centroids.

A frozen dataclass, validated when made (the message names the field and the value), written into
every saved model and checkpoint as JSON so that a resume or a load rebuilds exactly the same one.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np

from latent_atlas.clustering.estep import GEMM_DTYPES
from latent_atlas.data.seed_chunks import NpzKeys


@dataclass(frozen=True)
class ClusteringConfig:
    """Everything that determines the learned centroids (same config + data -> same numbers)."""

    n_clusters: int = 512
    """Number of soft clusters k."""
    temperature: float = 0.05
    """Softmax temperature on cosine similarities (1/T is the concentration)."""
    top_m: int = 8
    """At most this many memberships are kept per token."""
    threshold: float = 0.01
    """Memberships below this are dropped (the top one is always kept)."""
    max_points: int = 100_000
    """At most this many attended positions are sampled per chunk for a learning step."""
    n_epochs: int = 3
    """Passes over the chunk stream."""
    init: str = "random"
    """'random' (uniform on the unit sphere, the seed's choice) or 'kmeans++' on a sample drawn evenly
    from every chunk."""
    init_points: int = 20_000
    """Sample size for k-means++ initialization."""
    seed: int = 0
    """Seeds initialization and per-chunk sampling."""
    device: str = "cpu"
    """Torch device for the E-step."""
    chunks_per_step: int = 1
    """Chunks whose statistics are reduced into one M-step (set to the number of workers to parallelize)."""
    step_offset: float = 1.0
    """t0 of the step size rho_t = (t0 + t)^-kappa; >= 1 so that rho_0 <= 1."""
    step_decay: float = 0.6
    """kappa of the step size, in (0.5, 1] (Robbins-Monro)."""
    dead_fraction: float = 0.05
    """A cluster is dead in a step when its usage is below this fraction of the mean usage."""
    dead_window: int = 0
    """Steps over which a cluster's usage (and removal loss) is summed to decide that it is dead (then
    it is reseeded on the most poorly explained points) or can be swapped; 0 = two epochs of steps
    (2 for partial_fit). In a stream kept in topic order a real cluster is absent from most chunks,
    and judging it on the last step or two would reseed it; two epochs see every chunk."""
    duplicate_cosine: float = 0.95
    """A cluster whose centroid is this close (cosine) to one with more usage is redundant: it is
    reseeded at once, like a dead one (two centroids stuck on one mode never die on their own)."""
    swap_margin: float = 2.0
    """A cluster is also moved onto a group of poorly explained points when the cosine those points
    gain exceeds this multiple of what the cluster explains over the last window (its removal loss):
    a stream kept in topic order can leave a mode without a cluster and two clusters on another, and
    no cluster ever dies. 0 switches swaps off."""
    swaps_per_step: int = 2
    """At most this many swaps per step."""
    reseed_candidates: int = 512
    """Poorly explained points each chunk offers as reseed candidates."""
    reseed_neighbors: int = 8
    """A reseeded centroid is the mean of its pick and the pick's nearest candidates (this many in
    all): in high dimensions one noisy point is far from its mode, and a centroid placed on it draws
    no mass and dies again; a mean of a few points from the same mode does not."""
    shuffle_chunks: bool = True
    """Visit chunks in a seeded random order each epoch."""
    block_size: int = 2048
    """Rows per similarity block; bounds E-step memory to ~block_size * (d + k) floats. 2048 rows of
    d=2304 (19 MB fp32) stay in cache between conversion and GEMM; 4096 measured 5-11% slower."""
    learn_precision: str = "auto"
    """Precision of the similarity GEMM of the learning E-step. 'bfloat16': fp32 in and out, products
    in bf16 with fp32 accumulation (oneDNN on AMX, ~4x the fp32 GEMM; TF32/bf16 on CUDA; on
    AVX512-BF16 without AMX a GEMM of bf16 copies whose output is rounded to bf16, ~2x fp32; elsewhere
    the same products from operands rounded to bf16, slower than fp32); cosines to ~1e-3, noise well
    below the step's own sampling noise. 'float32' for an exact learning E-step. 'auto' (default):
    'bfloat16' where the CPU has AMX-BF16 (or on CUDA), 'float32' elsewhere; the estimator resolves it
    once, when it is made, so a run never mixes precisions across workers or a resume, and
    checkpoints hold what was chosen. transform/predict always use fp32."""
    npz_keys: NpzKeys = field(default_factory=NpzKeys)
    """Array names inside seed-format NPZ chunks."""

    def __post_init__(self):
        def check(name: str, ok: bool, expected: str):
            if not ok:
                raise ValueError(f"{name} must be {expected}, got {getattr(self, name)!r}")

        def is_int(v):
            return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

        check("n_clusters", is_int(self.n_clusters) and self.n_clusters >= 1, "a positive integer")
        check("temperature", isinstance(self.temperature, (int, float)) and self.temperature > 0, "a positive number")
        check("top_m", is_int(self.top_m) and self.top_m >= 1, "a positive integer")
        check("threshold", isinstance(self.threshold, (int, float)) and 0 <= self.threshold < 1, "in [0, 1)")
        check("max_points", is_int(self.max_points) and self.max_points >= 1, "a positive integer")
        check("n_epochs", is_int(self.n_epochs) and self.n_epochs >= 1, "a positive integer")
        check("init", self.init in ("random", "kmeans++"), "'random' or 'kmeans++'")
        check("init_points", is_int(self.init_points) and self.init_points >= 1, "a positive integer")
        check("seed", is_int(self.seed) and self.seed >= 0, "a non-negative integer")
        check("chunks_per_step", is_int(self.chunks_per_step) and self.chunks_per_step >= 1, "a positive integer")
        check("step_offset", isinstance(self.step_offset, (int, float)) and self.step_offset >= 1, ">= 1")
        check("step_decay", isinstance(self.step_decay, (int, float)) and 0.5 < self.step_decay <= 1, "in (0.5, 1]")
        check("dead_fraction", isinstance(self.dead_fraction, (int, float)) and 0 <= self.dead_fraction < 1, "in [0, 1)")
        check("duplicate_cosine", isinstance(self.duplicate_cosine, (int, float)) and 0 < self.duplicate_cosine <= 1, "in (0, 1]")
        check("dead_window", is_int(self.dead_window) and self.dead_window >= 0, "a non-negative integer")
        check("swap_margin", isinstance(self.swap_margin, (int, float)) and self.swap_margin >= 0, ">= 0")
        check("swaps_per_step", is_int(self.swaps_per_step) and self.swaps_per_step >= 0, "a non-negative integer")
        check("reseed_candidates", is_int(self.reseed_candidates) and self.reseed_candidates >= 0, "a non-negative integer")
        check("reseed_neighbors", is_int(self.reseed_neighbors) and self.reseed_neighbors >= 1, "a positive integer")
        check("learn_precision", self.learn_precision in ("auto", *GEMM_DTYPES),
              f"'auto' or one of {sorted(GEMM_DTYPES)}")
        check("block_size", is_int(self.block_size) and self.block_size >= 1, "a positive integer")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ClusteringConfig":
        values = json.loads(text)
        values["npz_keys"] = NpzKeys(**values["npz_keys"])
        return cls(**values)
