"""A 1/10-scale run: >= 16 GB of fp16 seed-format NPZ at d=2304 through `intervention_vectors` and
the trees, on a persistent Dagster instance, stage by stage.

    python benchmarks/scale.py [--chunks 27] [--sequences 1024] [--data DIR] [--home DIR] [--clusters 512]

Writes DIR/chunk_*.npz once (27 x 1024 sequences x 128 positions x 2304 dims fp16 = 16.3 GB, a
planted mixture of 512 directions; reused when present), then materializes the graph with the same
run_stages the CLI uses, one stage at a time (global stages one asset at a time), and prints per stage:
wall time, attended vectors per second, the process's peak RSS during the stage (VmHWM, reset before
each stage through /proc/self/clear_refs), and bytes the home grew by; then the bytes stored per
asset, and a projection of every stage to the user's corpus (38.4M vectors, 177 GB): stages that read
every vector scale linearly, the sample-bound ones (hierarchy sample, trees) do not.
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
SAMPLE_BOUND = {"hierarchy_sample", "cluster_tree", "document_tree"}  # read a fixed-size sample


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
                     bool(report.skipped)))

    print(f"\n| stage | kind | wall s | vectors/s | peak RSS GB | home grew GB | projected to {USER_VECTORS / 1e6:.1f}M vectors |")
    print("|---|---|---|---|---|---|---|")
    scale = USER_VECTORS / n_vectors
    total, projected = 0.0, 0.0
    for stage, per_chunk, seconds, rss, grew, skipped in rows:
        bound = stage in SAMPLE_BOUND
        proj = seconds if bound else seconds * scale
        total, projected = total + seconds, projected + proj
        kind = ("per chunk" if per_chunk else "global") + (", fixed sample" if bound else "")
        note = " (up to date: skipped)" if skipped else ""
        print(f"| {stage}{note} | {kind} | {seconds:.1f} | {n_vectors / seconds:,.0f} | {rss:.2f} | {grew / 1e9:.2f} | "
              f"{proj / 3600:.2f} h |")
    print(f"| total | | {total:.0f} | {n_vectors / total:,.0f} | | {tree_bytes(home) / 1e9:.2f} | {projected / 3600:.1f} h |")

    print(f"\nstored per asset under {home / 'tensors'} and {home / 'tables'} (GB on disk; input {input_bytes / 1e9:.2f} GB):")
    for folder in sorted(p for base in ("tensors", "tables") if (home / base).exists() for p in (home / base).iterdir()):
        print(f"  {folder.relative_to(home)}: {tree_bytes(folder) / 1e9:.3f}")


if __name__ == "__main__":
    main()
