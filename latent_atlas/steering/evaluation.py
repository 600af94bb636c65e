"""Does a cluster's steering vector cause its concept? Measured on held-out prompts.

For each evaluated cluster and three residual-stream directions of equal norm (the LDA vector, the
difference of means, a seeded random direction drawn from the activations' covariance), at each alpha
of a grid:

- concept presence: the greedy continuation of every prompt is read back through the unsteered
  model (the pipeline's path: layer activations in fp16, whitened, soft memberships); every cluster's
  mean membership over each prompt's continuation tokens is kept (`prompt_usage` [P, k], and
  `prompt_usage_unsteered` for the plain continuations), so `latent_atlas.steering.statistics` can
  choose alpha on one half of the prompts and report lifts with intervals on the other; `usage` is
  the cluster's mean over all prompts and `lift` = usage - unsteered usage (a difference: no floor
  under a rare cluster's unsteered usage), the dose-response;
- cost: `kl`, the mean KL(unsteered || steered) of the next-token distributions over neutral
  held-out text read teacher-forced with the vector added at every position; `perplexity` of the
  steered continuation under the unsteered model.

Equal norm: at alpha the three directions all have norm alpha × ||difference of means at natural
scale|| (the residual distance between the cluster's members and the rest), so alpha = 1 is one
natural step of the difference of means and the directions differ only in where they point. The
random direction is the difference of two random tokens' residual activations on the neutral text
(first positions excluded: their activations are outliers in most LMs): the residual stream is
strongly anisotropic, and an isotropic direction would mostly point where the model never varies.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import torch

from latent_atlas.clustering.model import SequentialSoftClustering
from latent_atlas.data.whitening import Whitening
from latent_atlas.steering.statistics import DIRECTIONS
from latent_atlas.steering.vectors import CausalModel, SteeringVectors, greedy_generate, log_probs_and_activations


@dataclass
class SteeringEvalConfig:
    """What the steering evaluation runs (defaults: a few minutes for SmolLM2-135M on 2 CPU cores)."""

    top_n: int = 8
    """Clusters evaluated: the top N by usage."""
    alphas: tuple[float, ...] = (0.25, 0.5, 1.0)
    """Steering strengths, in units of the difference of means' natural scale (see module docstring)."""
    kl_budget: float = 0.5
    """Cost budget: mean next-token KL (nats) on neutral text that a steering strength may spend."""
    n_prompts: int = 24
    """Held-out prompts continued per direction and alpha: half choose alpha, half report the lift."""
    prompt_tokens: int = 16
    """Tokens of each prompt (the first tokens of a held-out window)."""
    max_new_tokens: int = 16
    """Greedy tokens generated per prompt."""
    n_neutral: int = 4
    """Held-out windows (other than the prompts) the KL is measured on."""
    neutral_tokens: int = 32
    """Tokens of each neutral window."""
    batch_size: int = 16
    """Sequences per teacher-forced pass (bounds the [batch, tokens, vocab] log-probabilities)."""
    level: float = 0.95
    """Coverage of the bootstrap intervals of the lift and the specificity."""
    n_bootstrap: int = 2000
    """Bootstrap resamples of the report prompts."""
    seed: int = 0
    """Seed of the prompt choice, the selection / report split, the random directions and the bootstrap."""

    def __post_init__(self):
        for name in ("top_n", "n_prompts", "prompt_tokens", "max_new_tokens", "n_neutral", "neutral_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.alphas or any(a <= 0 for a in self.alphas):
            raise ValueError(f"alphas must be a non-empty list of values > 0, got {list(self.alphas)}")
        if self.n_prompts < 2:
            raise ValueError(f"n_prompts must be >= 2 (a selection and a report half), got {self.n_prompts}")
        if not 0 < self.level < 1:
            raise ValueError(f"level must be in (0, 1), got {self.level}")
        if self.n_bootstrap < 1:
            raise ValueError(f"n_bootstrap must be >= 1, got {self.n_bootstrap}")
        if not self.kl_budget > 0:
            raise ValueError(f"kl_budget must be > 0, got {self.kl_budget}")


def unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-30)


def covariance_direction(activations: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Unit difference of two distinct random rows of activations [n, d]: a random direction
    distributed as the activations vary (covariance 2 Sigma), not isotropically."""
    i, j = rng.choice(len(activations), 2, replace=False)
    return unit(np.asarray(activations[i], np.float64) - np.asarray(activations[j], np.float64))


def eval_directions(vectors: SteeringVectors, cluster: int, seed: int,
                    activations: np.ndarray) -> tuple[dict[str, np.ndarray], float]:
    """({direction: unit residual vector [d]}, the common norm at alpha 1) for one cluster; the random
    direction from the residual activations [n, d] of held-out text (covariance_direction)."""
    directions = {"lda": unit(vectors.residual(cluster, "lda")), "mean": unit(vectors.residual(cluster, "mean")),
                  "random": covariance_direction(activations, np.random.default_rng([seed, cluster]))}
    return directions, float(np.linalg.norm(vectors.residual(cluster, "mean")))


class ConceptReader:
    """Reads token ids back through the unsteered model: memberships of every cluster, and NLL."""

    def __init__(self, model: CausalModel, layer: int, whitening: Whitening, centroids: SequentialSoftClustering,
                 batch_size: int):
        self.model, self.layer, self.whitening, self.centroids, self.batch_size = model, layer, whitening, centroids, batch_size

    def read(self, ids: np.ndarray, start: int) -> tuple[np.ndarray, np.ndarray]:
        """(mean membership [B, k] over positions >= start, mean NLL [B] of tokens >= start) of ids [B, T]."""
        usage, nll = [], []
        for first in range(0, len(ids), self.batch_size):
            block = ids[first:first + self.batch_size]
            # log-probs from position start - 1 on: those that predict the tokens read
            logp, acts = log_probs_and_activations(self.model, block, self.layer, capture=True,
                                                   last=block.shape[1] - start + 1)
            target = torch.as_tensor(block[:, start:], dtype=torch.long)
            nll.append(-logp[:, :-1].gather(-1, target[..., None])[..., 0].mean(1).numpy())
            # the stored chunks' precision: fp16 activations, whitened into fp16
            x = acts[:, start:].reshape(-1, acts.shape[-1]).numpy().astype(np.float16)
            z = self.whitening.transform(x).astype(np.float16)
            usage.append(dense_memberships(self.centroids, z).reshape(len(block), -1, self.n_clusters).mean(1))
        return np.concatenate(usage), np.concatenate(nll)

    @property
    def n_clusters(self) -> int:
        return int(self.centroids.cluster_centers_.shape[0])


def dense_memberships(centroids: SequentialSoftClustering, z: np.ndarray) -> np.ndarray:
    """[n, k] soft memberships (those under the sparsity threshold are 0) of whitened vectors z [n, d]."""
    clusters, values = centroids.soft_memberships(z)
    out = np.zeros((len(z), centroids.cluster_centers_.shape[0]), np.float32)
    rows = np.broadcast_to(np.arange(len(z))[:, None], clusters.shape)
    kept = clusters >= 0
    np.add.at(out, (rows[kept], clusters[kept]), values[kept])
    return out


def mean_kl(model: CausalModel, layer: int, neutral: np.ndarray, base: list[torch.Tensor], vectors: np.ndarray,
            batch_size: int) -> np.ndarray:
    """[R] mean KL(unsteered || steered) per next-token distribution over the neutral windows [m, T],
    for each steering vector of vectors [R, d]; base[i] holds window i's unsteered log-probs [T, V]."""
    total = np.zeros(len(vectors))
    for window, base_logp in zip(neutral, base):
        for first in range(0, len(vectors), batch_size):
            block = vectors[first:first + batch_size]
            logp, _ = log_probs_and_activations(model, np.repeat(window[None], len(block), 0), layer, block)
            p = base_logp.exp()[None]
            total[first:first + len(block)] += (p * (base_logp[None] - logp)).sum(-1).mean(1).numpy()
    return total / len(neutral)


def evaluate_steering(model: CausalModel, layer: int, whitening: Whitening, centroids: SequentialSoftClustering,
                      vectors: SteeringVectors, clusters: list[int], prompts: np.ndarray, neutral: np.ndarray,
                      config: SteeringEvalConfig, log: Callable[[str], None] = lambda _: None) -> pa.Table:
    """One row per cluster, direction and alpha, with every cluster's usage per prompt and the first
    prompt's continuations as examples.

    prompts [P, prompt_tokens] and neutral [m, neutral_tokens]: token ids of held-out text."""
    reader = ConceptReader(model, layer, whitening, centroids, config.batch_size)
    n_prompts, start = len(prompts), prompts.shape[1]
    plain = greedy_generate(model, prompts, config.max_new_tokens, layer)
    plain_usage, plain_nll = reader.read(np.concatenate([prompts, plain], 1), start)
    base, pool = [], []
    for w in neutral:
        logp, acts = log_probs_and_activations(model, w[None], layer, capture=True)
        base.append(logp[0])
        pool.append(acts[0, 1:].numpy())  # position 0 left out: its activation is an outlier in most LMs
    pool = np.concatenate(pool)
    grid = [(d, float(a)) for d in DIRECTIONS for a in config.alphas]
    columns: dict[str, list] = {name: [] for name in (
        "cluster", "direction", "alpha", "norm", "usage", "usage_unsteered", "lift", "kl", "perplexity",
        "perplexity_unsteered", "changed_tokens", "tokens", "example_prompt", "example_unsteered", "example_steered",
        "prompt_usage", "prompt_usage_unsteered")}
    decode = lambda ids: model.tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
    for c in clusters:
        directions, norm = eval_directions(vectors, c, config.seed, pool)
        steer = np.stack([a * norm * directions[d] for d, a in grid])  # [R, d]
        rows = np.repeat(steer, n_prompts, 0)  # [R * P, d]: every vector on every prompt
        text = greedy_generate(model, np.tile(prompts, (len(grid), 1)), config.max_new_tokens, layer, rows)
        usage, nll = reader.read(np.concatenate([np.tile(prompts, (len(grid), 1)), text], 1), start)
        kl = mean_kl(model, layer, neutral, base, steer, config.batch_size)
        before = float(plain_usage[:, c].mean())
        for r, (d, a) in enumerate(grid):
            part = slice(r * n_prompts, (r + 1) * n_prompts)
            after = float(usage[part, c].mean())
            values = (c, d, a, a * norm, after, before, after - before, float(kl[r]),
                      float(np.exp(nll[part].mean())), float(np.exp(plain_nll.mean())),
                      float(np.mean(text[part] != plain)), int(plain.size), decode(prompts[0]), decode(plain[0]),
                      decode(text[r * n_prompts]), usage[part].tolist(), plain_usage.tolist())
            for name, value in zip(columns, values):
                columns[name].append(value)
        top = {d: columns["lift"][-len(grid) + r] for r, (d, a) in enumerate(grid) if a == grid[-1][1]}
        log(f"cluster {c}: lift at alpha {grid[-1][1]:g}: " + ", ".join(f"{d} {v:+.4f}" for d, v in top.items()))
    return pa.table(columns)


def dose_response_plot(table: pa.Table, budget: float, path: str | Path) -> Path:
    """Median (over clusters) lift (usage difference, all prompts) and KL against alpha per direction,
    as a PNG written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from latent_atlas.data.atomic import write_atomically

    rows = table.to_pylist()
    fig, (ax_lift, ax_kl) = plt.subplots(1, 2, figsize=(10, 4))
    for d in DIRECTIONS:
        alphas = sorted({r["alpha"] for r in rows if r["direction"] == d})
        med = lambda key: [float(np.median([r[key] for r in rows if r["direction"] == d and r["alpha"] == a]))  # noqa: E731
                           for a in alphas]
        ax_lift.plot([0, *alphas], [0.0, *med("lift")], marker="o", label=d)
        ax_kl.plot([0, *alphas], [0.0, *med("kl")], marker="o", label=d)
    ax_kl.axhline(budget, color="grey", linestyle="--", label=f"budget {budget:g}")
    ax_lift.set(xlabel="alpha (natural scale of the difference of means)", ylabel="median concept lift (usage difference)")
    ax_kl.set(xlabel="alpha", ylabel="median KL on neutral text (nats)")
    for ax in (ax_lift, ax_kl):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle(f"Steering dose-response, {len({r['cluster'] for r in rows})} clusters")
    fig.tight_layout()
    written = write_atomically(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)
    return written


def heldout_windows(windows, n: int, length: int, seed: int) -> np.ndarray:
    """[min(n, available), length] token ids: the first `length` tokens of `n` windows drawn (seeded)
    from `windows`, an iterable of token-id arrays of held-out windows (shorter ones are skipped)."""
    eligible = [np.asarray(w[:length], np.int64) for w in windows if len(w) >= length]
    if not eligible:
        raise ValueError(f"no held-out window has {length} tokens; lower prompt_tokens / neutral_tokens")
    pick = np.random.default_rng(seed).choice(len(eligible), size=min(n, len(eligible)), replace=False)
    return np.stack([eligible[i] for i in np.sort(pick)])


def cluster_steering(table: pa.Table, statistics: pa.Table, summary: dict, cluster: int) -> dict | None:
    """One cluster's steering results (None if it was not evaluated): per direction the alpha chosen on
    the selection half with the report half's lift and specificity and their intervals (a row of
    `steering_statistics`' table), the paired tests across clusters (`summary`), and its dose-response
    rows (alpha, lift, usage, kl, perplexity; all prompts)."""
    rows = [r for r in table.select(["cluster", "direction", "alpha", "lift", "usage", "usage_unsteered", "kl",
                                     "perplexity"]).to_pylist() if r["cluster"] == cluster]
    if not rows:
        return None
    keys = ("alpha", "lift", "usage", "usage_unsteered", "kl", "perplexity")
    tests = {d: {"p_value": summary[f"{d}_vs_random_p"], "statistic": summary[f"{d}_vs_random_statistic"],
                 "clusters": summary[f"{d}_vs_random_clusters"]} for d in ("lda", "mean")}
    return {**{k: summary[k] for k in ("kl_budget", "level", "selection_prompts", "report_prompts")},
            "evaluated_clusters": summary["clusters"],
            "directions": {r["direction"]: r for r in statistics.to_pylist() if r["cluster"] == cluster},
            "tests_vs_random": tests,
            "dose_response": {d: [{k: r[k] for k in keys} for r in rows if r["direction"] == d] for d in DIRECTIONS}}
