"""Exemplar candidates: exact top-k, seeded order-independent random-k, quantile bands, context."""

import numpy as np
import pyarrow as pa
import pytest

from latent_atlas.analysis.exemplars import (ExemplarCandidates, ExemplarConfig, check_exemplars, cluster_salts,
                                             fill_context, select_exemplars, sequence_keys_for, stream_salt)
from latent_atlas.clustering.memberships import SparseMemberships

K, L = 4, 20
CONFIG = ExemplarConfig(top_k=5, random_k=6, random_min_membership=0.2, n_bands=4, per_band=3,
                        band_min_membership=0.05, band_bins=48, seed=11)


def make_rows(n_seq, seed):
    """Softmax memberships over random centers, top-3 kept per token; some exact ties planted."""
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((n_seq, L, 8)) @ rng.standard_normal((8, K)) * 0.6
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    p[:3, 0, 0] = p[:3, 1, 0] = 1.0  # six exact ties at the top of cluster 0 (top_k = 5)
    cut = np.sort(p, axis=-1)[..., -3:-2]
    s, q, c = np.nonzero(p >= cut)
    tokens = rng.integers(0, 100, (n_seq, L)).astype(np.int32)
    return SparseMemberships(s.astype(np.int32), q.astype(np.int32), c.astype(np.int32),
                             p[s, q, c].astype(np.float32), tokens[s, q], n_seq, L), tokens


@pytest.fixture(scope="module")
def chunks():
    return {name: make_rows(n, seed) for name, n, seed in (("c0", 30, 0), ("c1", 25, 1), ("c2", 10, 2))}


def collect(name, rows, config=CONFIG):
    return ExemplarCandidates.collect(name, rows, sequence_keys_for(name, rows.total_sequences, config.seed), K, config)


def merged(chunks, order, config=CONFIG):
    out = None
    for name in order:
        cand = collect(name, chunks[name][0], config)
        out = cand if out is None else out.merge(cand)
    return out


def as_set(cand, kind):
    m = cand.kind == kind
    ids = np.array(cand.chunk_ids)[cand.chunk[m]]
    return set(zip(cand.cluster[m].tolist(), ids.tolist(), cand.sequence[m].tolist(), cand.position[m].tolist()))


def test_top_k_equals_full_sort(chunks):
    cand = merged(chunks, ["c0", "c1", "c2"])
    rows = [(c, name, s, p, v) for name, (mem, _) in chunks.items()
            for c, s, p, v in zip(mem.cluster.tolist(), mem.sequence.tolist(), mem.position.tolist(), mem.value.tolist())]
    expected = set()
    for c in range(K):
        ranked = sorted((r for r in rows if r[0] == c), key=lambda r: (-r[4], r[1], r[2], r[3]))[: CONFIG.top_k]
        expected |= {r[:4] for r in ranked}
    assert as_set(cand, 0) == expected
    top0 = sorted((r for r in rows if r[0] == 0), key=lambda r: -r[4])
    assert top0[5][4] == 1.0  # the planted ties were competing for the last slot


def test_random_k_is_seeded_and_order_independent(chunks):
    a, b = merged(chunks, ["c0", "c1", "c2"]), merged(chunks, ["c2", "c0", "c1"])
    assert as_set(a, 1) == as_set(b, 1) and as_set(a, 2) == as_set(b, 2)
    other = merged(chunks, ["c0", "c1", "c2"], ExemplarConfig(**{**CONFIG.__dict__, "seed": 12}))
    assert as_set(a, 1) != as_set(other, 1)
    m = a.kind == 1
    assert (a.value[m] >= CONFIG.random_min_membership).all()
    assert np.bincount(a.cluster[m], minlength=K).max() <= CONFIG.random_k


def test_quantile_bands_are_equal_count(chunks):
    cand = merged(chunks, ["c0", "c1", "c2"])
    sel = select_exemplars(cand)
    band = sel["kind"] == "quantile"
    for c in range(K):
        m = band & (sel["cluster"] == c)
        biggest_bin = cand.band_counts[c].max() / cand.band_counts[c].sum()
        assert biggest_bin < 1 / (2 * CONFIG.n_bands)  # so no band can be empty
        assert set(sel["band"][m].tolist()) == set(range(CONFIG.n_bands))
        assert np.bincount(sel["band"][m]).tolist() == [CONFIG.per_band] * CONFIG.n_bands
        assert (sel["membership"][m] >= sel["band_low"][m] - 1e-6).all()
        assert (sel["membership"][m] <= sel["band_high"][m] + 1e-6).all()
        # each band holds roughly a quarter of the banded tokens (to within one fine bin)
        values = np.concatenate([mem.value[(mem.cluster == c) & (mem.value >= 0.05)] for mem, _ in chunks.values()])
        lows = [sel["band_low"][m & (sel["band"] == b)][0] for b in range(CONFIG.n_bands)]
        highs = [sel["band_high"][m & (sel["band"] == b)][0] for b in range(CONFIG.n_bands)]
        share = np.array([((values >= lo) & (values < hi + 1e-9)).mean() for lo, hi in zip(lows, highs)])
        assert np.abs(share - 0.25).max() <= biggest_bin + 1e-9
    top = sel["kind"] == "top_k"
    for c in range(K):
        values = sel["membership"][top & (sel["cluster"] == c)]
        assert (np.diff(values) <= 0).all() and values.size == CONFIG.top_k


def test_fill_context_reads_each_chunk_once(chunks):
    sel = select_exemplars(merged(chunks, ["c0", "c1", "c2"]))
    opened = []

    def open_chunk(chunk_id):
        opened.append(chunk_id)
        mem, tokens = chunks[chunk_id]
        return tokens, mem

    table = fill_context(sel, open_chunk, lambda ids: [f"<{i}>" for i in ids], window=3)
    assert sorted(opened) == ["c0", "c1", "c2"]
    for row in table.to_pylist():
        mem, tokens = chunks[row["chunk_id"]]
        start = max(0, row["position"] - 3)
        assert row["context_token_ids"] == tokens[row["sequence"], start: row["position"] + 4].tolist()
        centre = row["position"] - row["context_start"]
        assert row["context_memberships"][centre] == pytest.approx(row["membership"])
        assert row["token"] == f"<{row['token_id']}>" == row["context_tokens"][centre]
        assert row["active_clusters"][0] == max(zip(row["active_values"], row["active_clusters"]))[1]
        assert row["cluster"] in row["active_clusters"]
    ok, details = check_exemplars(table)
    assert ok, details
    doubled = pa.concat_tables([table, table])
    assert not check_exemplars(doubled)[0]


def test_exemplars_match_chunks_fails_on_stale_chunks_tokens_not_in_the_chunk_and_heldout_leaks(chunks):
    """The check fails when the chunk files no longer hold an exemplar's membership (memberships
    rewritten after the statistics) or its token, or when an exemplar sits in a held-out sequence."""
    sel = select_exemplars(merged(chunks, ["c0", "c1", "c2"]))
    decode = lambda ids: [f"<{i}>" for i in ids]  # noqa: E731

    def open_chunk(chunk_id, scale=1.0):
        mem, tokens = chunks[chunk_id]
        return tokens, SparseMemberships(mem.sequence, mem.position, mem.cluster, mem.value * np.float32(scale),
                                         mem.token_id, mem.total_sequences, mem.sequence_length)

    stale = fill_context(sel, lambda cid: open_chunk(cid, 0.5), decode, window=3)
    ok, details = check_exemplars(stale)
    assert not ok and details["context_mismatches"] == stale.num_rows
    # the chunk re-registered shorter: every exemplar's position now lies outside the text (id -1)
    gone = fill_context(sel, lambda cid: (np.full_like(chunks[cid][1], -1), chunks[cid][0]), decode, window=3)
    ok, details = check_exemplars(gone)
    assert not ok and details["context_mismatches"] == gone.num_rows
    fresh = fill_context(sel, open_chunk, decode, window=3)
    assert check_exemplars(fresh, heldout_sequences={("c0", 10**6)})[0]
    first = fresh.slice(0, 1).to_pylist()[0]
    ok, details = check_exemplars(fresh, heldout_sequences={(first["chunk_id"], first["sequence"])})
    assert not ok and details["heldout_exemplars"] >= 1


def test_sampling_streams_are_distinct():
    """No two (purpose, seed, cluster) share a salt: exemplar salts are not an arithmetic shift
    of the seed that can land on another purpose's salt (as cluster 81 at seed 0 once did)."""
    purposes = ("exemplar_random", "exemplar_band", "heldout_split", "heldout_sample", "fit_sample")
    salts = [int(stream_salt(p, seed, c)) for p in purposes for seed in range(3) for c in range(1024)]
    assert len(set(salts)) == len(salts)
    np.testing.assert_array_equal(cluster_salts("exemplar_random", 0, 128)[81], stream_salt("exemplar_random", 0, 81))
    assert stream_salt("exemplar_random", 0, 81) != stream_salt("heldout_split", 0)
