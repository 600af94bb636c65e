"""Asset checks fed crafted inputs: each passes a sound input and fails the defect it guards against.

The checks decide in plain functions the assets call, so a defect can be planted without a Dagster run.
Checks whose failing test sits beside their library code: whitened_covariance_is_identity
(test_whitening), usage_matches_memberships (test_statistics), exemplars_match_chunks (test_exemplars),
atlas_stability_floor (test_ensemble), tree_has_structure (test_hierarchy_assets), association_testable
(test_outcomes); each test's name starts with its check's.
"""

import numpy as np
import pytest

from assets.clustering import centroids_unit_norm_and_finite, few_dead_clusters, memberships_valid
from assets.ensemble import members_converged
from assets.inputs import finite_and_shaped, mask_token_alignment
from latent_atlas.analysis.intervention import check_vectors, intervention_vectors
from latent_atlas.analysis.statistics import ChunkStatistics, StatisticsConfig
from latent_atlas.clustering.memberships import SparseMemberships
from latent_atlas.clustering.model import SequentialSoftClustering
from latent_atlas.data.chunks import DenseChunk
from latent_atlas.hierarchy.ensemble_runs import fit_atlas_ensemble


def _chunk(seed=0, n_seq=6, seq_len=16, d=32) -> DenseChunk:
    """Random fp16 activations, padding (zero vectors, id 0) after a ragged length."""
    rng = np.random.default_rng(seed)
    mask = np.arange(seq_len)[None, :] < rng.integers(seq_len // 2, seq_len, n_seq)[:, None]
    acts = np.where(mask[..., None], rng.standard_normal((n_seq, seq_len, d)), 0).astype(np.float16)
    return DenseChunk(acts, mask, np.where(mask, rng.integers(1, 1000, (n_seq, seq_len)), 0).astype(np.int32))


def _planted(n_modes=4, n=4000, d=16, noise=0.05, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    modes = rng.normal(size=(n_modes, d))
    return (modes[rng.integers(0, n_modes, n)] + noise * rng.normal(size=(n, d))).astype(np.float32)


def test_finite_and_shaped_fails_on_a_nan_that_slipped_through_and_on_another_dimension():
    chunk = _chunk()
    assert finite_and_shaped(chunk, 32)[0]
    acts = np.array(chunk.activations)
    acts[3, 2, 7] = np.nan  # what an fp16 cast of a model's overflowing value leaves
    passed, metadata = finite_and_shaped(DenseChunk(acts, chunk.attention_mask, chunk.token_ids), 32)
    assert not passed and metadata["non_finite_tokens"] == 1 and metadata["first_non_finite"] == "sequence 3, position 2"
    assert not finite_and_shaped(chunk, 64)[0]
    flat = DenseChunk(np.array(chunk.activations)[..., 0], chunk.attention_mask, chunk.token_ids)  # [n_seq, seq_len]
    assert finite_and_shaped(flat, 32) == (False, {"shape": "(6, 16)", "expected_dim": 32, "non_finite_tokens": 0,
                                                   "first_non_finite": ""})


def test_mask_token_alignment_fails_on_a_mask_shifted_onto_padding_and_on_an_empty_mask():
    chunk = _chunk()
    assert mask_token_alignment(chunk)[0]
    shifted = np.roll(chunk.attention_mask, 1, axis=1)  # one position late: the last attends zero-filled padding
    passed, metadata = mask_token_alignment(DenseChunk(chunk.activations, shifted, chunk.token_ids))
    assert not passed and metadata["attended_zero_vectors"] == chunk.n_sequences
    passed, metadata = mask_token_alignment(DenseChunk(chunk.activations, np.zeros_like(shifted), chunk.token_ids))
    assert not passed and metadata["attended_tokens"] == 0


def test_centroids_unit_norm_and_finite_fails_on_a_short_a_nan_and_a_duplicated_center():
    centers = SequentialSoftClustering(4, seed=0, n_epochs=2).fit(_planted()).cluster_centers_
    passed, metadata = centroids_unit_norm_and_finite(centers)
    assert passed and metadata["max_pair_cosine"] < 0.99, metadata
    for row, value in ((1, centers[1] * 0.5), (2, np.full(centers.shape[1], np.nan))):
        bad = centers.copy()
        bad[row] = value
        passed, metadata = centroids_unit_norm_and_finite(bad)
        assert not passed and metadata["off_unit_centers"] == [row]
    twin = centers.copy()
    twin[3] = twin[0]  # a reseed landed where cluster 0 already is
    passed, metadata = centroids_unit_norm_and_finite(twin)
    assert not passed and metadata["identical_pairs"] == [[0, 3]]


@pytest.mark.parametrize("seed", range(3))
def test_few_dead_clusters_fails_where_clusters_outnumber_the_modes(seed):
    x = _planted(n_modes=4, n=8000, seed=seed)
    matched = SequentialSoftClustering(4, seed=seed).fit(x)
    surplus = SequentialSoftClustering(16, n_epochs=1, max_points=1000, seed=seed, duplicate_cosine=1.0,
                                       swap_margin=0).fit(x)
    assert few_dead_clusters(matched.churn(), 0.05)[0], matched.churn()
    passed, metadata = few_dead_clusters(surplus.churn(), 0.05)
    assert not passed and metadata["share"] > 0.5


def test_memberships_valid_fails_on_bad_values_off_mask_entries_and_a_lost_token():
    chunk = _chunk(d=16)
    model = SequentialSoftClustering(4, seed=0, n_epochs=2).fit(chunk.activations[chunk.attention_mask].astype(np.float32))
    sparse = model.transform(chunk)
    assert memberships_valid(sparse, chunk.attention_mask, model.config.top_m)[0]

    def edited(**columns):
        fields = {name: getattr(sparse, name).copy() for name in ("sequence", "position", "cluster", "value", "token_id")}
        for name, (row, value) in columns.items():
            fields[name][row] = value
        return SparseMemberships(**fields, total_sequences=sparse.total_sequences, sequence_length=sparse.sequence_length)

    last = chunk.attention_mask[0].sum() - 1  # sequence 0's last attended position
    on_last = int(np.flatnonzero((sparse.sequence == 0) & (sparse.position == last))[-1])
    shared = int(np.flatnonzero(np.diff(sparse.sequence * 1000 + sparse.position) == 0)[0])  # a token with 2+ entries
    crafted = {
        "a negative value": edited(value=(0, -0.1)),
        "a NaN": edited(value=(0, np.nan)),
        "a token whose memberships sum past 1": edited(value=(shared, 1.0)),
        "an entry on padding": edited(position=(on_last, last + 1)),
    }
    for what, bad in crafted.items():
        assert not memberships_valid(bad, chunk.attention_mask, model.config.top_m)[0], what
    _, metadata = memberships_valid(crafted["an entry on padding"], chunk.attention_mask, model.config.top_m)
    assert metadata["entries_off_the_mask"] >= 1
    lost = memberships_valid(sparse, chunk.attention_mask | np.eye(*chunk.attention_mask.shape, k=15, dtype=bool),
                             model.config.top_m)  # a token the mask attends that transform never saw
    assert not lost[0] and lost[1]["attended_tokens_without_membership"] >= 1


def dead_cluster_statistics() -> tuple[ChunkStatistics, np.ndarray]:
    """Statistics of a planted chunk whose 4th cluster (of 4) gets no membership anywhere, and the centers."""
    rng = np.random.default_rng(5)
    n_seq, seq_len, d, k = 60, 16, 8, 4
    centers = np.linalg.qr(rng.standard_normal((d, k)))[0].T
    labels = rng.integers(0, k - 1, (n_seq, seq_len))  # never cluster 3
    x = centers[labels] + 0.5 * rng.standard_normal((n_seq, seq_len, d))
    p = np.eye(k)[labels] * 0.9 + np.eye(k)[(labels + 1) % (k - 1)] * 0.1
    s, q, c = np.nonzero(p > 0)
    mem = SparseMemberships(s.astype(np.int32), q.astype(np.int32), c.astype(np.int32), p[s, q, c].astype(np.float32),
                            np.zeros(s.size, np.int32), n_seq, seq_len)
    chunk = DenseChunk(x.astype(np.float16), np.ones((n_seq, seq_len), bool), np.zeros((n_seq, seq_len), np.int32))
    return ChunkStatistics.compute("planted", mem, chunk, k, StatisticsConfig(heldout_fraction=0.3)), centers


def test_vectors_finite_and_unit_norm_fails_on_a_dead_clusters_vector_and_a_nan():
    """Cluster 3 gets no membership anywhere: intervention_vectors still hands it a unit vector, which
    the check must name rather than pass."""
    stats, centers = dead_cluster_statistics()
    k = len(centers)
    vectors = intervention_vectors(stats.moments, stats.fit_sample, stats.heldout, centers).vectors
    assert np.isclose(np.linalg.norm(vectors[3]), 1.0)  # the dead cluster's vector looks like any other
    weight = stats.moments.cluster_weight
    passed, metadata = check_vectors(vectors, weight)
    assert not passed and metadata["dead_clusters"] == [3] and metadata["n_bad"] == 0
    live = np.where(np.arange(k) == 3, 1.0, weight)  # the same vectors, had cluster 3 held tokens
    assert check_vectors(vectors, live)[0]
    broken = vectors.copy()
    broken[1, 0] = np.nan
    passed, metadata = check_vectors(broken, live)
    assert not passed and metadata["bad_clusters"] == [1]


@pytest.mark.parametrize("seed", range(3))
def test_ensemble_members_converged_fails_for_runs_stopped_before_their_fixed_point(seed):
    x = _planted(n_modes=8, n=1600, d=16, noise=0.3, seed=seed)
    atlas = SequentialSoftClustering(8, seed=100 + seed, max_points=len(x), n_epochs=30).fit(x)
    settled = fit_atlas_ensemble(x, atlas, [0, 1], 0, 10, 100).result.final_shift
    stopped = fit_atlas_ensemble(x, atlas, [0, 1], 800, 1, 0).result.final_shift  # two online steps, no refinement
    assert members_converged(settled, 1e-3)[0], settled
    passed, metadata = members_converged(stopped, 1e-3)
    assert not passed and max(metadata["final_shift"]) > 1e-3, metadata
    assert not members_converged(np.array([1e-5, np.nan]), 1e-3)[0]  # a run that reports no shift
