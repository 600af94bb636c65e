"""End to end: chunk files -> per-chunk statistics -> merged results -> ClusterAnalyzer."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from latent_atlas.analysis.exemplars import ExemplarConfig, check_exemplars
from latent_atlas.analysis.statistics import ChunkStatistics, StatisticsConfig, merge_statistics
from latent_atlas.clustering.memberships import SparseMemberships
from latent_atlas.data.chunks import read_chunk, write_chunk
from latent_atlas.reading.clusters import ClusterAnalyzer, build_results

K, L, D = 4, 16, 12
WORDS = [f" w{i}" for i in range(60)]


def decode(ids):
    return [WORDS[i] for i in ids]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("atlas")
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((K, D)).astype(np.float32)
    config = StatisticsConfig(exemplars=ExemplarConfig(top_k=5, random_k=4, per_band=2), heldout_fraction=0.25)
    stat_paths = []
    for name in ("chunk-000", "chunk-001"):
        x = rng.standard_normal((30, L, D)).astype(np.float16)
        logits = x.astype(np.float32) @ centers.T
        p = np.exp(logits - logits.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        tokens = (p.argmax(-1) * 15 + rng.integers(0, 15, (30, L))).astype(np.int32)  # cluster c -> words 15c..15c+14
        mask = np.ones((30, L), bool)
        write_chunk(root / name, x, mask, tokens, {"source": "test"})
        s, q, c = np.nonzero(p > 0.05)
        SparseMemberships(s.astype(np.int32), q.astype(np.int32), c.astype(np.int32), p[s, q, c].astype(np.float32),
                          tokens[s, q], 30, L).save(root / f"{name}.memberships.parquet")
        chunk = read_chunk(root / name)
        mem = SparseMemberships.load(root / f"{name}.memberships.parquet")
        stat_paths.append(ChunkStatistics.compute(name, mem, chunk, K, config).save(root / f"{name}.stats.npz"))
    merged = merge_statistics(stat_paths)

    def open_chunk(chunk_id):
        return read_chunk(root / chunk_id).token_ids, SparseMemberships.load(root / f"{chunk_id}.memberships.parquet")

    path = build_results(root / "results", merged, open_chunk, lambda chunk_id: read_chunk(root / chunk_id), decode,
                         centers, window=3)
    return path, centers


def test_layout_and_checks(results):
    path, _ = results
    assert sorted(p.name for p in path.iterdir()) == [
        "cluster_stats.parquet", "exemplars.parquet", "intervention_vectors.npz",
        "intervention_vectors.parquet", "summary.json"]
    assert not list(path.parent.glob(".results.tmp-*"))
    summary = json.loads((path / "summary.json").read_text())
    assert summary["chunk_ids"] == ["chunk-000", "chunk-001"] and summary["n_clusters"] == K
    assert check_exemplars(pq.read_table(path / "exemplars.parquet"))[0]
    with np.load(path / "intervention_vectors.npz", allow_pickle=False) as npz:
        np.testing.assert_allclose(np.linalg.norm(npz["vectors"], axis=1), 1.0, atol=1e-4)
        assert (np.sum(npz["vectors"] * npz["centers"], axis=1) > 0).all()


def test_cluster_summary_is_json_and_links_to_chunks(results):
    analyzer = ClusterAnalyzer(results[0])
    for c in range(K):
        summary = analyzer.get_cluster_summary(c)
        json.dumps(summary)
        assert set(summary["chunk_ids"]) <= {"chunk-000", "chunk-001"}
        top = summary["exemplars"]["top_k"]
        assert [e["membership"] for e in top] == sorted((e["membership"] for e in top), reverse=True)
        assert summary["statistics"]["top_token_ids"][0] // 15 == c  # the planted vocabulary
        scores = summary["intervention_stats"]
        assert 0.5 < scores["separation_strength"] <= 1.0
        assert str(c) not in scores["cross_cluster_correlation"]
        for name in ("auroc", "auroc_hard", "diff_means_auroc", "diff_means_auroc_hard"):
            assert scores[name]["low"] <= scores[name]["value"] <= scores[name]["high"], name
        assert scores["auroc"]["value"] == scores["separation_strength"]
        assert scores["rests_on"]["positive_tokens"] > 0 and scores["rests_on"]["hard_negative_weight"] > 0
        assert c not in scores["hard_negative_clusters"] and len(scores["hard_negative_clusters"]) == K - 1
        assert summary["flags"] == []  # random vectors: no window-start cluster, no near-duplicates
        assert 0 < summary["measures"]["token_entropy"] <= 1 and summary["measures"]["near_duplicate_partners"] == []


def test_visualize_context_plain_and_colour(results):
    analyzer = ClusterAnalyzer(results[0])
    example = analyzer.exemplars(1, "top_k")[0]
    plain = analyzer.visualize_cluster_context(1, 0, color=False)
    assert f"[[{example['token']}]]" in plain and "\x1b[" not in plain
    assert f"chunk {example['chunk_id']} seq {example['sequence']} pos {example['position']}" in plain
    coloured = analyzer.visualize_cluster_context(1, 0, color=True)
    assert "\x1b[1;4;48;5;" in coloured and example["token"] in coloured
    bands = [e["band"] for e in analyzer.exemplars(1, "quantile")]
    assert bands == sorted(bands) and len(analyzer.exemplars(1, "random_k")) == 4
    with pytest.raises(IndexError, match="example_idx 99"):
        analyzer.visualize_cluster_context(1, 99)
    with pytest.raises(IndexError, match="cluster_id 7"):
        analyzer.get_cluster_summary(7)


def test_printed_summary(results):
    text = str(ClusterAnalyzer(results[0]))
    assert f"{K} clusters" in text and "chunks" in text and "AUROC" in text
    assert "against hard negatives" in text and "0 position artifacts" in text and "0 near-duplicates" in text
    assert text.count("\n") >= K + 3


def test_missing_directory_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a results directory"):
        ClusterAnalyzer(tmp_path)
