"""cluster_labels materialized in process on a tiny real corpus (MiniLM on BBC News), keyword labeler."""

import numpy as np
import pyarrow.parquet as pq

import dagster as dg
from latent_atlas.analysis.intervention import InterventionVectors
from latent_atlas.analysis.statistics import ChunkStatistics
from latent_atlas.clustering.memberships import SparseMemberships
from latent_atlas.data.chunks import read_chunk
from latent_atlas.labels.cache import LabelCache
from latent_atlas.labels.examples import HeldoutConfig, heldout_examples, shown_examples
from latent_atlas.labels.keywords import KeywordLabeler, term_of
from latent_atlas.reading.clusters import ClusterAnalyzer
from resources import CorpusResource, LabelerResource, ModelResource
from tests.conftest import check_results, materialized
from tests.test_asset_metadata import assert_readable_pages

CONFIG = {"ops": {"cluster_labels": {"config": {"max_positives": 16, "max_negatives": 16, "n_bootstrap": 100}}}}


def _labels_run(defs, instance, labeler: LabelerResource | None = None, **config):
    resources = dict(defs.resources)
    if labeler is not None:
        resources["labeler"] = labeler
    run_config = {"ops": {"cluster_labels": {"config": {**CONFIG["ops"]["cluster_labels"]["config"], **config}}}}
    result = dg.materialize(list(defs.assets), instance=instance, resources=resources, run_config=run_config,
                            selection=dg.AssetSelection.assets("cluster_labels"))
    assert result.success
    return result.asset_materializations_for_node("cluster_labels")[0].metadata


def test_cluster_labels_end_to_end_with_keywords(atlas_home):
    corpus = CorpusResource(documents_per_category=2, sequences_per_chunk=12)
    with materialized(atlas_home, corpus, ["cluster_summaries"]) as (defs, instance, keys, report):
        assert report.failed == {}
        first = _labels_run(defs, instance)
        second = _labels_run(defs, instance)
        forced = _labels_run(defs, instance, LabelerResource(force_regenerate=True))
        checks = check_results(instance)
        top = _labels_run(defs, instance, max_clusters=3, label_dir=str(atlas_home / "labels" / "top3"))
        top_ids = pq.read_table(atlas_home / "tables" / "cluster_labels.parquet").column("centroid_id").to_pylist()
        _labels_run(defs, instance)  # the full table again, for the checks below
        # every asset materialized here shows a table or plot on its Dagster UI page
        covered = assert_readable_pages(defs, instance)
        assert {"token_chunks", "whitening", "memberships", "chunk_stats", "merged_statistics", "cluster_stats",
                "exemplars", "intervention_vectors", "cluster_summaries", "cluster_labels"} <= set(covered)

    tables, tensors = atlas_home / "tables", atlas_home / "tensors"
    table = pq.read_table(tables / "cluster_labels.parquet")
    k = InterventionVectors.load(tensors / "intervention_vectors.npz").vectors.shape[0]
    assert table.num_rows == k and table.column("centroid_id").to_pylist() == list(range(k))
    records = LabelCache(atlas_home / "labels" / "clusters").all()
    assert sorted(records) == list(range(k))
    conf = table.column("confidence").to_numpy()
    low, high = table.column("confidence_low").to_numpy(), table.column("confidence_high").to_numpy()
    finite = np.isfinite(conf)
    assert finite.sum() >= k // 2  # clusters without held-out members cannot be scored
    assert np.all((low[finite] <= conf[finite] + 1e-9) & (conf[finite] <= high[finite] + 1e-9))
    assert np.all((conf[finite] >= 0) & (conf[finite] <= 1))
    assert set(table.column("labeler").to_pylist()) == {"keywords"}
    for c, record in records.items():
        assert record.label and record.explanation and record.metadata["labeler"] == "keywords"
        assert record.metadata["prompt_version"] == KeywordLabeler.prompt_version and record.metadata["cache_key"]
        assert len(record.top_k_examples) == record.scores["n_shown"] <= 10
    # the first materialization labeled everything, the second came from the cache, force redid it
    meta = lambda m, name: m[name].value  # noqa: E731
    assert meta(first, "new_labels") == k and meta(first, "cache_hits") == 0
    assert meta(second, "new_labels") == 0 and meta(second, "cache_hits") == k
    assert meta(forced, "new_labels") == k
    # max_clusters: only the most used clusters, in id order
    usage = ChunkStatistics.load(tensors / "merged_statistics.npz").usage
    assert meta(top, "labeled_clusters") == 3 and top_ids == sorted(np.argsort(-usage, kind="stable")[:3].tolist())
    assert meta(first, "labeler") == "keywords" and meta(first, "prompt_tokens") == 0
    assert "| cluster | label |" in meta(first, "first_labels")
    # the check reports what the table holds: labels whose own score clears their permutation null
    above_null = int(np.sum(~np.array(table.column("indistinguishable_from_null").to_pylist())))
    assert meta(first, "labels_above_null") == above_null and "labels_beat_chance" in checks

    # shown (fitted documents) and held-out (held-out documents) examples never share a token
    stats = ChunkStatistics.load(tensors / "merged_statistics.npz")
    vectors = InterventionVectors.load(tensors / "intervention_vectors.npz")
    tokenizer = ModelResource(name="minilm-l6").tokenizer()

    def open_chunk(chunk_id):
        chunk = read_chunk(tensors / "whitened_activations" / chunk_id)
        return (np.where(chunk.attention_mask, chunk.token_ids, -1),
                SparseMemberships.load(tables / "memberships" / f"{chunk_id}.parquet"))

    decode = lambda ids: [tokenizer.decode([int(i)]) for i in ids]  # noqa: E731
    held = heldout_examples(stats.heldout, vectors.hard_negatives, open_chunk, decode, HeldoutConfig(16, 16))
    shown = shown_examples(pq.read_table(tables / "exemplars.parquet"))
    held_keys = {e.key() for h in held.values() for e in h.all()}
    assert held_keys and not held_keys & {e.key() for v in shown.values() for e in v}
    # every positive is a held-out member of its cluster, every hard negative a member of a similar one
    for c, h in held.items():
        assert all(e.cluster == c for e in h.positives)
        assert all(e.cluster in set(vectors.hard_negatives[c]) for e in h.hard_negatives)
        assert all(e.cluster != c for e in h.random_negatives)

    # a keyword label's confidence is its claim checked on the held-out tokens, recomputed here from
    # the held-out examples drawn as the asset drew them (CONFIG: 16 of each): members naming a
    # claimed token, minus random negatives naming one
    claimed = [r for r in records.values() if r.scorer == "token_claim"]
    assert len(claimed) >= k // 2, [r.label for r in records.values()]  # keyword labels quote their tokens
    for record in claimed:
        claims = set(record.scores["token_claim"]["claims"])
        rate = lambda examples: np.mean([term_of(e.tokens[e.position]) in claims for e in examples])  # noqa: E731
        h = held[record.centroid_id]
        expected = rate(h.positives) - rate(h.random_negatives)
        assert abs(record.scores["token_claim"]["confidence"]["value"] - expected) < 1e-9, record.label
        assert record.confidence == max(0.0, expected) and record.scores["token_claim"]["confidence"]["n_pos"] == len(h.positives)

    analyzer = ClusterAnalyzer(atlas_home / "results")
    summary = analyzer.get_cluster_summary(0)
    assert summary["label"]["label"] == records[0].label
    assert summary["label"]["confidence_interval"] == list(records[0].confidence_interval)
    assert "label (scorer: confidence, specificity)" in str(analyzer)
    assert summary["label"]["scorer"] == records[0].scorer and "specificity" in summary["label"]


def test_labeler_resource_builds_each_kind_and_keeps_the_key_out_of_metadata():
    import json

    import pytest

    assert LabelerResource().labeler().name == "keywords" and LabelerResource().chat_client() is None
    with pytest.raises(ValueError, match="kind"):
        LabelerResource(kind="gpt").labeler()
    pytest.importorskip("latent_atlas.labels.llm")
    secret = "sk-test-not-a-real-key-4711"
    resource = LabelerResource(kind="openai", base_url="http://127.0.0.1:9/v1", model="tiny", api_key=secret,
                               fallback_to_keywords=True)
    labeler = resource.labeler()
    assert labeler.name == "openai" and labeler.model == "tiny" and labeler.fallback.name == "keywords"
    assert secret not in json.dumps(resource.public_config()) and secret not in repr(labeler)
    local = LabelerResource(kind="local").labeler()
    assert local.name == "local-llm" and local.model
