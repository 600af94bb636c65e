"""Benchmark of the streaming soft clustering against baselines measured in the same run.

    python benchmarks/clustering.py [--chunks 4] [--sequences 512]

Data: synthetic chunk directories (fp16, d=2304, 512 directions, ~10% masked), k=512.
Prints: membership pass vs bare GEMM, centroid-learning pass vs faiss / MiniBatchKMeans,
peak RSS for 4x more chunks, kill-and-resume vs uninterrupted centroids. faiss runs with the
OpenBLAS kernel its bundled library picks on this CPU (printed in the header; never forced).
"""

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import faiss  # at the top, so that the header can name its bundled OpenBLAS kernel
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from latent_atlas.clustering.estep import effective_precision  # noqa: E402
from latent_atlas.clustering.gemm import FP32_GEMMS, fp32_gemm, fp32_mm, use_fp32_gemm  # noqa: E402
from latent_atlas.clustering.model import SequentialSoftClustering  # noqa: E402
from latent_atlas.compute.cpu import blas_kernels, describe  # noqa: E402
from latent_atlas.data.chunks import read_chunk  # noqa: E402
from latent_atlas.data.synthetic import write_synthetic_chunks  # noqa: E402

DIM, K = 2304, 512
PARAMS = dict(n_clusters=K, n_epochs=1, max_points=100_000, seed=0)


def timed(fn, repeat: int = 1) -> float:
    """Best wall time of `repeat` runs, in seconds."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def load_unit_rows(paths) -> np.ndarray:
    """All attended rows [N, d] as unit float32, in memory: the baselines' best case."""
    parts = []
    for path in paths:
        chunk = read_chunk(path)
        parts.append(chunk.activations[np.asarray(chunk.attention_mask)].astype(np.float32))
    X = np.concatenate(parts)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    return X


def interleaved(fns: dict, rounds: int) -> dict:
    """Best wall time of each function over `rounds` rounds that run them one after the other.

    The machine is shared: interleaving puts every contender in the same load conditions.
    """
    best = {name: float("inf") for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            best[name] = min(best[name], timed(fn))
    return best


def bare_gemm(X: np.ndarray, centers: np.ndarray, block: int, library: str | None = None):
    """X @ centers.T in fp32, blocked like the membership pass, into a reused buffer, with the E-step's
    fp32 GEMM (gemm.fp32_mm) of `library` ('onednn', 'torch' = MKL, 'openblas'; default: the E-step's)."""
    x, ct = torch.from_numpy(X), torch.from_numpy(np.ascontiguousarray(centers.T))
    out = torch.empty(block, ct.shape[1])

    def run():
        with use_fp32_gemm(library or fp32_gemm()):
            for start in range(0, x.shape[0], block):
                rows = x[start:start + block]
                fp32_mm(rows, ct, out[: rows.shape[0]])

    return run


def with_gemm(library: str, fn):
    with use_fp32_gemm(library):
        return fn()


def gemm_libraries(args) -> None:
    """The bare fp32 GEMM of the issue's shape (120k x 2304 x 512) in 2048-row blocks with oneDNN's,
    torch's default (MKL) and numpy's OpenBLAS, interleaved (gemm.fp32_gemm says which the E-step uses
    and why)."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((120_000, DIM), dtype=np.float32)
    centers = rng.standard_normal((K, DIM), dtype=np.float32)
    t = interleaved({lib: bare_gemm(X, centers, 2048, lib) for lib in FP32_GEMMS}, 3)
    flops = 2 * len(X) * DIM * K
    print(f"\n[fp32 GEMM] 120,000 x {DIM} x {K} in 2048-row blocks, interleaved, best of 3; "
          f"the E-step here uses: {fp32_gemm()}")
    for lib, seconds in t.items():
        print(f"  {lib:9s} {seconds:7.3f} s  {flops / seconds / 1e9:6.0f} GFLOP/s  {t['torch'] / seconds:5.2f}x torch's MKL")


def membership_pass(paths, args) -> None:
    model = SequentialSoftClustering(**PARAMS).fit_chunks(paths[:1])  # any centroids do for timing
    rows = [load_unit_rows([p]) for p in paths]
    rounds = 7
    # Interleaved chunk by chunk (~0.5 s each): the machine is shared, and its speed drifts over
    # seconds; each chunk's GEMM and transform are timed back to back, best of the rounds.
    gemms = {f"gemm_{lib}": lib for lib in FP32_GEMMS}
    best = {name: [float("inf")] * len(paths) for name in (*gemms, "transform")}
    for _ in range(rounds):
        for i, path in enumerate(paths):
            for name, fn in (*((name, bare_gemm(rows[i], model.cluster_centers_, model.block_size, lib))
                               for name, lib in gemms.items()),
                             ("transform", lambda: model.transform(path))):
                best[name][i] = min(best[name][i], timed(fn))
    total = {name: sum(times) for name, times in best.items()}
    n = sum(len(r) for r in rows)
    print(f"\n[membership pass] N={n:,} vectors, d={DIM}, k={K}, top_m={model.top_m}; "
          f"chunk by chunk, interleaved, sum of per-chunk best of {rounds}; E-step GEMM: {fp32_gemm()}")
    for name, lib in gemms.items():
        print(f"  bare {lib:8s} GEMM fp32 (in-memory fp32 rows):     {total[name]:7.3f} s  {n / total[name]:10,.0f} vec/s")
    transform, own = total["transform"], total[f"gemm_{fp32_gemm()}"]
    print(f"  transform over chunk dirs (fp16 memmap -> sparse): {transform:7.3f} s  {n / transform:10,.0f} vec/s")
    print(f"  throughput ratio transform / its own GEMM ({fp32_gemm()}) = {own / transform:.2f},  / fastest GEMM = "
          f"{min(total[name] for name in gemms) / transform:.2f}  (target >= 0.80)")


def centroid_pass(paths, args) -> None:
    from sklearn.cluster import MiniBatchKMeans

    X = load_unit_rows(paths)
    n = X.shape[0]

    def faiss_train(niter):
        km = faiss.Kmeans(DIM, K, niter=niter, spherical=True, seed=1, max_points_per_centroid=n, verbose=False)
        return lambda: km.train(X)

    bounds = np.cumsum([0] + [read_chunk(p).n_tokens for p in paths])  # one partial_fit per chunk, like ours
    mbk = MiniBatchKMeans(K, init="random", n_init=1, random_state=0, batch_size=int(bounds[1]))
    mbk.partial_fit(X[: bounds[1]])  # initialization, not timed
    other = "torch" if fp32_gemm() == "openblas" else "openblas"
    t = interleaved({
        "ours": lambda: SequentialSoftClustering(**PARAMS).fit_chunks(paths),
        "ours_fp32": lambda: SequentialSoftClustering(**PARAMS, learn_precision="float32").fit_chunks(paths),
        "ours_bf16": lambda: SequentialSoftClustering(**PARAMS, learn_precision="bfloat16").fit_chunks(paths),
        "ours_other_gemm": lambda: with_gemm(other, lambda: SequentialSoftClustering(**PARAMS).fit_chunks(paths)),
        "faiss_1": faiss_train(1), "faiss_3": faiss_train(3),
        "sklearn": lambda: [mbk.partial_fit(X[a:b]) for a, b in zip(bounds[:-1], bounds[1:])],
    }, 2)
    ours, ours_fp32, ours_bf16, ours_other, faiss_1, faiss_3, sk = (
        t[name] for name in ("ours", "ours_fp32", "ours_bf16", "ours_other_gemm", "faiss_1", "faiss_3", "sklearn"))
    faiss_iter = min(faiss_1, (faiss_3 - faiss_1) / 2)

    faiss_blas = "; ".join(b for b in blas_kernels() if b.startswith("faiss")) or "?"
    print(f"\n[centroid-learning pass] one pass over N={n:,} vectors, k={K} (faiss BLAS: {faiss_blas}); "
          "interleaved, best of 2")
    gemm = effective_precision(SequentialSoftClustering().learn_precision, "cpu")
    print(f"  ours: fit_chunks, 1 epoch, all points, from fp16 chunk dirs: {ours:7.3f} s  (default; learning GEMM here: {gemm})")
    print(f"  ours, learn_precision='float32' (exact learning GEMM):       {ours_fp32:7.3f} s  "
          f"({effective_precision('float32', 'cpu')})")
    print(f"  ours, learn_precision='bfloat16':                            {ours_bf16:7.3f} s  "
          f"({effective_precision('bfloat16', 'cpu')})")
    print(f"  ours, default with the fp32 GEMM of {other} instead of {fp32_gemm()}: {ours_other:7.3f} s")
    print(f"  faiss.Kmeans spherical, niter=1 train:  {faiss_1:7.3f} s;  niter=3: {faiss_3:7.3f} s;  per iteration {faiss_iter:7.3f} s")
    print(f"  sklearn MiniBatchKMeans partial_fit per chunk, in-memory fp32: {sk:7.3f} s")
    print(f"  speed-up default vs faiss iteration = {faiss_iter / ours:.2f}x,  vs MiniBatchKMeans = {sk / ours:.2f}x  (target > 1 for both)")
    print(f"  speed-up default with {other}'s GEMM vs faiss iteration = {faiss_iter / ours_other:.2f}x")
    print(f"  speed-up float32 vs faiss iteration = {faiss_iter / ours_fp32:.2f}x,  vs MiniBatchKMeans = {sk / ours_fp32:.2f}x")
    print(f"  speed-up bfloat16 vs faiss iteration = {faiss_iter / ours_bf16:.2f}x,  vs MiniBatchKMeans = {sk / ours_bf16:.2f}x")


def rss_child(paths) -> None:
    """Run in a child: learn + transform every chunk, print peak RSS in MB."""
    model = SequentialSoftClustering(**PARAMS).fit_chunks(paths)
    for path in paths:
        model.transform(path)
    # VmHWM belongs to this process image; ru_maxrss would carry the parent's peak across fork+exec.
    hwm_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    print(json.dumps({"peak_rss_mb": hwm_kb / 1024}))


def peak_rss(paths) -> None:
    def child(chunk_paths):
        out = subprocess.run([sys.executable, __file__, "--rss-child", *map(str, chunk_paths)],
                             check=True, capture_output=True, text=True)
        return json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_mb"]

    one, four = child(paths[:1]), child(paths[:4])
    print("\n[peak RSS] fit_chunks + transform of every chunk, fresh child processes (VmHWM)")
    print(f"  1 chunk: {one:8.0f} MB;  4 chunks: {four:8.0f} MB;  ratio 4x/1x = {four / one:.3f}  (target <= 1.10)")


def resume_child(paths, checkpoint_dir, out) -> None:
    ckpt = None if checkpoint_dir == "-" else checkpoint_dir
    model = SequentialSoftClustering(**{**PARAMS, "n_epochs": 2}, checkpoint_dir=ckpt).fit_chunks(paths)
    np.save(out, model.cluster_centers_)


def kill_and_resume(paths, tmp: Path) -> None:
    def start(checkpoint_dir, out):
        return subprocess.Popen([sys.executable, __file__, "--resume-child", str(checkpoint_dir), str(out), *map(str, paths)])

    ckpt = tmp / "checkpoints"
    run = start(ckpt, tmp / "resumed.npy")
    while not list(ckpt.glob("checkpoint-0000003.npz")) and run.poll() is None:
        time.sleep(0.01)
    run.send_signal(signal.SIGKILL)
    killed = run.wait() == -signal.SIGKILL
    reached = max((int(p.stem.split("-")[1]) for p in ckpt.glob("checkpoint-*.npz")), default=0)
    assert start(ckpt, tmp / "resumed.npy").wait() == 0
    assert start("-", tmp / "straight.npy").wait() == 0
    a, b = np.load(tmp / "resumed.npy"), np.load(tmp / "straight.npy")
    print(f"\n[kill -9 and resume] 2 epochs x {len(paths)} chunks; killed={killed} after step {reached} of {2 * len(paths)}")
    print(f"  identical centroids: {np.array_equal(a, b)};  max abs diff = {np.abs(a - b).max():.3g}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--chunks", type=int, default=4)
    parser.add_argument("--sequences", type=int, default=512, help="sequences of 128 tokens per chunk")
    parser.add_argument("--only", choices=("gemm", "memberships", "centroids", "rss", "resume"), help="run one section")
    parser.add_argument("--rss-child", nargs="+")
    parser.add_argument("--resume-child", nargs="+")
    args = parser.parse_args()
    if args.rss_child:
        return rss_child(args.rss_child)
    if args.resume_child:
        return resume_child(args.resume_child[2:], *args.resume_child[:2])

    print(f"[machine] {describe()}")  # the CPU and kernels every figure below was measured with
    with tempfile.TemporaryDirectory(prefix="bench-clustering-") as tmp:
        start = time.perf_counter()
        paths = write_synthetic_chunks(Path(tmp) / "data", n_chunks=args.chunks, n_sequences=args.sequences,
                                       seq_len=128, dim=DIM, n_clusters=K, seed=0, format="dir")
        n = sum(read_chunk(p).n_tokens for p in paths)
        print(f"data: {len(paths)} chunk dirs, {n:,} attended vectors, d={DIM}, fp16 "
              f"(written in {time.perf_counter() - start:.0f} s); torch threads={torch.get_num_threads()}")
        sections = {"gemm": lambda: gemm_libraries(args), "memberships": lambda: membership_pass(paths, args), "centroids": lambda: centroid_pass(paths, args),
                    "rss": lambda: peak_rss(paths), "resume": lambda: kill_and_resume(paths, Path(tmp))}
        for name, run in sections.items():
            if args.only in (None, name):
                run()


if __name__ == "__main__":
    main()
