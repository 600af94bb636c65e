"""Where dead, redundant and idle clusters move (latent_atlas.clustering.reseeding), on planted directions."""

import numpy as np

from latent_atlas.clustering.config import ClusteringConfig
from latent_atlas.clustering.reseeding import duplicates, plan_moves

D = 8
E = np.eye(D, dtype=np.float32)


def unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def around(direction, n, rng, noise=0.1):
    return unit(direction + noise * rng.standard_normal((n, D)))


def test_two_dead_clusters_go_to_two_uncovered_modes_not_both_to_one():
    rng = np.random.default_rng(0)
    centers = np.stack([E[0], E[1], E[0], E[0]])  # clusters 2 and 3 are due
    candidates = np.concatenate([around(E[2], 20, rng), around(E[3], 6, rng), around(E[0], 20, rng)])
    scores = (candidates @ centers.T).max(axis=1)
    config = ClusteringConfig(n_clusters=4, swap_margin=0, reseed_neighbors=4)
    due, seeds, swapped, _ = plan_moves(candidates, scores, centers, np.array([2, 3]), np.zeros(4, bool),
                                        np.zeros(4), config)
    assert due.tolist() == [2, 3] and swapped == []
    modes = np.argmax(seeds @ E.T, axis=1)
    assert sorted(modes.tolist()) == [2, 3]  # one each, though mode 2 offers more than three times the points
    assert np.all((seeds @ E.T).max(axis=1) > 0.9) and np.allclose(np.linalg.norm(seeds, axis=1), 1, atol=1e-6)


def test_an_idle_cluster_is_swapped_onto_an_uncovered_mode_only_when_the_gain_beats_its_loss():
    rng = np.random.default_rng(1)
    centers = np.stack([E[0], E[1], E[4]])  # nothing covers mode 2
    candidates = np.concatenate([around(E[2], 16, rng), around(E[0], 16, rng)])
    scores = (candidates @ centers.T).max(axis=1)
    config = ClusteringConfig(n_clusters=3, swap_margin=2.0, swaps_per_step=1, reseed_neighbors=4)
    swappable = np.array([True, True, True])
    idle = np.array([50.0, 50.0, 0.1])  # cluster 2 explains little
    _, _, swapped, targets = plan_moves(candidates, scores, centers, np.zeros(0, np.int64), swappable, idle, config)
    assert swapped == [2] and float(targets[0] @ E[2]) > 0.9
    busy = np.full(3, 50.0)  # the gain (~16 points x ~1 cosine) is below 2 x 50: nobody moves
    _, _, swapped, _ = plan_moves(candidates, scores, centers, np.zeros(0, np.int64), swappable, busy, config)
    assert swapped == []


def test_a_near_duplicate_of_a_more_used_centroid_is_redundant_and_a_chain_keeps_its_far_end():
    a, b = E[0], unit(E[0] + 0.2 * E[1])
    c = unit(b + 0.25 * (b - a) / np.linalg.norm(b - a))  # close to b, not to a
    centers = np.stack([a, b, c, E[5]])
    cos = centers @ centers.T
    threshold = min(cos[0, 1], cos[1, 2]) - 1e-3
    assert cos[0, 2] < threshold  # a and c are not duplicates of each other
    usage = np.array([3.0, 2.0, 1.0, 1.0])
    assert duplicates(centers, usage, threshold).tolist() == [1]  # b goes; c stays, its only match is b
    assert duplicates(centers, usage[::-1].copy(), threshold).tolist() == [1]  # c most used now: b still goes
    assert duplicates(centers, usage, 1.0).tolist() == []
