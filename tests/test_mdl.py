"""MDL merging: the cost formula is exactly the change in total description length."""

import itertools

import numpy as np
import pytest

from latent_atlas.hierarchy.mdl import (MergeConfig, aligned_merge_histories, coactivation, description_length,
                                        history_distances, merge_costs, merge_iteration, plot_history_distances)


def _groups_state(active, assignment):
    """OR activation [n, k] and sizes [k] of groups given a component -> group assignment."""
    k = assignment.max() + 1
    group_active = np.stack([active[:, assignment == g].any(1) for g in range(k)], axis=1)
    return group_active, np.bincount(assignment, minlength=k)


@pytest.mark.parametrize("alpha", [0.0, 1.0, 2.5])
def test_cost_matches_brute_force_description_length(alpha):
    rng = np.random.default_rng(0)
    active = rng.random((80, 9)) < rng.uniform(0.05, 0.5, size=9)  # [n, k0] with varied rates
    assignment = np.array([0, 1, 2, 2, 3, 4, 4, 4, 5])  # some groups already merged
    group_active, sizes = _groups_state(active, assignment)
    before = description_length(group_active, sizes, alpha)
    costs = merge_costs(coactivation(group_active), sizes, alpha)
    for i, j in itertools.combinations(range(len(sizes)), 2):
        merged = np.where(assignment == j, i, assignment)
        merged = np.unique(merged, return_inverse=True)[1]  # relabel to 0..k-2
        after = description_length(*_groups_state(active, merged), alpha)
        assert costs[i, j] == pytest.approx(after - before, abs=1e-9)
        assert costs[j, i] == pytest.approx(costs[i, j])


def test_merge_iteration_keeps_coactivation_exact_and_total_cost_consistent():
    rng = np.random.default_rng(1)
    memberships = rng.random((200, 7)) * (rng.random((200, 7)) < 0.3)
    config = MergeConfig(activation_threshold=0.1, alpha=1.0)
    history = merge_iteration(memberships, config)
    active = memberships > 0.1
    assert history.group_idxs.shape == (6, 7)
    assert list(history.k_groups) == [6, 5, 4, 3, 2, 1]
    f = description_length(active, np.ones(7), config.alpha)
    for t in range(6):
        f_next = description_length(*_groups_state(active, history.group_idxs[t]), config.alpha)
        # the recorded cost of each merge is the change in F computed from scratch
        assert history.costs[t] == pytest.approx(f_next - f, abs=1e-6)
        f = f_next
    # greedy: each chosen merge is the cheapest available at its step
    prev = np.arange(7)
    for t in range(6):
        group_active, sizes = _groups_state(active, prev)
        assert history.costs[t] == pytest.approx(merge_costs(coactivation(group_active), sizes, 1.0).min())
        prev = history.group_idxs[t]


def test_stochastic_sampling_is_seeded_and_history_distances(tmp_path):
    rng = np.random.default_rng(2)
    memberships = rng.random((300, 10)) * (rng.random((300, 10)) < 0.3)
    runs = [merge_iteration(memberships, MergeConfig(sampling="mcmc", temperature=5.0, seed=s)) for s in (0, 0, 1)]
    np.testing.assert_array_equal(runs[0].group_idxs, runs[1].group_idxs)
    dist = history_distances(runs)
    assert dist.shape == (9, 3, 3)
    assert np.all(dist[:, 0, 1] == 0)
    assert np.all(dist[-1] == 0)  # one group left: every run agrees
    ranged = merge_iteration(memberships, MergeConfig(sampling="range", range_threshold=0.3, seed=3))
    assert ranged.group_idxs.shape == (9, 10)
    png = plot_history_distances(dist, tmp_path / "d.png")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_bad_config_is_named():
    with pytest.raises(ValueError, match="sampling"):
        merge_iteration(np.ones((5, 3)), MergeConfig(sampling="nope"))
    with pytest.raises(ValueError, match="n_iters"):
        merge_iteration(np.ones((5, 3)), MergeConfig(n_iters=5))


def test_histories_table_has_a_row_per_member_and_merge():
    from latent_atlas.hierarchy.mdl import histories_table, pair_distances

    rng = np.random.default_rng(3)
    histories = {f"seed={s}": merge_iteration(rng.random((60, 5)), MergeConfig(activation_threshold=0.5, seed=s))
                 for s in range(3)}
    distances = history_distances(list(histories.values()))  # [4, 3, 3]
    table = histories_table(histories, distances).to_pydict()
    assert len(table["member"]) == 3 * 4 and table["iteration"][:4] == [1, 2, 3, 4]
    per_pair = pair_distances(distances)
    for row in range(len(table["member"])):
        h, t = histories[table["member"][row]], table["iteration"][row] - 1
        assert table["group_idxs"][row] == h.group_idxs[t].tolist() and table["cost"][row] == h.costs[t]
        assert (table["merged_i"][row], table["merged_j"][row]) == tuple(h.pairs[t])
        assert table["k_groups"][row] == 4 - t
        assert table["distance_median"][row] == np.median(per_pair[t]) and table["distance_max"][row] == per_pair[t].max()
    with pytest.raises(ValueError, match="merges"):
        histories_table(histories, distances[:2])


def test_a_permuted_copy_of_a_member_is_at_distance_zero_at_every_merge():
    rng = np.random.default_rng(4)
    centers = rng.normal(size=(10, 24))
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    x = centers[rng.integers(0, 10, 400)] + 0.4 * rng.normal(size=(400, 24))

    def memberships_of(c):  # softmax over cosines, temperature 0.1
        logits = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ c.T / 0.1
        p = np.exp(logits - logits.max(1, keepdims=True))
        return p / p.sum(1, keepdims=True)

    permuted = centers[rng.permutation(10)]  # the same run, its clusters listed in another order
    config = MergeConfig(activation_threshold=0.1)
    histories = aligned_merge_histories(centers, {"a": centers, "b": permuted}, memberships_of, config)
    distances = history_distances(list(histories.values()))
    assert distances.shape == (9, 2, 2) and np.all(distances == 0)
    # unaligned, component j is another cluster in each member: the same run looks different
    unaligned = [merge_iteration(memberships_of(c), config) for c in (centers, permuted)]
    assert history_distances(unaligned)[:-1, 0, 1].max() > 0
