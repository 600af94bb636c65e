"""Forward-pass throughput of SmolLM2-135M to layer 15 on this CPU, by batch size (tokens per pass).

`python benchmarks/forward_batch.py`: 128 random sequences of 128 tokens, each batch size timed three
times, interleaved so that load on a shared machine falls on all of them alike; prints tokens/s and
the ratio to one 16,384-token batch (what the default 2 GB budget allowed before CPU_BATCH_TOKENS).
"""

import time

import numpy as np
import torch

from latent_atlas.compute.cpu import describe
from latent_atlas.data.models import SMOLLM2, extract_activations, load_model
from latent_atlas.data.paths import model_cache_dir

SIZES = [128, 4, 8, 16, 32]  # sequences of 128 tokens per forward pass


def main() -> None:
    print(describe())
    ids = np.random.default_rng(0).integers(100, 40000, size=(128, 128))
    mask = np.ones_like(ids)
    model = load_model(SMOLLM2, model_cache_dir(), torch.device("cpu"), torch.float32)
    for size in SIZES:  # warm-up: each shape once
        extract_activations(model, ids[:size], mask[:size], 15, size)
    seconds: dict[int, list[float]] = {}
    for _ in range(3):
        for size in SIZES:
            start = time.perf_counter()
            extract_activations(model, ids, mask, 15, size)
            seconds.setdefault(size, []).append(time.perf_counter() - start)
    base = np.median(seconds[128])
    for size, times in seconds.items():
        print(f"batch {size:4d} sequences ({size * 128:6d} tokens): {ids.size / np.median(times):.0f} tok/s "
              f"(median of 3), {base / np.median(times):.2f}x the 16,384-token batch")


if __name__ == "__main__":
    main()
