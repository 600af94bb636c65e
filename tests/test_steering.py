"""Steering vectors in the model's coordinates, and their measured effect, on a tiny causal model.

The planted case: a 2-block Llama, randomly initialised (seeded), with embeddings 10x larger than
its blocks' outputs, so the residual stream after the last block carries the input token's identity
and the tied LM head reads it back. Text drawn from 16 tokens; cluster j is token j (its centroid
the mean whitened activation of that token). Adding cluster j's difference of means must make the
model write token j, so its usage on the steered text must rise, more than under a random vector of
the same norm. The statistics (alpha chosen on one half of the prompts, intervals, the paired test)
are checked on synthetic per-prompt usages over several seeds.
"""

import numpy as np
import pyarrow as pa
import pytest
import torch

from latent_atlas.clustering.model import SequentialSoftClustering
from latent_atlas.data.models import MINILM, extract_activations, model_directory
from latent_atlas.data.whitening import Moments, Whitening
from latent_atlas.steering.evaluation import (SteeringEvalConfig, covariance_direction, dense_memberships,
                                              evaluate_steering, unit)
from latent_atlas.steering.statistics import paired_test, split_prompts, steering_statistics
from latent_atlas.steering.vectors import SteeringVectors, greedy_generate, load_causal_model, residual_directions
from orchestration.cli import main
from tests.test_analyzer import results  # noqa: F401  (a small results directory, built once)

LAYER = 2
N_TOKENS = 16


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    path = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = AutoTokenizer.from_pretrained(model_directory(MINILM, path))
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
                         tie_word_embeddings=True)
    lm = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # the residual stream carries the token: embeddings dominate the blocks' outputs
        lm.model.embed_tokens.weight.mul_(10)
    lm.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def planted(tiny_model_dir):
    """(model, whitening, centroids, steering vectors, vocabulary [16], residual x [n, d], memberships [n, k])."""
    model = load_causal_model(str(tiny_model_dir), tiny_model_dir)
    rng = np.random.default_rng(0)
    vocab = rng.choice(np.arange(1000, 30000), N_TOKENS, replace=False)
    ids = rng.choice(vocab, (40, 48))
    x = extract_activations(model.loaded, ids, np.ones_like(ids), LAYER, 8).astype(np.float32).reshape(-1, 128)
    whitening = Whitening.fit(Moments.of_vectors(x))
    z = whitening.transform(x)
    centroids = SequentialSoftClustering(n_clusters=N_TOKENS, temperature=0.05, seed=0).fit(z[:400])
    # planted: cluster j is token j
    centers = np.stack([z[ids.ravel() == t].mean(0) for t in vocab])
    centroids.cluster_centers_ = (centers / np.linalg.norm(centers, axis=1, keepdims=True)).astype(np.float32)
    m = dense_memberships(centroids, z.astype(np.float16)).astype(np.float64)
    weight = m.sum(0)
    members = m.T @ z / weight[:, None]
    rest = (z.sum(0)[None] - m.T @ z) / (len(z) - weight)[:, None]
    unit = (members - rest) / np.linalg.norm(members - rest, axis=1, keepdims=True)
    vectors = SteeringVectors.from_moments(whitening, unit, unit, members, rest, weight / len(z), str(tiny_model_dir), LAYER)
    return model, whitening, centroids, vectors, vocab, x, m


def test_the_vector_moves_a_whitened_activation_along_its_direction_exactly(planted):
    _, whitening, _, vectors, _, x, m = planted
    assert vectors.mapping_error.max() < 1e-9
    for c in range(4):
        for kind in ("lda", "mean"):
            moved = whitening.transform(x[:50] + 2.0 * vectors.residual(c, kind)) - whitening.transform(x[:50])
            u = vectors.whitened(c, kind)
            cos = moved @ u / np.linalg.norm(moved, axis=1)
            assert np.all(1 - cos < 1e-5)
            # by two natural steps: twice the distance between the cluster's members and the rest
            np.testing.assert_allclose(moved @ u, 2.0 * vectors.scale_mean[c], rtol=1e-3)
    # mapped back, the difference of means is the residual stream's difference of means
    weight = m.sum(0)[:4]
    diff = m[:, :4].T @ x / weight[:, None] - ((x.sum(0)[None] - m[:, :4].T @ x) / (len(x) - weight)[:, None])
    np.testing.assert_allclose(vectors.residual_mean[:4], diff, rtol=1e-3, atol=1e-3 * np.abs(diff).max())


@pytest.mark.parametrize("method", ["zca", "pca"])
def test_mapping_is_exact_with_fewer_vectors_than_dimensions(method):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((20, 32)) * np.linspace(0.1, 10, 32)
    whitening = Whitening.fit(Moments.of_vectors(x), method=method)
    assert whitening.rank_ < 32  # rank-deficient data; eps keeps the matrix invertible
    u = rng.standard_normal((3, 32))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    v, error = residual_directions(whitening, u)
    assert error.max() < 1e-6
    moved = whitening.transform(x[:5, None] + v[None]) - whitening.transform(x[:5, None])  # [5, 3, d]
    cos = np.einsum("nkd,kd->nk", moved, u) / np.linalg.norm(moved, axis=-1)
    assert np.all(1 - cos < 1e-5)


def test_alpha_zero_reproduces_the_unsteered_generation(planted):
    model, _, _, vectors, vocab, _, _ = planted
    prompts = np.random.default_rng(2).choice(vocab, (3, 8))
    plain = greedy_generate(model, prompts, 10, LAYER)
    assert np.array_equal(greedy_generate(model, prompts, 10, LAYER, 0.0 * vectors.residual(0, "mean")), plain)
    assert np.array_equal(greedy_generate(model, prompts, 10, LAYER, np.zeros((3, 128))), plain)
    assert not np.array_equal(greedy_generate(model, prompts, 10, LAYER, 2.0 * vectors.residual(0, "mean")), plain)


def test_steering_only_from_a_position_leaves_the_text_before_it(planted):
    model, _, _, vectors, vocab, _, _ = planted
    prompts = np.random.default_rng(3).choice(vocab, (2, 8))
    plain = greedy_generate(model, prompts, 10, LAYER)
    late = greedy_generate(model, prompts, 10, LAYER, 3.0 * vectors.residual(1, "mean"), from_position=8 + 5)
    # the token at position 8 + t is predicted from positions < 8 + t: the first 5 new tokens see no vector
    assert np.array_equal(late[:, :5], plain[:, :5])
    assert not np.array_equal(late[:, 5:], plain[:, 5:])


def test_planted_vector_raises_its_cluster_with_an_interval_above_random(planted):
    model, whitening, centroids, vectors, vocab, _, _ = planted
    rng = np.random.default_rng(4)
    prompts, neutral = rng.choice(vocab, (8, 8)), rng.choice(vocab, (2, 16))
    config = SteeringEvalConfig(alphas=(2.0,), kl_budget=50.0, n_prompts=8, prompt_tokens=8, max_new_tokens=8,
                                n_neutral=2, neutral_tokens=16)
    clusters = list(range(8))
    table = evaluate_steering(model, LAYER, whitening, centroids, vectors, clusters, prompts, neutral, config)
    rows = {(r["cluster"], r["direction"]): r for r in table.to_pylist()}
    assert np.asarray(rows[(0, "mean")]["prompt_usage"]).shape == (8, N_TOKENS)  # every cluster, every prompt
    for c in clusters:
        assert rows[(c, "mean")]["norm"] == pytest.approx(rows[(c, "random")]["norm"])  # equal norm, by construction
        assert rows[(c, "mean")]["usage"] > 0.5
    stats, summary = steering_statistics(table, 50.0, level=0.9, n_bootstrap=500, seed=0)
    by = {(r["cluster"], r["direction"]): r for r in stats.to_pylist()}
    assert summary["selection_prompts"] == summary["report_prompts"] == 4
    for c in clusters:
        assert by[(c, "mean")]["alpha"] == 2.0 and by[(c, "mean")]["lift"] > 0.3  # the planted token takes over
    # the interval's low end too, and the cluster rises more than the others do (some plain continuations
    # already repeat the planted token: no room to rise there, so the median over clusters)
    assert np.median([by[(c, "mean")]["lift_low"] for c in clusters]) > 0.3
    assert np.median([by[(c, "mean")]["specificity_low"] for c in clusters]) > 0.3
    # a random direction between two tokens' activations may point at the cluster itself (here 1 of 8
    # does): it lifts a little less than the planted vector, or (an Intel AVX-512 CPU's rounding) takes
    # over every report prompt just as well, a tie the paired test drops; over the other clusters
    # the test still finds the planted vectors ahead (7 of 7 ahead: p = 1/128)
    assert summary["mean_vs_random_clusters"] >= 7 and summary["mean_vs_random_p"] < 0.01


@pytest.mark.parametrize("seed", range(3))
def test_random_direction_follows_the_activations_anisotropy(planted, seed):
    x = planted[5].astype(np.float64)
    centered = x - x.mean(0)
    per_dimension = np.trace(centered.T @ centered) / len(x) / x.shape[1]
    rng = np.random.default_rng(seed)
    variance = lambda u: float(np.mean((centered @ u) ** 2)) / per_dimension  # noqa: E731
    drawn = np.median([variance(covariance_direction(x, rng)) for _ in range(100)])
    isotropic = np.median([variance(unit(rng.standard_normal(x.shape[1]))) for _ in range(100)])
    # an isotropic direction sees the average variance; one drawn from the activations, where they vary
    assert isotropic < 1.5 and drawn > 3 * isotropic


def usage_table(plain: np.ndarray, steered: dict, kl: dict) -> pa.Table:
    """evaluate_steering's table from per-prompt usages: plain [P, k], {(cluster, direction, alpha): [P, k]}."""
    rows = [{"cluster": c, "direction": d, "alpha": a, "kl": kl[(c, d, a)], "usage": float(u[:, c].mean()),
             "usage_unsteered": float(plain[:, c].mean()), "lift": float((u[:, c] - plain[:, c]).mean()),
             "perplexity": 5.0, "prompt_usage": u.tolist(), "prompt_usage_unsteered": plain.tolist()}
            for (c, d, a), u in steered.items()]
    return pa.Table.from_pylist(rows)


def noisy_steering(rng, n_prompts=12, k=6, clusters=(0, 1, 2), alphas=(0.5, 1.0, 2.0), effect=0.05):
    """(plain [P, k], steered usages, KLs): every alpha of LDA and the mean lifts its cluster by
    `effect` times alpha / 2 on average, random by nothing; per-prompt noise of sd 0.05."""
    plain = rng.uniform(0.05, 0.2, (n_prompts, k))
    steered, kl = {}, {}
    for c in clusters:
        for d in ("lda", "mean", "random"):
            for a in alphas:
                u = plain + rng.normal(0, 0.05, plain.shape)
                u[:, c] += effect * a / 2 * (d != "random")
                steered[(c, d, a)], kl[(c, d, a)] = u, 0.1 * a
    return plain, steered, kl


@pytest.mark.parametrize("seed", range(4))
def test_alpha_is_never_chosen_on_the_report_prompts(seed):
    rng = np.random.default_rng(seed)
    plain, steered, kl = noisy_steering(rng)
    stats, _ = steering_statistics(usage_table(plain, steered, kl), budget=1.0, n_bootstrap=200, seed=seed)
    selection, report = split_prompts(len(plain), seed)
    assert len(np.intersect1d(selection, report)) == 0 and len(selection) + len(report) == len(plain)
    for row in stats.to_pylist():
        c, d, chosen = row["cluster"], row["direction"], row["alpha"]
        for a in {a for (cc, dd, a) in steered if (cc, dd) == (c, d)} - {chosen}:
            # the report half would now prefer alpha a by far; the choice and the numbers must not move
            tempted = {k: v.copy() for k, v in steered.items()}
            tempted[(c, d, a)][report, c] = 1.0
            again = {(r["cluster"], r["direction"]): r for r in steering_statistics(
                usage_table(plain, tempted, kl), budget=1.0, n_bootstrap=200, seed=seed)[0].to_pylist()}
            assert again[(c, d)] == row
            # the same push on the selection half does move the choice: the check above can fail
            tempted[(c, d, a)][selection, c] = 1.0
            moved = {(r["cluster"], r["direction"]): r for r in steering_statistics(
                usage_table(plain, tempted, kl), budget=1.0, n_bootstrap=200, seed=seed)[0].to_pylist()}
            assert moved[(c, d)]["alpha"] == a


def test_alpha_over_the_budget_is_never_chosen_and_nothing_affordable_reports_zero():
    rng = np.random.default_rng(0)
    plain, steered, kl = noisy_steering(rng, effect=0.2)
    kl = {key: (0.1 if key[2] == 0.5 else 5.0) for key in kl}  # only alpha 0.5 fits the budget
    kl.update({(1, d, a): 5.0 for d in ("lda", "mean", "random") for a in (0.5, 1.0, 2.0)})  # cluster 1: none
    stats, _ = steering_statistics(usage_table(plain, steered, kl), budget=1.0, n_bootstrap=200)
    for row in stats.to_pylist():
        if row["cluster"] == 1:
            assert (row["alpha"], row["kl"], row["lift"], row["lift_low"], row["lift_high"]) == (0.0, 0.0, 0.0, 0.0, 0.0)
        else:
            assert row["alpha"] in (0.0, 0.5) and row["kl"] <= 1.0


def test_bootstrap_interval_covers_the_true_lift_over_seeds():
    covered, width = [], []
    for seed in range(100):
        rng = np.random.default_rng(seed)
        plain, steered, kl = noisy_steering(rng, n_prompts=40, alphas=(2.0,), effect=0.1)
        stats, _ = steering_statistics(usage_table(plain, steered, kl), budget=1.0, level=0.9, n_bootstrap=500,
                                       seed=seed)
        row = next(r for r in stats.to_pylist() if (r["cluster"], r["direction"]) == (0, "mean"))
        assert row["alpha"] == 2.0 and row["report_prompts"] == 20
        covered.append(row["lift_low"] <= 0.1 <= row["lift_high"])
        width.append(row["lift_high"] - row["lift_low"])
    # nominal 90%; the percentile bootstrap on 20 prompts runs a little narrow
    assert 0.8 <= np.mean(covered) <= 0.97
    # and it is no wider than needed: about 2 × 1.645 × the sd of the mean lift (0.05 / √20)
    assert np.median(width) < 1.2 * 2 * 1.645 * 0.05 / np.sqrt(20)


def test_paired_test_finds_a_planted_effect_and_is_uniform_under_the_null():
    planted = [paired_test(np.random.default_rng(s).normal(1.0, 0.5, 12), np.zeros(12)) for s in range(10)]
    assert all(t["p_value"] < 0.01 and t["clusters"] == 12 for t in planted)
    null = np.array([paired_test(*np.random.default_rng(s).normal(0, 1, (2, 12)))["p_value"] for s in range(400)])
    assert 0.02 <= np.mean(null < 0.05) <= 0.08 and 0.4 <= np.mean(null < 0.5) <= 0.6
    # one-sided: random beating the cluster direction is not evidence for it
    assert paired_test(np.zeros(12), np.random.default_rng(0).normal(1.0, 0.5, 12))["p_value"] > 0.99
    # clusters with equal lifts (both kept alpha 0) carry no sign
    tied = paired_test(np.r_[np.zeros(4), np.ones(6)], np.zeros(10))
    assert tied["clusters"] == 6 and tied["p_value"] == pytest.approx(1 / 64)


def test_a_cluster_absent_unsteered_gets_its_usage_as_lift_not_an_inflated_ratio():
    n = 12
    plain = np.full((n, 4), 0.2)
    plain[:, 0] = 0.0  # cluster 0 never appears in the plain continuations
    steered, kl = {}, {}
    for c, rise in ((0, 0.02), (1, 0.3)):
        for d in ("lda", "mean", "random"):
            u = plain.copy()
            u[:, c] += rise if d != "random" else 0.0
            steered[(c, d, 1.0)], kl[(c, d, 1.0)] = u, 0.1
    table = usage_table(plain, steered, kl)
    stats = {(r["cluster"], r["direction"]): r for r in steering_statistics(table, 1.0, n_bootstrap=200)[0].to_pylist()}
    assert stats[(0, "mean")]["lift"] == pytest.approx(0.02)  # finite: a difference, no floor under 0
    assert stats[(0, "mean")]["lift"] < stats[(1, "mean")]["lift"]  # a floor of 1/192 would put 3.8 over 2.5
    assert stats[(1, "mean")]["specificity"] == pytest.approx(0.3)  # the other cluster did not move
    assert stats[(0, "random")]["lift"] == 0.0


def test_cli_steer_prints_both_continuations(planted, tmp_path, capsys):
    _, _, _, vectors, vocab, _, _ = planted
    home = tmp_path / "atlas"
    (home / "tensors").mkdir(parents=True)
    vectors.save(home / "tensors" / "steering_vectors.npz")
    tokenizer = planted[0].tokenizer
    prompt = tokenizer.decode(list(np.random.default_rng(5).choice(vocab, 6)))
    assert main(["steer", "--cluster", "3", "--alpha", "3", "--kind", "mean", "--max-new-tokens", "6",
                 "--home", str(home), prompt]) == 0
    out = capsys.readouterr().out
    assert "unsteered" in out and "steered" in out and prompt in out
    assert tokenizer.decode([int(vocab[3])]) in out.split("steered")[-1]


def test_cluster_summary_and_page_carry_the_interval_and_the_test(results, tmp_path):
    import json

    from latent_atlas.data.tables import write_table
    from latent_atlas.reading.clusters import ClusterAnalyzer
    from latent_atlas.report import build_site

    path, _ = results
    assert ClusterAnalyzer(path).get_cluster_summary(1)["steering"] is None  # before steering_eval ran
    plain, steered, kl = noisy_steering(np.random.default_rng(0), k=5, clusters=(1, 2, 3), effect=0.2)
    table = usage_table(plain, steered, kl)
    write_table(table, path.parent / "tables" / "steering_eval.parquet",
                {"kl_budget": 0.15, "level": 0.9, "n_bootstrap": 300, "seed": 1})
    steering = ClusterAnalyzer(path).get_cluster_summary(1)["steering"]
    json.dumps(steering)
    stats, summary = steering_statistics(table, 0.15, 0.9, 300, 1)
    lda = next(r for r in stats.to_pylist() if (r["cluster"], r["direction"]) == (1, "lda"))
    assert steering["directions"]["lda"] == lda and lda["alpha"] <= 1.0  # alpha 2 costs 0.2 > 0.15
    assert lda["lift_low"] <= lda["lift"] <= lda["lift_high"]
    assert steering["tests_vs_random"]["lda"]["p_value"] == summary["lda_vs_random_p"]
    assert (steering["selection_prompts"], steering["report_prompts"], steering["level"]) == (6, 6, 0.9)
    assert [r["alpha"] for r in steering["dose_response"]["lda"]] == [0.5, 1.0, 2.0]
    assert ClusterAnalyzer(path).get_cluster_summary(0)["steering"] is None  # not among the evaluated clusters
    page = (build_site(path.parent, tmp_path / "site").path + "/clusters/1.html")
    text = open(page).read()
    assert f"[{lda['lift_low']:.4f}, {lda['lift_high']:.4f}]" in text
    assert f"p = {summary['lda_vs_random_p']:.3f} for LDA" in text
