"""Loading an E-step block's rows (fp16 chunk -> fp32 buffer + norms) run by run vs as one gather,
alone and between the pass's GEMMs.

`python benchmarks/load_rows.py`: 2 synthetic fp16 chunk dirs (~117k attended vectors, d=2304), the
learning pass's sample and 2048-row blocks; times only the loading, summed over the blocks, best of 3.
"run by run" is what estep.load_rows did before: a copy and a norm per run of consecutive rows (a
sequence). "gather" is estep.load_rows now. "between GEMMs": an fp32 GEMM against 512 centroids
(gemm.fp32_mm) after each block, as in the pass.
"""

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from latent_atlas.clustering.estep import as_tensor, buffer, load_rows, scratch_space  # noqa: E402
from latent_atlas.clustering.gemm import fp32_mm  # noqa: E402
from latent_atlas.clustering.rows import open_rows, sample_positions  # noqa: E402
from latent_atlas.compute.cpu import describe  # noqa: E402
from latent_atlas.data.synthetic import write_synthetic_chunks  # noqa: E402

KEYS = {"activations": "activations", "attention_mask": "attention_mask"}


def run_by_run(flat, source, index, scratch):
    b, d = len(index), flat.shape[1]
    x = buffer(scratch, "x_runs", (b, d), "cpu")
    norms = buffer(scratch, "norms_runs", (b, 1), "cpu")[:, 0]
    bounds = [0, *(np.flatnonzero(np.diff(index) != 1) + 1).tolist(), b]
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        first = int(index[lo])
        torch.linalg.vector_norm(x[lo:hi].copy_(source[first:first + hi - lo]), dim=1, out=norms[lo:hi])
    return x, norms.clamp_min_(1e-12).reciprocal_()


def loading_seconds(paths, loader, with_gemm: bool) -> float:
    centers_t, sims = torch.randn(2304, 512), torch.empty(2048, 512)
    seconds, scratch = 0.0, scratch_space()
    for path in paths:
        rows, _ = open_rows(str(path), KEYS)
        selected = sample_positions(rows, 100_000, np.random.default_rng(0))
        source = as_tensor(rows.data)
        for start in range(0, len(selected), 2048):
            began = time.perf_counter()
            x, _ = loader(rows.data, source, selected[start:start + 2048], scratch)
            seconds += time.perf_counter() - began
            if with_gemm:
                fp32_mm(x, centers_t, sims[:len(x)])
    return seconds


def main() -> None:
    print(describe())
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_synthetic_chunks(Path(tmp), n_chunks=2, n_sequences=512, seq_len=128, dim=2304,
                                       n_clusters=512, seed=0, format="dir")
        loaders = {"run by run": run_by_run, "gather": load_rows}
        x_runs, inv_runs = run_by_run(*_first_block(paths), {})
        x_gather, inv_gather = load_rows(*_first_block(paths), {})
        print("same rows:", torch.equal(x_runs, x_gather), "| inverse norms max rel diff:",
              f"{float(((inv_runs - inv_gather) / inv_gather).abs().max()):.1e}")
        best = {(name, gemm): float("inf") for name in loaders for gemm in (False, True)}
        for _ in range(3):  # interleaved: load on a shared machine falls on all alike
            for name, gemm in best:
                best[name, gemm] = min(best[name, gemm], loading_seconds(paths, loaders[name], gemm))
    for gemm in (False, True):
        where = "between GEMMs" if gemm else "alone        "
        runs, gather = best["run by run", gemm], best["gather", gemm]
        print(f"{where}  run by run {runs * 1000:6.0f} ms   gather {gather * 1000:6.0f} ms   "
              f"gather speed-up {runs / gather:.2f}x")


def _first_block(paths):
    rows, _ = open_rows(str(paths[0]), KEYS)
    index = sample_positions(rows, 100_000, np.random.default_rng(0))[:2048]
    return rows.data, as_tensor(rows.data), index


if __name__ == "__main__":
    main()
