"""A 1/10-scale run: >= 16 GB of fp16 seed-format NPZ at d=2304 through `intervention_vectors` and
the trees, on a persistent Dagster instance, stage by stage.

    python benchmarks/scale.py [--chunks 27] [--sequences 1024] [--data DIR] [--home DIR] [--clusters 512]

Writes DIR/chunk_*.npz once (27 x 1024 sequences x 128 positions x 2304 dims fp16 = 16.3 GB, a
planted mixture of 512 directions; reused when present), then materializes the graph with the same
run_stages the CLI uses, one stage at a time (global stages one asset at a time), and prints per stage:
wall time, attended vectors per second, the process's peak RSS during the stage (VmHWM, reset before
each stage through /proc/self/clear_refs), and bytes the home grew by; for every stage that reads all
vectors, its GEMM bound (its minimal GEMM work, `stage_gemms`, at the bare fp32 GEMM rate of numpy and
of torch measured first in this process) and the share of the faster bound reached, measured and at the user's
scale (the projected time: a stage's fixed part amortized); then the bytes stored per
asset, and a projection of every stage to the user's corpus (38.4M vectors, 177 GB): stages that read
every vector scale linearly (whitening: its moments; its fit is fixed), the sample-bound ones (hierarchy
sample, trees, intervention vectors) do not.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

USER_VECTORS = 300_000 * 128  # the user's corpus: 300k sequences x 128 tokens
TARGETS = ["intervention_vectors", "cluster_tree", "document_tree"]
# Read a fixed-size sample (intervention_vectors: the merged moments, fixed held-out samples and a null of
# fixed size), so their time does not grow with the corpus
SAMPLE_BOUND = {"hierarchy_sample", "cluster_tree", "document_tree", "intervention_vectors"}
GEMM_ROWS, GEMM_ROUNDS = 4096, 7  # best of 7: 3 measured bounds ~35% low at times (shares above 1)


def stage_gemms(dim: int, clusters: int) -> dict[str, list[tuple[str, int, int]]]:
    """The minimal GEMM work per vector of each stage that reads every vector, as (kind, d, columns)
    products of one row: whitening one symmetric X.T@X, whitened_activations one X @ W [d, d],
    memberships one E-step X @ Cᵀ [d, k], chunk_stats the LDA second moment (one symmetric X.T@X of
    rows scaled by the root of their membership sum), centroids one E-step per epoch (every vector sampled)."""
    from latent_atlas.clustering.config import ClusteringConfig

    return {"whitening": [("X.T@X", dim, dim)], "whitened_activations": [("X@W", dim, dim)],
            "memberships": [("X@W", dim, clusters)], "chunk_stats": [("X.T@X", dim, dim)],
            "centroids": [("X@W", dim, clusters)] * ClusteringConfig().n_epochs}


def gemm_rates(shapes: set[tuple[str, int, int]]) -> dict[str, dict[tuple, float]]:
    """{library: {shape: vectors/s}} of the bare fp32 GEMM of GEMM_ROWS rows, best of GEMM_ROUNDS."""
    import numpy as np
    import torch

    rng = np.random.default_rng(0)
    rates = {"numpy": {}, "torch": {}}
    for kind, d, k in sorted(shapes):
        x, w = rng.standard_normal((GEMM_ROWS, d), dtype=np.float32), rng.standard_normal((d, k), dtype=np.float32)
        xt, wt = torch.from_numpy(x), torch.from_numpy(w)
        runs = {"numpy": (lambda: x.T @ x) if kind == "X.T@X" else (lambda: x @ w),
                "torch": (lambda: xt.T @ xt) if kind == "X.T@X" else (lambda: xt @ wt)}
        for library, run in runs.items():
            run()
            best = float("inf")
            for _ in range(GEMM_ROUNDS):
                start = time.perf_counter()
                run()
                best = min(best, time.perf_counter() - start)
            rates[library][(kind, d, k)] = GEMM_ROWS / best
    return rates


def stage_bounds(stage: str, gemms: dict, rates: dict) -> dict[str, float]:
    """{library: vectors/s} the stage's minimal GEMM work allows at that library's bare rates."""
    work = [shape for name in stage.split("+") for shape in gemms.get(name, [])]
    return {library: 1 / sum(1 / by_shape[shape] for shape in work) for library, by_shape in rates.items()} if work else {}


def write_data(folder: Path, chunks: int, sequences: int, clusters: int) -> list[Path]:
    from latent_atlas.data.synthetic import write_synthetic_chunks

    done = folder / "done"
    if done.exists() and done.read_text() == f"{chunks} {sequences} {clusters}":
        return sorted(folder.glob("chunk_*.npz"))
    start = time.perf_counter()
    paths = write_synthetic_chunks(folder, n_chunks=chunks, n_sequences=sequences, seq_len=128, dim=2304,
                                   n_clusters=clusters, separation=0.3, seed=0, format="npz")
    (folder / "directions.npy").unlink(missing_ok=True)  # not a chunk: the corpus folder holds only .npz
    done.write_text(f"{chunks} {sequences} {clusters}")
    print(f"wrote {len(paths)} NPZ chunks, {tree_bytes(folder) / 1e9:.1f} GB, in {time.perf_counter() - start:.0f} s")
    return paths


def tree_bytes(path: Path) -> int:
    """Bytes allocated on disk under path (st_blocks: a sparse or referenced file counts what it holds)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except FileNotFoundError:
                pass
    return total


def reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)


def peak_rss_gb() -> float:
    kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    return kb / 1024**2


def linear_seconds(instance, names: tuple[str, ...], seconds: float) -> float:
    """The part of a stage's time that grows with the corpus: whitening's moments (its metadata
    `moments_seconds`; the eigendecompositions and the held-out check do not grow), else all of it."""
    if names != ("whitening",):
        return seconds
    import dagster as dg

    event = instance.get_latest_materialization_event(dg.AssetKey("whitening"))
    moments = event.asset_materialization.metadata.get("moments_seconds") if event else None
    return float(moments.value) if moments is not None else seconds


def split_global(stages):
    """Global stages one asset at a time (in the order they depend on each other), per-chunk ones as they are."""
    out = []
    for names, per_chunk in stages:
        if per_chunk or len(names) == 1:
            out.append((names, per_chunk))
        else:
            order = ["centroids", "hierarchy_sample", "cluster_tree", "document_tree", "merged_statistics",
                     "intervention_vectors"]
            out += [((name,), False) for name in sorted(names, key=lambda n: order.index(n) if n in order else 99)]
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default="/tmp/latent-atlas-scale/npz")
    parser.add_argument("--home", default="/tmp/latent-atlas-scale/home")
    parser.add_argument("--chunks", type=int, default=27)
    parser.add_argument("--sequences", type=int, default=1024)
    parser.add_argument("--clusters", type=int, default=512)
    args = parser.parse_args()

    from orchestration.instance import use_atlas_home

    home = use_atlas_home(args.home)
    import dagster as dg
    import numpy as np

    from latent_atlas.compute.cpu import describe
    from orchestration.definitions import build_definitions
    from orchestration.jobs import stages_of
    from orchestration.pipeline import register_partitions, run_stages
    from resources import CorpusResource

    print(describe())
    gemms = stage_gemms(2304, args.clusters)
    rates = gemm_rates({shape for work in gemms.values() for shape in work})
    for library, by_shape in rates.items():
        print(f"bare fp32 GEMM, {library}: " + ", ".join(f"{kind} d={d} k={k} {rate:,.0f} vectors/s"
                                                        for (kind, d, k), rate in by_shape.items()))
    paths = write_data(Path(args.data), args.chunks, args.sequences, args.clusters)
    input_bytes = sum(p.stat().st_size for p in paths)
    n_vectors = 0
    for p in paths:
        with np.load(p) as npz:
            n_vectors += int(npz["attention_mask"].sum())
    print(f"input: {len(paths)} NPZ files, {input_bytes / 1e9:.2f} GB, {n_vectors:,} attended vectors; home {home}")

    corpus = CorpusResource(source="npz", path=str(Path(args.data)))
    defs = build_definitions(corpus=corpus)
    instance = dg.DagsterInstance.get()
    registration = corpus.registration(None, "")
    register_partitions(instance, registration.keys)
    stages = split_global(stages_of(defs, TARGETS))
    rows = []
    for names, per_chunk in stages:
        before = tree_bytes(home)
        reset_peak_rss()
        report = run_stages(defs, instance, registration.keys, [(names, per_chunk)],
                            asset_config={"centroids": {"n_clusters": args.clusters}}, skip_up_to_date=True)
        if report.failed:
            raise SystemExit(f"stage {names} failed: {report.failed}")
        seconds = sum(report.seconds.values())
        rows.append(("+".join(names), per_chunk, seconds, peak_rss_gb(), tree_bytes(home) - before,
                     bool(report.skipped), linear_seconds(instance, names, seconds)))

    print(f"\n| stage | kind | wall s | vectors/s | GEMM bound vectors/s (numpy / torch) | share of the faster "
          f"| share at {USER_VECTORS / 1e6:.1f}M | peak RSS GB | home grew GB | projected to {USER_VECTORS / 1e6:.1f}M vectors |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    scale = USER_VECTORS / n_vectors
    total, projected = 0.0, 0.0
    for stage, per_chunk, seconds, rss, grew, skipped, linear in rows:
        bound = stage in SAMPLE_BOUND
        proj = seconds if bound else seconds - linear + linear * scale
        total, projected = total + seconds, projected + proj
        kind = ("per chunk" if per_chunk else "global") + (", fixed sample" if bound else "")
        note = " (up to date: skipped)" if skipped else ""
        bounds = stage_bounds(stage, gemms, rates)
        bound = " / ".join(f"{rate:,.0f}" for rate in bounds.values()) if bounds else "-"
        share = f"{n_vectors / seconds / max(bounds.values()):.2f}" if bounds and seconds and not skipped else "-"
        # at the user's scale a stage's fixed part (whitening's fits and checks) is amortized: its share there
        # is that of the projected time
        at_scale = f"{USER_VECTORS / proj / max(bounds.values()):.2f}" if bounds and seconds and not skipped else "-"
        print(f"| {stage}{note} | {kind} | {seconds:.1f} | {n_vectors / seconds:,.0f} | {bound} | {share} | {at_scale} | {rss:.2f} | "
              f"{grew / 1e9:.2f} | {proj / 3600:.2f} h |")
    print(f"| total | | {total:.0f} | {n_vectors / total:,.0f} | | | | | {tree_bytes(home) / 1e9:.2f} | {projected / 3600:.1f} h |")

    print(f"\nstored per asset under {home / 'tensors'} and {home / 'tables'} (GB on disk; input {input_bytes / 1e9:.2f} GB):")
    for folder in sorted(p for base in ("tensors", "tables") if (home / base).exists() for p in (home / base).iterdir()):
        print(f"  {folder.relative_to(home)}: {tree_bytes(folder) / 1e9:.3f}")


if __name__ == "__main__":
    main()
