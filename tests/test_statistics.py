"""Per-chunk statistics: values against brute force, exact merge, disk round trip."""

import json

import numpy as np
import pytest

from latent_atlas.chunks import DenseChunk
from latent_atlas.exemplars import ExemplarConfig
from latent_atlas.intervention import intervention_vectors
from latent_atlas.memberships import SparseMemberships
from latent_atlas.statistics import ChunkStatistics, StatisticsConfig, check_usage, cluster_stats, merge_statistics

K, L, D, VOCAB = 5, 12, 8, 40
CONFIG = StatisticsConfig(density_threshold=0.4, coactivation_threshold=0.1, histogram_bins=10,
                          heldout_fraction=0.2, heldout_sample_size=100_000, fit_sample_size=100_000,
                          gemm_dtype="float64", exemplars=ExemplarConfig(top_k=4, random_k=3, per_band=2))


def make_chunk(n_seq, seed, centers):
    """Random vectors, memberships from a real softmax over `centers`; token id planted per cluster."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n_seq, L, D)).astype(np.float16)
    mask = np.ones((n_seq, L), bool)
    mask[:, -2:] = rng.random((n_seq, 2)) < 0.5  # ragged padding at the end
    logits = x.astype(np.float64) @ centers.T * 1.5
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    tokens = rng.integers(K, VOCAB, (n_seq, L)).astype(np.int32)
    tokens = np.where(rng.random((n_seq, L)) < 0.5, p.argmax(-1), tokens).astype(np.int32)  # token c <-> cluster c
    keep = (p > 0.02) & mask[..., None]
    s, q, c = np.nonzero(keep)
    mem = SparseMemberships(s.astype(np.int32), q.astype(np.int32), c.astype(np.int32),
                            p[s, q, c].astype(np.float32), tokens[s, q], n_seq, L)
    return DenseChunk(x, mask, tokens), mem


@pytest.fixture(scope="module")
def data():
    centers = np.random.default_rng(7).standard_normal((K, D))
    a, ma = make_chunk(40, 1, centers)
    b, mb = make_chunk(25, 2, centers)
    whole = DenseChunk(*[np.concatenate([getattr(a, f), getattr(b, f)]) for f in ("activations", "attention_mask", "token_ids")])
    mw = SparseMemberships(*[np.concatenate([getattr(ma, f), getattr(mb, f) + (40 if f == "sequence" else 0)])
                             for f in ("sequence", "position", "cluster", "value", "token_id")], 65, L)
    sa = ChunkStatistics.compute("a", ma, a, K, CONFIG, sequence_keys=np.arange(40))
    sb = ChunkStatistics.compute("b", mb, b, K, CONFIG, sequence_keys=np.arange(40, 65))
    sw = ChunkStatistics.compute("whole", mw, whole, K, CONFIG, sequence_keys=np.arange(65))
    return dict(centers=centers, a=a, ma=ma, sa=sa, sb=sb, sw=sw, whole=whole, mw=mw)


def test_values_match_dense_memberships(data):
    sw, whole, mw = data["sw"], data["whole"], data["mw"]
    m = mw.dense(K)[whole.attention_mask]  # [n_tokens, K]
    np.testing.assert_allclose(sw.usage, m.sum(0), rtol=1e-6)
    np.testing.assert_allclose(sw.position_hist, mw.dense(K).sum(0).T, rtol=1e-6)
    np.testing.assert_array_equal(sw.density_count, (m > 0.4).sum(0))
    np.testing.assert_allclose(sw.coactivation, m.T.astype(np.float64) @ m, rtol=1e-6)
    b = (m > 0.1).astype(np.int64)
    np.testing.assert_array_equal(sw.coactivation_count, b.T @ b)
    np.testing.assert_array_equal(sw.membership_count, (m > 0).sum(0))
    np.testing.assert_allclose(sw.membership_max, m.max(0))
    hist = np.stack([np.histogram(m[m[:, c] > 0, c], bins=10, range=(0, 1))[0] for c in range(K)])
    assert abs(sw.membership_hist - hist).sum() <= 2  # only values exactly on a bin edge may differ
    assert sw.membership_hist.sum() == (m > 0).sum()
    assert sw.n_tokens == whole.attention_mask.sum()


def test_merge_equals_concatenated(data):
    merged, sw = data["sa"].merge(data["sb"]), data["sw"]
    for name in ("usage", "position_hist", "token_weight", "membership_sum", "membership_sumsq", "coactivation"):
        np.testing.assert_allclose(getattr(merged, name), getattr(sw, name), rtol=1e-12, err_msg=name)
    for name in ("token_key", "token_hard", "density_count", "membership_count", "membership_hist",
                 "coactivation_count", "membership_max"):
        np.testing.assert_array_equal(getattr(merged, name), getattr(sw, name), err_msg=name)
    assert merged.n_tokens == sw.n_tokens

    def keyed(stats, offsets):  # exemplar candidates as global (kind, cluster, seq, pos, value)
        c = stats.candidates
        seq = c.sequence + np.array([offsets[x] for x in c.chunk_ids])[c.chunk]
        return set(zip(c.kind.tolist(), c.cluster.tolist(), seq.tolist(), c.position.tolist(), c.value.tolist()))

    assert keyed(merged, {"a": 0, "b": 40}) == keyed(sw, {"whole": 0})
    assert keyed(merged, {"a": 0, "b": 40}) == keyed(data["sb"].merge(data["sa"]), {"a": 0, "b": 40})
    np.testing.assert_array_equal(merged.candidates.band_counts, sw.candidates.band_counts)
    held = lambda s, off: sorted(zip((s.heldout.sequence + [off.get(x, 0) for x in s.heldout.chunk_id]).tolist(),
                                     s.heldout.position.tolist()))  # noqa: E731
    assert held(merged, {"b": 40}) == held(sw, {})
    for name in ("sum_x", "second_moment", "cluster_weight", "cluster_sum"):
        np.testing.assert_allclose(getattr(merged.moments, name), getattr(sw.moments, name), rtol=1e-10, atol=1e-10)
    vm = intervention_vectors(merged.moments, merged.fit_sample, merged.heldout, data["centers"])
    vw = intervention_vectors(sw.moments, sw.fit_sample, sw.heldout, data["centers"])
    np.testing.assert_allclose(vm.vectors, vw.vectors, atol=1e-6)
    np.testing.assert_allclose(vm.auroc, vw.auroc, atol=1e-9)
    assert vm.shrinkage == pytest.approx(vw.shrinkage, abs=1e-9)


def test_heldout_split_is_disjoint_and_sized(data):
    sw = data["sw"]
    held = set(zip(sw.heldout.sequence.tolist(), sw.heldout.position.tolist()))
    fit = set(zip(sw.fit_sample.sequence.tolist(), sw.fit_sample.position.tolist()))
    assert not held & fit
    assert len(held) + len(fit) == sw.n_tokens
    assert sw.moments.n_tokens == len(fit)
    assert 0.1 < len(held) / sw.n_tokens < 0.3  # heldout_fraction = 0.2


def test_save_load_round_trip_and_streaming_merge(data, tmp_path):
    pa_, pb = data["sa"].save(tmp_path / "a.npz"), data["sb"].save(tmp_path / "b.npz")
    with np.load(pa_, allow_pickle=False) as npz:  # nothing pickled
        assert "usage" in npz.files
    merged = merge_statistics([pa_, pb])
    direct = data["sa"].merge(data["sb"])
    np.testing.assert_array_equal(merged.coactivation, direct.coactivation)
    np.testing.assert_array_equal(merged.candidates.value, direct.candidates.value)
    np.testing.assert_array_equal(merged.heldout.vectors, direct.heldout.vectors)
    assert merged.config == CONFIG and merged.chunk_ids == ["a", "b"]
    assert not list(tmp_path.glob(".*tmp*"))


def test_cluster_stats_table(data):
    sw = data["sw"]
    table = cluster_stats(sw, data["centers"], decode=lambda ids: [f"tok{i}" for i in ids], top_tokens=3)
    rows = table.to_pylist()
    json.dumps(rows)
    for c, row in enumerate(rows):
        assert row["top_token_ids"][0] == c  # planted: token c is emitted where cluster c is the argmax
        assert row["top_tokens"][0] == f"tok{c}"
        assert row["top_token_counts"] == sorted(row["top_token_counts"], reverse=True)
        assert sum(row["position_distribution"]) == pytest.approx(1.0)
        assert row["density"] == pytest.approx(sw.density_count[c] / sw.n_tokens)
        unit = data["centers"] / np.linalg.norm(data["centers"], axis=1, keepdims=True)
        sims = unit @ unit[c]
        sims[c] = -np.inf
        assert row["similar_clusters"][0] == int(np.argmax(sims))
        assert c not in row["coactivating_clusters"]


def test_check_usage(data):
    ok, details = check_usage(data["sa"], [data["ma"]])
    assert ok and details["max_abs_error"] < 1e-9
    broken = data["ma"]
    ok, _ = check_usage(data["sa"], [broken, broken])
    assert not ok


def test_second_moment_round_trips_exactly(data, tmp_path):
    loaded = ChunkStatistics.load(data["sa"].save(tmp_path / "a.npz"))
    np.testing.assert_array_equal(loaded.moments.second_moment, data["sa"].moments.second_moment)


def test_bad_statistics_file_is_named(tmp_path):
    bad = tmp_path / "broken.npz"
    np.savez(bad, usage=np.zeros(3))
    with pytest.raises(ValueError, match="broken.npz: not a chunk statistics file"):
        ChunkStatistics.load(bad)
