"""Per-chunk statistics: values against brute force, exact merge, disk round trip."""

import json

import numpy as np
import pytest

from latent_atlas.analysis.cluster_stats import cluster_stats
from latent_atlas.analysis.exemplars import ExemplarCandidates, ExemplarConfig, select_exemplars
from latent_atlas.analysis.intervention import intervention_vectors
from latent_atlas.analysis.statistics import ChunkStatistics, StatisticsConfig, check_usage, merge_statistics
from latent_atlas.clustering.memberships import SparseMemberships
from latent_atlas.data.chunks import DenseChunk, read_chunk, write_chunk
from latent_atlas.data.errors import ChunkError

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
    return dict(centers=centers, a=a, ma=ma, b=b, mb=mb, sa=sa, sb=sb, sw=sw, whole=whole, mw=mw)


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
    for name in ("priority", "sequence", "position", "memberships", "group", "stratum", "vector_norm"):
        np.testing.assert_array_equal(getattr(merged.heldout, name), getattr(direct.heldout, name), err_msg=name)
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


def test_usage_matches_memberships_fails_on_a_memberships_file_rewritten_after_the_statistics(data):
    ok, details = check_usage(data["sa"], [data["ma"]])
    assert ok and details["max_abs_error"] < 1e-9
    # chunk a's memberships remade by a refit (other centers) after its statistics were merged
    _, refit = make_chunk(40, 1, data["centers"] + 0.3 * np.random.default_rng(8).standard_normal((K, D)))
    ok, details = check_usage(data["sa"], [refit])
    assert not ok and details["max_abs_error"] > 1e-3
    assert not check_usage(data["sa"], [data["ma"], data["ma"]])[0]  # a chunk counted twice


def test_second_moment_round_trips_exactly(data, tmp_path):
    loaded = ChunkStatistics.load(data["sa"].save(tmp_path / "a.npz"))
    np.testing.assert_array_equal(loaded.moments.second_moment, data["sa"].moments.second_moment)


def test_bad_statistics_file_is_named(tmp_path):
    bad = tmp_path / "broken.npz"
    np.savez(bad, usage=np.zeros(3))
    with pytest.raises(ValueError, match="broken.npz: not a chunk statistics file"):
        ChunkStatistics.load(bad)


def many_clusters(n_seq, seq_len, k, seed, dim=8, usage=None, per_token=3):
    """Random vectors; each token a member of `per_token` clusters drawn with probabilities
    `usage` [k] (uniform if None), Dirichlet memberships."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n_seq, seq_len, dim)).astype(np.float16)
    p = np.full(k, 1.0 / k) if usage is None else usage / usage.sum()
    n = n_seq * seq_len
    gumbel = np.log(p) - np.log(-np.log(rng.random((n, k))))  # top per_token: draws without replacement
    clusters = np.argsort(-gumbel, axis=1)[:, :per_token]  # [n, per_token]
    values = rng.dirichlet(np.full(per_token, 0.7), n).astype(np.float32)
    s, q = np.divmod(np.repeat(np.arange(n), per_token), seq_len)
    tokens = rng.integers(0, 500, (n_seq, seq_len)).astype(np.int32)
    mem = SparseMemberships(s.astype(np.int32), q.astype(np.int32), clusters.ravel().astype(np.int32),
                            values.ravel(), tokens[s, q], n_seq, seq_len)
    return DenseChunk(x, np.ones((n_seq, seq_len), bool), tokens), mem


def everything_kept(**overrides):
    """Reservoirs large enough to hold every token, so the held-out set is known in full."""
    return StatisticsConfig(**{"heldout_sample_size": 10**6, "fit_sample_size": 10**6, **overrides})


@pytest.fixture(scope="module")
def k128():
    chunk, mem = many_clusters(200, 16, 128, seed=3)
    keys = np.arange(200, dtype=np.uint64)
    return chunk, mem, keys, ChunkStatistics.compute("k128", mem, chunk, 128, everything_kept(), sequence_keys=keys)


def test_heldout_tokens_never_fitted_nor_shown_as_exemplars(k128):
    """Labels are scored on held-out tokens: none may be in the fitting sample or among the
    exemplars a labeller is shown (k >= 128, so cluster 81, once salted like the held-out split, exists)."""
    _, _, _, stats = k128
    held = set(zip(stats.heldout.sequence.tolist(), stats.heldout.position.tolist()))
    fit = set(zip(stats.fit_sample.sequence.tolist(), stats.fit_sample.position.tolist()))
    assert len(held) + len(fit) == stats.n_tokens and not held & fit
    shown = select_exemplars(stats.candidates)
    assert set(shown["cluster"].tolist()) >= {81}
    for kind in ("top_k", "random_k", "quantile"):
        mine = shown["kind"] == kind
        assert not set(zip(shown["sequence"][mine].tolist(), shown["position"][mine].tolist())) & held, kind
    held_sequences = {s for s, _ in held}
    assert not set(shown["sequence"].tolist()) & held_sequences  # contexts cannot show held-out text either


def test_exemplar_streams_are_not_the_heldout_or_fitting_streams(k128):
    """The old salt `seed * 1_000_003 + cluster` equalled the held-out salt for cluster 81 at seed
    0: its random exemplars carried exactly the held-out priorities. No cluster's exemplar
    priorities may equal a reservoir's priority of the same token."""
    _, mem, keys, stats = k128
    every_token = ExemplarCandidates.collect("k128", mem, keys, 128, stats.config.exemplars)
    for sample in (stats.heldout, stats.fit_sample):
        reservoir = dict(zip(zip(sample.sequence.tolist(), sample.position.tolist()), sample.priority.tolist()))
        same = [c for c, s, p, prio in zip(every_token.cluster.tolist(), every_token.sequence.tolist(),
                                           every_token.position.tolist(), every_token.priority.tolist())
                if reservoir.get((s, p)) == prio]
        assert not same, f"clusters sharing a stream with a reservoir: {sorted(set(same))[:5]}"


def test_heldout_split_keeps_documents_whole():
    """Documents (here 4 sequences each) are held out whole: no document, and so no sequence,
    is both fitted and scored."""
    chunk, mem = many_clusters(120, 16, 8, seed=4)
    documents = np.repeat(np.arange(30, dtype=np.uint64), 4)
    stats = ChunkStatistics.compute("docs", mem, chunk, 8, everything_kept(heldout_fraction=0.3),
                                    document_keys=documents)
    held_seq, fit_seq = set(stats.heldout.sequence.tolist()), set(stats.fit_sample.sequence.tolist())
    assert held_seq and not held_seq & fit_seq
    assert set(stats.heldout.chunk_id.tolist()) == set(stats.fit_sample.chunk_id.tolist()) == {"docs"}
    assert set(stats.heldout.group.tolist()) == {int(documents[s]) for s in held_seq}
    assert not set(stats.heldout.group.tolist()) & set(stats.fit_sample.group.tolist())
    assert held_seq == {s for s in range(120) if int(documents[s]) in set(stats.heldout.group.tolist())}
    assert not set(stats.candidates.sequence.tolist()) & held_seq


def test_every_used_cluster_keeps_50_heldout_tokens():
    """k=64 with skewed usage: a cluster with at least 50 held-out members (tokens whose largest
    membership is that cluster) keeps at least 50 in the held-out reservoir, at default sizes."""
    usage = 1.0 / np.arange(1, 65) ** 1.2
    chunk, mem = many_clusters(400, 128, 64, seed=5, usage=usage)
    default = ChunkStatistics.compute("zipf", mem, chunk, 64, StatisticsConfig())
    full = ChunkStatistics.compute("zipf", mem, chunk, 64, everything_kept())
    available = np.bincount(full.heldout.memberships.argmax(1), minlength=64)
    kept = np.bincount(default.heldout.memberships.argmax(1), minlength=64)
    used = available >= 50
    share_in_uniform = available * 2048 / available.sum()  # expected members in one uniform reservoir of 2048
    assert used.sum() >= 16 and (used & (share_in_uniform < 40)).sum() >= 2
    assert (kept[used] >= 50).all(), {int(c): (int(kept[c]), int(available[c])) for c in np.flatnonzero(used & (kept < 50))}


def test_small_reservoirs_merge_exactly(data):
    """Uniform + per-cluster reservoirs merged over chunks equal one pass over all tokens."""
    small = StatisticsConfig(**{**CONFIG.__dict__, "heldout_sample_size": 10, "heldout_per_cluster": 3,
                                "fit_sample_size": 12})
    a = ChunkStatistics.compute("a", data["ma"], data["a"], K, small, sequence_keys=np.arange(40))
    b_chunk = DenseChunk(*[getattr(data["whole"], f)[40:] for f in ("activations", "attention_mask", "token_ids")])
    mb = data["mw"]
    rows = mb.sequence >= 40
    b_mem = SparseMemberships(mb.sequence[rows] - 40, mb.position[rows], mb.cluster[rows], mb.value[rows],
                              mb.token_id[rows], 25, L)
    b = ChunkStatistics.compute("b", b_mem, b_chunk, K, small, sequence_keys=np.arange(40, 65))
    whole = ChunkStatistics.compute("whole", data["mw"], data["whole"], K, small, sequence_keys=np.arange(65))
    merged = a.merge(b)
    for name in ("heldout", "fit_sample"):
        got, want = getattr(merged, name), getattr(whole, name)
        np.testing.assert_array_equal(got.priority, want.priority, err_msg=name)
        np.testing.assert_array_equal(got.vectors, want.vectors, err_msg=name)
    np.testing.assert_array_equal(merged.heldout_count, whole.heldout_count)
    assert (np.bincount(whole.heldout.stratum, minlength=K + 1)[:K] >= np.minimum(3, whole.heldout_count[:K])).all()


def test_measures_flag_window_start_artifact_and_near_duplicates():
    """Planted: cluster 4 lives only at positions 0-3; clusters 0 and 1 have near-identical
    centroids; cluster 2 is one token. The table flags exactly these."""
    rng = np.random.default_rng(9)
    n_seq, seq_len, k = 60, 16, 5
    centers = np.linalg.qr(rng.standard_normal((8, k)))[0].T  # [k, 8] orthonormal
    centers[1] = centers[0] + 0.05 * centers[3]  # cosine ~0.999
    labels = rng.integers(0, 4, (n_seq, seq_len))
    labels[:, :4] = 4  # the window-start cluster
    tokens = rng.integers(10, 200, (n_seq, seq_len)).astype(np.int32)
    tokens[labels == 2] = 7  # cluster 2: a single token
    s, q = np.nonzero(np.ones((n_seq, seq_len), bool))
    c = labels.ravel()
    mem = SparseMemberships(s.astype(np.int32), q.astype(np.int32), c.astype(np.int32), np.full(s.size, 0.9, np.float32),
                            tokens[s, q], n_seq, seq_len)
    chunk = DenseChunk(rng.standard_normal((n_seq, seq_len, 8)).astype(np.float16), np.ones((n_seq, seq_len), bool), tokens)
    stats = ChunkStatistics.compute("planted", mem, chunk, k, StatisticsConfig())
    rows = cluster_stats(stats, centers).to_pylist()
    assert [r["position_artifact"] for r in rows] == [False, False, False, False, True]
    assert rows[4]["first_positions_share"] == pytest.approx(1.0) and rows[0]["first_positions_share"] == 0.0
    assert rows[4]["position_entropy"] == pytest.approx(np.log(4) / np.log(16))
    assert [r["near_duplicate_partners"] for r in rows] == [[1], [0], [], [], []]
    assert [r["near_duplicate"] for r in rows] == [True, True, False, False, False]
    assert rows[2]["token_entropy"] == 0.0 and rows[2]["top_token_share"] == pytest.approx(1.0)
    assert min(rows[c]["token_entropy"] for c in (0, 1, 3, 4)) > 0.7
    json.dumps(rows)


SMALL = StatisticsConfig(**{**CONFIG.__dict__, "heldout_sample_size": 10, "heldout_per_cluster": 3, "fit_sample_size": 12})


def chunk_files(data, root, scale=1.0):
    """Chunks a and b written as chunk directories (activations times `scale`); opener(chunk_id)
    reads one memory-mapped and records the ids it opened."""
    for name in ("a", "b"):
        chunk = data[name]
        write_chunk(root / name, (chunk.activations * scale).astype(np.float16), chunk.attention_mask, chunk.token_ids, {})
    opened = []

    def opener(chunk_id):
        opened.append(chunk_id)
        return read_chunk(root / chunk_id)

    return opener, opened


@pytest.mark.parametrize("config", [CONFIG, SMALL], ids=["every_token", "small_reservoirs"])
def test_vectors_read_back_equal_the_sampled_vectors(data, tmp_path, config):
    """Saved statistics keep the reservoirs' identities only; reading the selected rows back from
    the chunk files gives exactly the vectors the reservoirs held in memory, and so the same
    intervention vectors and scores."""
    sa = ChunkStatistics.compute("a", data["ma"], data["a"], K, config, sequence_keys=np.arange(40))
    sb = ChunkStatistics.compute("b", data["mb"], data["b"], K, config, sequence_keys=np.arange(40, 65))
    kept = sa.merge(sb)  # in memory: the reservoirs carry their vectors through the merge
    loaded = merge_statistics([sa.save(tmp_path / "a.npz"), sb.save(tmp_path / "b.npz")])
    assert loaded.heldout.vectors is None and loaded.fit_sample.vectors is None
    opener, opened = chunk_files(data, tmp_path)
    read = loaded.read_vectors(opener)
    for name in ("heldout", "fit_sample"):
        np.testing.assert_array_equal(getattr(read, name).vectors, getattr(kept, name).vectors, err_msg=name)
        assert getattr(read, name).vectors.dtype == np.float16
    assert sorted(opened) == ["a", "a", "b", "b"]  # each chunk opened once per reservoir
    want, got = kept.fit_intervention_vectors(data["centers"]), loaded.fit_intervention_vectors(data["centers"], opener)
    for name in want._arrays():
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)
    assert got.shrinkage == want.shrinkage


def reservoir_arrays(stats, tmp_path, name):
    with np.load(stats.save(tmp_path / name), allow_pickle=False) as npz:
        return {key: npz[key] for key in npz.files if key.startswith(("heldout.", "fit_sample."))}


def test_saved_reservoirs_do_not_grow_with_the_dimension(tmp_path):
    """The same tokens at d=8 and d=256: the reservoirs on disk are the same size, and no
    [tokens, d] array is stored (at d=2304, k=512 the vectors made a chunk's file ~150 MB)."""
    wide, mem = many_clusters(60, 16, 16, seed=6, dim=256)
    narrow = DenseChunk(np.ascontiguousarray(wide.activations[..., :8]), wide.attention_mask, wide.token_ids)
    at = {d: reservoir_arrays(ChunkStatistics.compute("c", mem, chunk, 16, everything_kept()), tmp_path, f"{d}.npz")
          for d, chunk in ((8, narrow), (256, wide))}
    assert at[8].keys() == at[256].keys()
    for key, value in at[256].items():
        assert value.nbytes == at[8][key].nbytes, key
        assert 256 not in value.shape[1:], key
    n_kept = at[256]["heldout.priority"].size + at[256]["fit_sample.priority"].size
    assert n_kept == 60 * 16 and sum(v.nbytes for v in at[256].values()) < 100 * n_kept  # vs 512 bytes of fp16 vector


def test_read_back_refuses_a_rewritten_chunk(data, tmp_path):
    """A chunk rewritten since its statistics (e.g. a whitening refit) would give vectors the
    moments never saw: reading back names the chunk instead of scoring silently."""
    loaded = merge_statistics([data["sa"].save(tmp_path / "a.npz"), data["sb"].save(tmp_path / "b.npz")])
    opener, _ = chunk_files(data, tmp_path, scale=1.5)
    with pytest.raises(ChunkError, match="chunk 'a' changed since its statistics were computed"):
        loaded.fit_intervention_vectors(data["centers"], opener)


def test_streaming_merge_equals_pairwise_fold_exactly():
    """merge_statistics folds the token tables lazily (O(N)); the result is the pairwise fold's, bit for bit."""
    config = StatisticsConfig(heldout_sample_size=50, fit_sample_size=50, heldout_per_cluster=2)
    items = []
    for i in range(9):
        chunk, mem = many_clusters(6 + i, 10, 16, seed=100 + i)
        items.append(ChunkStatistics.compute(f"c{i}", mem, chunk, 16, config))
    pairwise = items[0]
    for stats in items[1:]:
        pairwise = pairwise.merge(stats)
    streamed = merge_statistics(items)
    for name in ChunkStatistics._PLAIN:
        np.testing.assert_array_equal(getattr(streamed, name), getattr(pairwise, name), err_msg=name)
    assert streamed.token_key.size > items[0].token_key.size  # the table grew across chunks
    assert streamed.chunk_ids == pairwise.chunk_ids and streamed.n_tokens == pairwise.n_tokens
