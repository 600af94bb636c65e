"""A small finished ATLAS_HOME for the atlas viewer's tests: MiniLM on 15 BBC articles, k=16,
every asset up to `atlas_report` materialized in process on a persistent instance in the home, and
one corpus token rewritten to a script tag everywhere it is stored (a vocabulary entry an attacker
controls), so every page that shows it has to escape it."""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

SCRIPT = "<script>alert(1)</script>"
SMALL_TREE = {"max_depth": 2, "min_split_size": 40, "min_cluster_size_floor": 8, "hdbscan_min_samples": 5,
              "umap_n_components": 5, "umap_n_neighbors": 10, "umap_n_epochs": 50, "silhouette_threshold": 1.0}
RUN_CONFIG = {"ops": {
    "centroids": {"config": {"n_clusters": 16, "n_epochs": 2}},
    "hierarchy_sample": {"config": {"sample_size": 400}},
    "cluster_tree": {"config": SMALL_TREE},
    "document_tree": {"config": SMALL_TREE},
    "ensemble": {"config": {"seeds": [0, 1], "n_epochs": 3}},
    "cluster_labels": {"config": {"n_bootstrap": 20, "max_positives": 16, "max_negatives": 16}},
    "atlas_report": {"config": {"map_method": "pca"}},
}}


@contextmanager
def environment(**values: str):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def materialize_home(home: Path, through: str = "atlas_report") -> Path:
    """Materialize every asset up to `through` in `home` (instance in home/dagster, persistent, so
    a webserver pointed at it sees the runs)."""
    import dagster as dg

    from orchestration.definitions import build_definitions
    from orchestration.jobs import stages_of
    from orchestration.pipeline import register_partitions
    from resources import CorpusResource, ModelResource

    (home / "dagster").mkdir(parents=True, exist_ok=True)
    (home / "dagster" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    with environment(ATLAS_HOME=str(home), DAGSTER_HOME=str(home / "dagster")):
        corpus, model = CorpusResource(documents_per_category=3, sequences_per_chunk=24), ModelResource(name="minilm-l6")
        defs = build_definitions(corpus=corpus, model=model)
        with dg.DagsterInstance.get() as instance:
            keys = corpus.register(model.tokenizer(), model.name)
            register_partitions(instance, keys)
            for names, per_chunk in stages_of(defs, [through]):  # the demo's stages, with a small run config
                config = {"ops": {n: c for n, c in RUN_CONFIG["ops"].items() if n in names}}
                for key in keys if per_chunk else [None]:
                    result = dg.materialize(list(defs.assets), instance=instance, resources=defs.resources,
                                            selection=dg.AssetSelection.assets(*names), partition_key=key,
                                            run_config=config)
                    assert result.success, names
    return home


def inject_script_token(home: Path) -> int:
    """Rewrite the top token of the most used cluster to SCRIPT in every stored place (its top
    tokens, every exemplar window holding it, its label); returns that cluster's id."""
    results = home / "results"
    stats = pq.read_table(results / "cluster_stats.parquet")
    rows = stats.to_pylist()
    cluster = max(rows, key=lambda r: r["total_usage"])["cluster"]
    victim = rows[cluster]["top_tokens"][0]
    swap = lambda tokens: [SCRIPT if t == victim else t for t in tokens]  # noqa: E731
    for r in rows:
        r["top_tokens"] = swap(r["top_tokens"])
    pq.write_table(pa.Table.from_pylist(rows, stats.schema), results / "cluster_stats.parquet")
    exemplars = pq.read_table(results / "exemplars.parquet")
    rows = exemplars.to_pylist()
    for r in rows:
        r["context_tokens"] = swap(r["context_tokens"])
        r["token"] = SCRIPT if r["token"] == victim else r["token"]
    pq.write_table(pa.Table.from_pylist(rows, exemplars.schema), results / "exemplars.parquet")
    label = home / "labels" / "clusters" / f"centroid_{cluster}.json"
    if label.exists():
        record = json.loads(label.read_text())
        record.update(label=f"{SCRIPT} label", explanation=f"Fires on {SCRIPT} & friends")
        label.write_text(json.dumps(record))
    return int(cluster)
