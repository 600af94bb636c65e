"""Labels per labeler on a finished atlas: what they say, how far to trust them, what they cost.

    python benchmarks/labels.py HOME [--clusters 10] [--labelers keywords,local,openai]

HOME is a finished demo home (`latent-atlas demo --home HOME`); it is copied to a temporary
directory first and never written. For each labeler, `cluster_labels` and `node_labels` are
materialized there through Dagster, each into its own label directory and with
force_regenerate (so the time is that of new labels): the keyword labeler names every cluster and
both trees' nodes; the LLM labelers, which take seconds per label on CPU, name the `--clusters`
most used clusters and the document tree's nodes, with the keyword labeler as fallback for an
answer that is no label (counted and printed). 'openai' is the official SDK against an
OpenAI-compatible server on 127.0.0.1 serving SmolLM2-135M-Instruct (benchmarks/local_openai_server.py).

Prints per labeler: median confidence and specificity per scorer; the permutation null's summary;
the single-token detectors (top token share >= 0.75) and the most used clusters with label,
scorer, confidence and specificity with their 95% intervals (resampling held-out documents) and the
members and documents behind them; the document tree's labels against the BBC categories and the
category accuracy; seconds per label.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def materialize(home: Path, labeler, name: str, clusters: int, trees: list[str]) -> dict:
    import dagster as dg
    import pyarrow.parquet as pq

    from orchestration.definitions import build_definitions

    defs = build_definitions(labeler=labeler)
    label_root = home / "labels" / f"bench-{name}"
    configs = {"cluster_labels": {"label_dir": str(label_root / "clusters"), "max_clusters": clusters},
               "node_labels": {"label_dir": str(label_root / "nodes"), "trees": trees}}
    out = {}
    for asset, config in configs.items():
        started = time.perf_counter()
        result = dg.materialize(list(defs.assets), instance=dg.DagsterInstance.get(), resources=defs.resources,
                                selection=dg.AssetSelection.assets(asset), run_config={"ops": {asset: {"config": config}}})
        out[f"{asset}_seconds"] = time.perf_counter() - started
        out[asset] = {k: getattr(v, "value", v) for k, v in result.asset_materializations_for_node(asset)[0].metadata.items()}
        out[f"{asset}_rows"] = pq.read_table(home / "tables" / f"{asset}.parquet").to_pylist()
    return out


def report(name: str, run: dict, usage_order: list[int], shown: int, top_share: dict[int, float]) -> None:
    import numpy as np

    rows = {r["centroid_id"]: r for r in run["cluster_labels_rows"]}
    meta = run["cluster_labels"]
    print(f"\n=== labeler {name} (model {meta['model'] or '-'}) ===")
    print(f"clusters labeled: {meta['labeled_clusters']} of {meta['clusters']}; seconds per label "
          f"(labeling + scoring): {meta['seconds_per_cluster']:.2f}; prompt/completion tokens "
          f"{meta['prompt_tokens']}/{meta['completion_tokens']}, requests {meta['requests']}; "
          f"labels the keyword fallback made (unusable LLM answers): {meta['fallbacks']}")
    print(f"median confidence {meta['median_confidence']:.3f}, median specificity {meta['median_specificity']:.3f} "
          f"(median confidence lower bound {meta['median_confidence_low']:.3f}); scorers {meta['scorers']}")
    table = list(rows.values())
    for scorer in sorted({r["scorer"] for r in table}):
        mine = [r for r in table if r["scorer"] == scorer]
        median = lambda key: float(np.nanmedian([r[key] for r in mine])) if mine else float("nan")  # noqa: E731
        print(f"  scorer {scorer or 'none'}: {len(mine)} labels, median confidence {median('confidence'):.3f}, "
              f"median specificity {median('specificity'):.3f}")
    for scorer in ("embedding", "token_claim", "detection", "fuzzing"):  # every scorer that ran, headline or not
        key = f"{scorer}_confidence"
        if key in table[0]:
            values = np.array([r[key] for r in table], float)
            spec = np.array([r.get(f"{scorer}_specificity", np.nan) for r in table], float)
            print(f"  {scorer} on every label it could score ({int(np.isfinite(values).sum())}): median confidence "
                  f"{np.nanmedian(values):.3f}, median specificity {np.nanmedian(spec):.3f} (signed: below 0 is worse than chance)")
    p = np.array([r["null_p"] for r in table], float)
    flagged = sum(bool(r["indistinguishable_from_null"]) for r in table)
    print(f"permutation null: median p {np.nanmedian(p):.3f}; {flagged} of {len(table)} labels indistinguishable from "
          f"their null (own score not above the 95th percentile of their scores on the other clusters); check "
          f"labels_beat_chance: {meta['labels_above_null']} above null")
    print("cluster | top token share | label | scorer | confidence [95%] | specificity [95%] | null p | n members / docs")
    detectors = [c for c in usage_order if c in rows and top_share.get(c, 0) >= 0.75]
    print(f"single-token detectors (top token share >= 0.75): {len(detectors)}")
    for c in detectors + [c for c in usage_order if c in rows and c not in detectors][:shown]:
        r = rows[c]
        scorer = r["scorer"]
        print(f"{c:4d} | {top_share.get(c, float('nan')):.2f} | {r['label']} | {scorer} | {r['confidence']:.2f} "
              f"[{r['confidence_low']:.2f}, {r['confidence_high']:.2f}] | {r['specificity']:.2f} "
              f"[{r['specificity_low']:.2f}, {r['specificity_high']:.2f}] | {r['null_p']:.3f} | "
              f"{r.get(f'{scorer}_confidence_n_pos', '-')} / {r.get(f'{scorer}_confidence_n_documents', '-')}")
    nodes = run["node_labels"]
    documents = [r for r in run["node_labels_rows"] if r["tree"] == "document_tree"]
    print(f"document tree: category accuracy {nodes.get('category_accuracy', float('nan')):.2f} over "
          f"{nodes.get('category_accuracy_nodes', 0)} nodes; seconds per node "
          f"{nodes.get('document_tree_seconds_per_node', float('nan')):.2f}; keyword fallbacks "
          f"{nodes.get('document_tree_fallbacks', 0)}")
    for r in documents:
        print(f"  node {r['node_id']} ({r['size']} docs, majority {r['majority_category']} "
              f"{r['majority_share']:.0%}) | {r['label']} | nearest category {r['nearest_category']} | "
              f"confidence {r['confidence']:.2f} [{r['confidence_low']:.2f}, {r['confidence_high']:.2f}]")
    tokens = [r for r in run["node_labels_rows"] if r["tree"] == "cluster_tree"]
    if tokens:
        values = np.array([r["confidence"] for r in tokens], float)
        print(f"token tree: {len(tokens)} nodes, median confidence {np.nanmedian(values):.3f}, seconds per node "
              f"{nodes.get('cluster_tree_seconds_per_node', float('nan')):.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("home", type=Path)
    parser.add_argument("--clusters", type=int, default=10, help="clusters the LLM labelers name (most used first)")
    parser.add_argument("--labelers", default="keywords,local,openai")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="labels-bench-"))
    home = work / "home"
    shutil.copytree(args.home, home, symlinks=True)
    os.environ.update(ATLAS_HOME=str(home), DAGSTER_HOME=str(home / "dagster"), HF_HUB_OFFLINE="1")

    import numpy as np
    import pyarrow.parquet as pq

    from latent_atlas.analysis.statistics import ChunkStatistics
    from resources import LabelerResource

    usage = ChunkStatistics.load(home / "tensors" / "merged_statistics.npz").usage
    usage_order = np.argsort(-usage, kind="stable").tolist()
    stats = pq.read_table(home / "results" / "cluster_stats.parquet", columns=["cluster", "top_token_share"]).to_pylist()
    top_share = {int(r["cluster"]): float(r["top_token_share"]) for r in stats}
    server = None
    try:
        for name in args.labelers.split(","):
            if name == "keywords":
                labeler, clusters, trees = LabelerResource(force_regenerate=True), 0, ["cluster_tree", "document_tree"]
            elif name == "local":
                labeler, clusters, trees = LabelerResource(kind="local", fallback_to_keywords=True,
                                                            force_regenerate=True), args.clusters, ["document_tree"]
            elif name == "openai":
                from local_openai_server import serve_in_background

                server, base_url = serve_in_background()
                labeler = LabelerResource(kind="openai", base_url=base_url, model="SmolLM2-135M-Instruct",
                                          api_key="local-server-needs-no-key", fallback_to_keywords=True,
                                          # one CPU generation at a time serves the queue: long timeouts
                                          concurrency=2, timeout=600.0,
                                          force_regenerate=True)
                clusters, trees = args.clusters, ["document_tree"]
            else:
                raise SystemExit(f"unknown labeler {name!r}")
            run = materialize(home, labeler, name, clusters, trees)
            report(name, run, usage_order, min(10, args.clusters) if clusters else 10, top_share)
            print(f"wall: cluster_labels {run['cluster_labels_seconds']:.1f} s, node_labels {run['node_labels_seconds']:.1f} s")
    finally:
        if server is not None:
            server.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
