"""Steering vectors in the model's coordinates, and their measured effect, on a tiny causal model.

The planted case: a 2-block Llama, randomly initialised (seeded), with embeddings 10x larger than
its blocks' outputs, so the residual stream after the last block carries the input token's identity
and the tied LM head reads it back. Text drawn from 16 tokens; cluster j is token j (its centroid
the mean whitened activation of that token). Adding cluster j's difference of means must make the
model write token j, so its usage on the steered text must rise; a random vector of the same norm
has no reason to.
"""

import numpy as np
import pyarrow as pa
import pytest
import torch

from latent_atlas.clustering.model import SequentialSoftClustering
from latent_atlas.data.models import MINILM, extract_activations, model_directory
from latent_atlas.data.whitening import Moments, Whitening
from latent_atlas.steering.evaluation import (SteeringEvalConfig, best_at_budget, dense_memberships, evaluate_steering,
                                              summarize)
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


def test_planted_vector_raises_its_clusters_usage_more_than_a_random_one(planted):
    model, whitening, centroids, vectors, vocab, _, _ = planted
    rng = np.random.default_rng(4)
    prompts, neutral = rng.choice(vocab, (4, 8)), rng.choice(vocab, (2, 16))
    config = SteeringEvalConfig(alphas=(2.0,), kl_budget=50.0, n_prompts=4, prompt_tokens=8, max_new_tokens=8,
                                n_neutral=2, neutral_tokens=16)
    table = evaluate_steering(model, LAYER, whitening, centroids, vectors, [0, 1, 2, 3], prompts, neutral, config)
    rows = {(r["cluster"], r["direction"]): r for r in table.to_pylist()}
    for c in range(4):
        mean, random = rows[(c, "mean")], rows[(c, "random")]
        assert mean["norm"] == pytest.approx(random["norm"])  # equal norm, by construction
        assert mean["usage"] > 0.5
        assert mean["usage"] - mean["usage_unsteered"] > 3 * abs(random["usage"] - random["usage_unsteered"]) + 0.3
        assert mean["kl"] > 0 and random["kl"] > 0
    summary = summarize(table, 50.0)
    assert summary["mean_beats_random"] == 4 and summary["median_lift_mean"] > 5 * max(summary["median_lift_random"], 1)


def test_best_lift_at_budget_keeps_only_affordable_alphas():
    table = pa.table({"cluster": [0, 0, 0, 0, 0, 1, 1, 1],
                      "direction": ["lda", "lda", "mean", "mean", "random", "lda", "mean", "random"],
                      "alpha": [1.0, 2.0, 1.0, 2.0, 1.0, 1.0, 1.0, 1.0],
                      "lift": [2.0, 9.0, 3.0, 4.0, 1.5, 0.5, 5.0, 0.8], "kl": [0.1, 0.9, 0.2, 0.4, 0.1, 0.1, 0.7, 0.1]})
    best = best_at_budget(table, 0.5)
    assert best[0]["lda"] == {"lift": 2.0, "alpha": 1.0, "kl": 0.1}  # alpha 2 is over budget
    assert best[0]["mean"]["alpha"] == 2.0
    assert best[1]["lda"] == {"lift": 1.0, "alpha": 0.0, "kl": 0.0}  # a lift below 1 is worse than not steering
    assert best[1]["mean"]["lift"] == 1.0  # nothing within the budget
    summary = summarize(table, 0.5)
    assert summary["median_lift_lda"] == 1.5 and summary["median_lift_mean"] == 2.5
    assert (summary["lda_beats_mean"], summary["mean_beats_lda"], summary["lda_mean_ties"]) == (0, 1, 1)
    assert summary["median_lift_random"] == 1.25 and summary["lda_beats_random"] == 1


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


def test_cluster_summary_carries_its_steering_results(results, tmp_path):
    import json

    from latent_atlas.data.tables import write_table
    from latent_atlas.reading.clusters import ClusterAnalyzer

    path, _ = results
    assert ClusterAnalyzer(path).get_cluster_summary(1)["steering"] is None  # before steering_eval ran
    rows = [{"cluster": 1, "direction": d, "alpha": a, "lift": lift, "usage": 0.1 * lift, "usage_unsteered": 0.1,
             "kl": kl, "perplexity": 5.0} for d, a, lift, kl in
            [("lda", 1.0, 3.0, 0.2), ("lda", 2.0, 6.0, 0.9), ("mean", 1.0, 4.0, 0.3), ("random", 1.0, 1.1, 0.2)]]
    write_table(pa.Table.from_pylist(rows), path.parent / "tables" / "steering_eval.parquet", {"kl_budget": 0.5})
    analyzer = ClusterAnalyzer(path)
    steering = analyzer.get_cluster_summary(1)["steering"]
    json.dumps(steering)
    assert steering["kl_budget"] == 0.5
    assert steering["best_at_budget"]["lda"] == {"lift": 3.0, "alpha": 1.0, "kl": 0.2}
    assert steering["best_at_budget"]["mean"]["lift"] == 4.0
    assert [r["alpha"] for r in steering["dose_response"]["lda"]] == [1.0, 2.0]
    assert analyzer.get_cluster_summary(0)["steering"] is None  # not among the evaluated clusters
