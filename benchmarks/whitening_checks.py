"""The whitening stage's held-out check with its covariance in float32 (now) vs float64 (np.cov, before).

    python benchmarks/whitening_checks.py [--vectors 100000] [--held-out 20000] [--dim 2304] [--rounds 3]

Synthetic vectors with a decaying spectrum (a residual stream's shape: a few directions dominate);
moments of all of them, the held-out check on `--held-out` of them (refit without them, whiten them,
covariance against I), both ways interleaved in one process; prints the best times, their ratio and
the largest difference in the check's figures.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import latent_atlas.data.whitening as whitening  # noqa: E402


def covariance_error_float64(whitened: np.ndarray) -> dict:
    """covariance_error as it was: float64 rows, np.cov."""
    x = np.asarray(whitened, dtype=np.float64)
    cov = np.cov(x, rowvar=False, bias=True)
    return {
        "n": int(len(x)),
        "max_abs_offdiag": float(np.abs(cov - np.diag(np.diag(cov))).max()),
        "mean_diag": float(np.diag(cov).mean()),
        "relative_frobenius": float(np.linalg.norm(cov - np.eye(cov.shape[0])) / np.sqrt(cov.shape[0])),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--held-out", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=2304)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    scales = (1.0 / np.arange(1, args.dim + 1) ** 0.7).astype(np.float32)
    basis = np.linalg.qr(rng.standard_normal((args.dim, args.dim)))[0].astype(np.float32)
    x = (rng.standard_normal((args.vectors, args.dim), dtype=np.float32) * scales) @ basis + 3.0
    moments = whitening.Moments.of_vectors(x)
    held_out = x[: args.held_out]
    current = whitening.covariance_error
    ways = {"float64 np.cov (before)": covariance_error_float64, "float32 syrk (now)": current}
    best, results = {name: float("inf") for name in ways}, {}
    try:
        for _ in range(args.rounds):
            for name, fn in ways.items():
                whitening.covariance_error = fn
                start = time.perf_counter()
                results[name] = whitening.held_out_check(moments, held_out)
                best[name] = min(best[name], time.perf_counter() - start)
    finally:
        whitening.covariance_error = current
    print(f"held-out check: {args.vectors:,} vectors, {args.held_out:,} held out, d={args.dim}; best of {args.rounds}")
    for name in ways:
        print(f"  {name:<26} {best[name]:7.3f} s   passed={results[name]['passed']}  "
              f"relative_frobenius={results[name]['relative_frobenius']:.6f}  mean_diag={results[name]['mean_diag']:.6f}")
    before, now = results.values()
    diff = max(abs(before[k] - now[k]) for k in ("max_abs_offdiag", "mean_diag", "relative_frobenius"))
    print(f"  speed-up {best['float64 np.cov (before)'] / best['float32 syrk (now)']:.2f}x;  "
          f"largest difference in the check's figures {diff:.2e}")


if __name__ == "__main__":
    main()
