"""The whitening stage's moments against their compute bound, on one fp16 chunk at d=2304.

    python benchmarks/whitening_moments.py [--sequences 128] [--rounds 5]

Writes one chunk (sequences x 128 positions x 2304 dims fp16, mean ~50, position 0 and a random
tail of a quarter of the sequences masked, as the synthetic corpora are) to a temporary folder, then
prints attended vectors per second of:
  - the moments code before this change (float64 copy per 4096 rows, float64 X.T @ X, after a
    boolean-mask gather of 256 sequences);
  - Moments.of_chunk (float32 X.T @ X of rows shifted by their block's mean, into float64 sums);
  - the bare fp32 GEMM bounds, X.T @ X of the same attended vectors already in fp32 memory, one call:
    numpy (OpenBLAS syrk) and torch;
best of `rounds` interleaved rounds, and the share of the fastest bound that of_chunk reaches.
Run it plainly and under the AVX2 variables (Makefile test-avx2) to see both CPU paths.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from latent_atlas.compute.cpu import describe  # noqa: E402
from latent_atlas.data.chunks import read_chunk, write_chunk  # noqa: E402
from latent_atlas.data.whitening import Moments  # noqa: E402

DIM, SEQ_LEN = 2304, 128


def old_of_chunk(chunk) -> Moments:
    """Moments.of_chunk as it was before the float32 product (the baseline)."""
    m = Moments.zeros(chunk.dim)
    for _, block in chunk.iter_blocks():
        x = block.activations[block.attention_mask]
        for start in range(0, len(x), 4096):
            part = np.asarray(x[start : start + 4096], dtype=np.float64)
            m.count += len(part)
            m.total += part.sum(0)
            m.outer += part.T @ part
    return m


def best_seconds(runs: dict, rounds: int) -> dict:
    """Best wall time of each run over `rounds` interleaved rounds (other processes load every run alike)."""
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def bench_activations(sequences: int, scale: np.ndarray | float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(fp16 activations [sequences, SEQ_LEN, DIM] of mean ~50 and spread `scale`, attention mask with
    position 0 and a random tail of a quarter of the sequences masked, as the synthetic corpora are)."""
    rng = np.random.default_rng(0)
    acts = (rng.standard_normal((sequences, SEQ_LEN, DIM), dtype=np.float32) * scale + 50).astype(np.float16)
    lengths = np.where(rng.random(sequences) < 0.25, rng.integers(2, SEQ_LEN, sequences), SEQ_LEN)
    mask = np.arange(SEQ_LEN) < lengths[:, None]
    mask[:, 0] = False
    return acts, mask


def print_shares(seconds: dict, vectors: int) -> None:
    """A table of vectors/s per run and its share of the fastest run named 'bound: ...'."""
    bound = min(s for name, s in seconds.items() if name.startswith("bound"))
    print("\n| code | vectors/s | share of the fastest bound |\n|---|---|---|")
    for name, s in seconds.items():
        print(f"| {name} | {vectors / s:,.0f} | {bound / s:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sequences", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(describe())
    acts, mask = bench_activations(args.sequences)
    with tempfile.TemporaryDirectory() as folder:
        write_chunk(Path(folder) / "chunk", acts, mask, np.zeros(mask.shape, np.int32))
        chunk = read_chunk(Path(folder) / "chunk")
        n = chunk.n_tokens
        x = np.ascontiguousarray(acts[mask], dtype=np.float32)
        xt = torch.from_numpy(x)
        print(f"{args.sequences} x {SEQ_LEN} x {DIM} fp16 chunk, {n:,} attended vectors; "
              f"torch threads {torch.get_num_threads()}; best of {args.rounds}")
        seconds = best_seconds({
            "old moments (float64 X.T@X)": lambda: old_of_chunk(chunk),
            "Moments.of_chunk (shifted float32 X.T@X)": lambda: Moments.of_chunk(chunk),
            "bound: numpy fp32 X.T@X": lambda: x.T @ x,
            "bound: torch fp32 X.T@X": lambda: xt.T @ xt,
        }, args.rounds)
    print_shares(seconds, n)


if __name__ == "__main__":
    main()
