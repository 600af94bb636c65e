"""Cluster analysis assets materialized in process on a tiny real corpus (MiniLM on BBC News)."""

import json

import numpy as np
import pyarrow.parquet as pq

from assets.analysis import heldout_sequences
from io_managers.tensors import load_artifact
from latent_atlas.analysis.intervention import InterventionVectors
from latent_atlas.analysis.null import with_separation_null
from latent_atlas.analysis.statistics import ChunkStatistics
from latent_atlas.clustering.memberships import SparseMemberships
from latent_atlas.data.chunks import read_chunk
from latent_atlas.hierarchy.ensemble import EnsembleResult
from latent_atlas.reading.clusters import ClusterAnalyzer
from resources import CorpusResource, ModelResource
from tests.conftest import check_metadata, check_results, materialized

ANALYSIS_CHECKS = {"usage_matches_memberships", "exemplars_match_chunks", "vectors_finite_and_unit_norm"}


def test_analysis_graph_end_to_end_with_minilm(atlas_home):
    corpus = CorpusResource(documents_per_category=2, sequences_per_chunk=12)
    with materialized(atlas_home, corpus, ["cluster_summaries"]) as (_, instance, keys, report):
        assert report.failed == {}
        checks = {(name, passed) for name, passed in check_results(instance).items()}
        [floor_check] = check_metadata(instance, "atlas_stability_floor")
    assert {(name, True) for name in ANALYSIS_CHECKS} <= checks
    # 20 documents do not make stable clusters: that check may fail, and must say what the table says
    assert not any(passed is False for name, passed in checks if name != "atlas_stability_floor"), checks

    tables, tensors = atlas_home / "tables", atlas_home / "tensors"
    # Usage merged from the per-chunk statistics equals the memberships summed directly.
    mems = [SparseMemberships.load(tables / "memberships" / f"{key}.parquet") for key in keys]
    merged = ChunkStatistics.load(tensors / "merged_statistics.npz")
    k = merged.n_clusters
    direct = sum(np.bincount(m.cluster, m.value.astype(np.float64), k) for m in mems)
    stats = pq.read_table(tables / "cluster_stats.parquet")
    np.testing.assert_allclose(stats.column("total_usage").to_numpy(), direct, rtol=1e-6)
    # every atlas cluster carries its stability across the ensemble's re-fits: a one-to-one match can do
    # no better than each run's nearest center, and the worst run no better than the median one
    stability = stats.column("stability").to_numpy()
    centers = load_artifact(tensors / "centroids.npz").cluster_centers_
    runs = EnsembleResult.load(tensors / "ensemble.npz").centers
    unit = lambda c: c / np.linalg.norm(c, axis=-1, keepdims=True)  # noqa: E731
    nearest = np.median(np.max(unit(centers) @ np.swapaxes(unit(runs), 1, 2), axis=2), axis=0)  # [k]
    assert np.all(stability <= nearest + 1e-5) and np.all(stats.column("stability_min").to_numpy() <= stability + 1e-6)
    # the check says what the table says (20 documents do not make stable clusters, so it may fail)
    assert floor_check["clusters_below_floor"] == int(np.sum(~(stability >= floor_check["floor"])))
    summary = ClusterAnalyzer(atlas_home / "results").get_cluster_summary(0)
    assert summary["stability"]["stability"] == stability[0]
    assert sorted(merged.chunk_ids) == keys
    assert merged.n_tokens == sum(int(np.load(tensors / "whitened_activations" / key / "attention_mask.npy").sum())
                                  for key in keys)

    vectors = InterventionVectors.load(tensors / "intervention_vectors.npz")
    # Statistics files keep the reservoirs' token identities, not their [tokens, d] vectors: the
    # asset read those back from the whitened chunks, exactly the rows the chunk files hold.
    d = vectors.vectors.shape[1]
    for path in [tensors / "merged_statistics.npz", *(tensors / "chunk_stats" / f"{key}.npz" for key in keys)]:
        with np.load(path, allow_pickle=False) as npz:
            shapes = {name: npz[name].shape for name in npz.files if name.startswith(("heldout.", "fit_sample."))}
        assert shapes and not [name for name, shape in shapes.items() if d in shape[1:]], (path, shapes)
    read_back = merged.read_vectors(lambda key: read_chunk(tensors / "whitened_activations" / key))
    held = read_back.heldout
    chunk = read_chunk(tensors / "whitened_activations" / held.chunk_id[0])
    np.testing.assert_array_equal(held.vectors[0], chunk.activations[held.sequence[0], held.position[0]])
    np.testing.assert_array_equal(read_back.fit_intervention_vectors(centers).auroc, vectors.auroc)
    # the null: the same steps on Gaussian data of the fitting moments, seeded, so a rerun draws it again
    clustering = load_artifact(tensors / "centroids.npz")
    assert vectors.auroc_hard_null.size >= k // 2 and np.all((vectors.auroc_hard_null > 0) & (vectors.auroc_hard_null <= 1))
    again = with_separation_null(vectors, merged.moments, clustering.config, merged.config)
    np.testing.assert_array_equal(again.auroc_hard_null, vectors.auroc_hard_null)

    results = atlas_home / "results"
    analyzer = ClusterAnalyzer(results)
    assert json.loads((results / "summary.json").read_text())["chunk_ids"] == keys
    busiest = int(np.argmax(direct))
    summary = analyzer.get_cluster_summary(busiest)
    json.dumps(summary)
    assert np.isclose(summary["statistics"]["total_usage"], direct[busiest])
    assert summary["exemplars"]["top_k"] and set(summary["chunk_ids"]) <= set(keys)
    top = analyzer.exemplars(busiest, "top_k")
    tokenizer = ModelResource(name="minilm-l6").tokenizer()
    for example in top:
        centre = example["position"] - example["context_start"]
        # The context is read back from the chunk: the exemplar token sits at its position.
        assert example["context_token_ids"][centre] == example["token_id"]
        assert example["context_tokens"][centre] == example["token"] == tokenizer.decode([example["token_id"]])
        assert example["context_memberships"][centre] == np.float32(example["membership"])
    assert f"[[{top[0]['token']}]]" in analyzer.visualize_cluster_context(busiest, 0, color=False)
    # Contexts stop at the text's edges: no [CLS], [SEP] or padding in any of them.
    context_ids = {t for ids in analyzer.exemplars_.column("context_token_ids").to_pylist() for t in ids}
    assert context_ids and not context_ids & set(tokenizer.all_special_ids)

    index = pq.read_table(tables / "cluster_summaries.parquet")
    assert index.num_rows == k and index.column("exemplars").to_numpy().sum() == analyzer.exemplars_.num_rows
    assert {"auroc_hard", "auroc_low", "auroc_high", "position_artifact", "near_duplicate", "token_entropy",
            "first_positions_share"} <= set(index.column_names)
    margin, high = index.column("auroc_hard_margin").to_numpy(), index.column("auroc_hard_null_high").to_numpy()
    np.testing.assert_allclose(margin, index.column("auroc_hard").to_numpy() - high)
    np.testing.assert_allclose(high, np.quantile(vectors.auroc_hard_null, 0.95))

    # Documents are held out whole: no held-out document has a sequence among the fitted ones.
    docs = {key: pq.read_table(tables / "token_chunks" / f"{key}.parquet").column("doc_id").to_pylist() for key in keys}
    doc_of = lambda sample: {docs[c][s] for c, s in zip(sample.chunk_id.tolist(), sample.sequence.tolist())}  # noqa: E731
    assert doc_of(merged.heldout) and not doc_of(merged.heldout) & doc_of(merged.fit_sample)
    exemplar_docs = {docs[c][s] for c, s in zip(analyzer.exemplars_.column("chunk_id").to_pylist(),
                                                analyzer.exemplars_.column("sequence").to_pylist())}
    assert not exemplar_docs & doc_of(merged.heldout)
    # the exemplar check splits every document anew: all held-out sequences, not only the sampled ones
    paths = {key: tables / "token_chunks" / f"{key}.parquet" for key in keys}
    split = heldout_sequences(analyzer.exemplars_, paths, merged.config)
    assert set(zip(merged.heldout.chunk_id.tolist(), merged.heldout.sequence.tolist())) <= split
    assert not split & set(zip(analyzer.exemplars_.column("chunk_id").to_pylist(),
                               analyzer.exemplars_.column("sequence").to_pylist()))
