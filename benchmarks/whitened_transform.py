"""The whitened_activations stage's transform against its compute bound, on one fp16 chunk at d=2304.

    python benchmarks/whitened_transform.py [--sequences 128] [--rounds 5] [--home HOME]

Writes one chunk (sequences x 128 positions x 2304 dims fp16, mean ~50, position 0 and a random
tail of a quarter of the sequences masked, as the synthetic corpora are), fits a ZCA whitening on it,
then prints attended vectors per second of:
  - the transform before this change (`old_transform_chunk`, kept here as the baseline);
  - Whitening.transform_chunk (what the stage runs: gather, centre, X @ W, checked fp16 cast, scatter);
  - the stage's transform and write, into a chunk directory on disk (removed after each round): the
    whole array made, then written (`transform_chunk` + `write_chunk`, before), and made while written
    (`write_streamed_chunk` of `transform_chunk_into`, the stage now: blocks written by one thread while
    the next is multiplied, no full-size output array);
  - the bare fp32 GEMM bounds, X @ W of the same attended vectors already in fp32 memory, one call:
    numpy (OpenBLAS sgemm) and torch;
best of `rounds` interleaved rounds, and the share of the fastest bound each reaches. With --home, the
chunk is a finished home's first activations chunk and its whitening (e.g. benchmarks/scale.py's home).
Run it plainly and under the AVX2 variables (Makefile test-avx2) to see both CPU paths.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.whitening_moments import DIM, bench_activations, best_seconds, print_shares  # noqa: E402
from latent_atlas.compute.cpu import describe  # noqa: E402
from latent_atlas.data.chunks import (StreamedChunk, read_chunk, to_float16, write_chunk,  # noqa: E402
                                      write_streamed_chunk)
from latent_atlas.data.whitening import Moments, Whitening  # noqa: E402

def old_transform_chunk(whitening: Whitening, chunk) -> np.ndarray:
    """Whitening.transform_chunk as it was before (the baseline): fp32 zeros per 64-sequence block,
    a numpy fp16 -> fp32 gather, centre, X @ W, the checked cast of the whole block with its zeros."""
    out = np.zeros(chunk.activations.shape, np.float16)
    for start, block in chunk.iter_blocks(64):
        mask = block.attention_mask
        whitened = np.zeros(block.activations.shape, np.float32)
        whitened[mask] = whitening.transform(block.activations[mask])
        out[start : start + block.n_sequences] = to_float16(whitened, "bench", "whitened activations", start)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sequences", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--home", help="time a home's first whitened chunk instead (its whitening, its activations)")
    args = parser.parse_args()
    print(describe())
    with tempfile.TemporaryDirectory() as folder:
        if args.home:
            home = Path(args.home)
            whitening = Whitening.load(home / "tensors" / "whitening.npz")
            chunk = read_chunk(sorted((home / "tensors" / "activations").iterdir())[0])
        else:
            acts, mask = bench_activations(args.sequences, np.linspace(0.2, 2.0, DIM, dtype=np.float32))
            write_chunk(Path(folder) / "chunk", acts, mask, np.zeros(mask.shape, np.int32))
            chunk = read_chunk(Path(folder) / "chunk")
            whitening = Whitening.fit(Moments.of_chunk(chunk))
        n = chunk.n_tokens
        x = np.ascontiguousarray(chunk.activations[chunk.attention_mask], dtype=np.float32)
        w = np.ascontiguousarray(whitening.matrix_, dtype=np.float32)
        xt, wt = torch.from_numpy(x), torch.from_numpy(w)
        new, old = whitening.transform_chunk(chunk), old_transform_chunk(whitening, chunk)
        print(f"{chunk.activations.shape} fp16 chunk, {n:,} attended vectors; "
              f"torch threads {torch.get_num_threads()}; best of {args.rounds}; "
              f"largest difference new vs old {np.abs(new.astype(np.float32) - old).max():.2e} "
              f"(fp16 spacing at |x|<=4: {np.spacing(np.float16(4)):.1e})")
        out = Path(folder) / "out"

        def made_then_written():
            write_chunk(out, whitening.transform_chunk(chunk), chunk.attention_mask, chunk.token_ids)
            shutil.rmtree(out)

        def made_while_written():
            write_streamed_chunk(out, StreamedChunk(chunk.activations.shape, chunk.attention_mask, chunk.token_ids,
                                                    {}, lambda f: {"norms": whitening.transform_chunk_into(chunk, f)}))
            shutil.rmtree(out)

        seconds = best_seconds({
            "old transform_chunk": lambda: old_transform_chunk(whitening, chunk),
            "Whitening.transform_chunk": lambda: whitening.transform_chunk(chunk),
            "transform_chunk, then write_chunk (the stage before)": made_then_written,
            "write_streamed_chunk of transform_chunk_into (the stage now)": made_while_written,
            "bound: numpy fp32 X @ W": lambda: x @ w,
            "bound: torch fp32 X @ W": lambda: xt @ wt,
        }, args.rounds)
    print_shares(seconds, n)


if __name__ == "__main__":
    main()
