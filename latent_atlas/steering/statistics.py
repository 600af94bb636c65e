"""Steering lifts with their uncertainty, from the per-prompt usages `evaluate_steering` keeps.

- lift: per prompt, the cluster's usage (mean membership over the continuation's tokens) on the
  steered continuation minus its usage on the unsteered continuation of the same prompt: a difference
  in membership per token, in [-1, 1]. Not a ratio: a cluster absent from the plain text has lift =
  its steered usage, finite, with no floor under the unsteered usage to inflate rare clusters.
- alpha: the prompts are split (seeded) into a selection half and a report half. Per cluster and
  direction the alpha kept is the one with the largest mean lift on the selection half among those
  whose KL on neutral text stays within the budget (alpha 0, lift 0, always qualifies; ties go to
  the smaller alpha). The lift reported is its mean over the report half, which took no part in the
  choice: the best of several alphas is not reported on the prompts that made it look best.
- interval: percentile bootstrap of the report-half mean over report prompts.
- specificity: per report prompt, the target's lift minus the mean lift of the other evaluated
  clusters (the top clusters by usage) on the same steered text; above 0 means the vector raises its
  own cluster more than it raises the others, not a shift of the text that lifts every cluster.
  Same bootstrap, resampling the same prompts as the lift.
- paired test across clusters: Wilcoxon signed-rank (scipy), one-sided (the cluster's direction lifts
  more than the random one), of the report-half lifts LDA vs random and difference of means vs
  random. Clusters where both lifts are equal (both kept alpha 0) carry no sign and are dropped,
  scipy's default; `clusters` counts the rest, and with fewer than 1 the p-value is 1.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

DIRECTIONS = ("lda", "mean", "random")


def split_prompts(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(selection, report) prompt indices of n prompts: a seeded half each, the report half gets the odd one."""
    if n < 2:
        raise ValueError(f"splitting prompts into a selection and a report half needs at least 2, got {n}")
    order = np.random.default_rng([seed, 11]).permutation(n)
    return np.sort(order[: n // 2]), np.sort(order[n // 2:])


def bootstrap_means(values: np.ndarray, n_bootstrap: int, rng: np.random.Generator) -> np.ndarray:
    """[n_bootstrap, ...] means of values [n, ...] over rows resampled with replacement (the same rows
    for every trailing column, so paired statistics stay paired)."""
    rows = rng.integers(0, len(values), (n_bootstrap, len(values)))
    return values[rows].mean(1)


def percentile_interval(resampled: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """(low, high): the (1 - level) / 2 and (1 + level) / 2 percentiles over axis 0."""
    return np.quantile(resampled, (1 - level) / 2, axis=0), np.quantile(resampled, (1 + level) / 2, axis=0)


def paired_test(treated: np.ndarray, baseline: np.ndarray) -> dict:
    """{"statistic", "p_value", "clusters"}: one-sided Wilcoxon signed-rank test that treated [n] exceeds
    baseline [n], pair by pair; equal pairs are dropped (`clusters` counts the pairs used)."""
    from scipy.stats import wilcoxon  # where used: scipy.stats/sklearn cost every run process ~1 s to import
    diff = np.asarray(treated, np.float64) - np.asarray(baseline, np.float64)
    used = int(np.count_nonzero(diff))
    if used == 0:
        return {"statistic": float("nan"), "p_value": 1.0, "clusters": 0}
    result = wilcoxon(diff[diff != 0], alternative="greater")
    return {"statistic": float(result.statistic), "p_value": float(result.pvalue), "clusters": used}


def per_prompt_usage(table: pa.Table) -> tuple[dict[tuple[int, str, float], np.ndarray], np.ndarray, dict]:
    """({(cluster, direction, alpha): usage [P, k]}, unsteered usage [P, k], {(cluster, direction, alpha): kl})
    from `evaluate_steering`'s table (its prompt_usage and prompt_usage_unsteered columns)."""
    keys = list(zip(table.column("cluster").to_pylist(), table.column("direction").to_pylist(),
                    table.column("alpha").to_pylist()))
    usage = [np.asarray(u, np.float64) for u in table.column("prompt_usage").to_pylist()]
    plain = np.asarray(table.column("prompt_usage_unsteered")[0].as_py(), np.float64)
    return dict(zip(keys, usage)), plain, dict(zip(keys, table.column("kl").to_pylist()))


def steering_statistics(table: pa.Table, budget: float, level: float = 0.95, n_bootstrap: int = 2000,
                        seed: int = 0) -> tuple[pa.Table, dict]:
    """(one row per cluster and direction: the alpha chosen on the selection half, its KL, the
    report-half lift and specificity with their intervals; the summary across clusters: medians and the
    paired tests), as the module docstring defines them."""
    usage, plain, kl = per_prompt_usage(table)
    clusters = sorted({c for c, _, _ in usage})
    selection, report = split_prompts(len(plain), seed)
    lift = {key: u - plain for key, u in usage.items()}  # [P, k] per prompt and cluster
    rows = []
    for c in clusters:
        others = [j for j in clusters if j != c]
        for di, d in enumerate(DIRECTIONS):
            alphas = sorted(a for cc, dd, a in usage if cc == c and dd == d)
            alpha, best = 0.0, 0.0
            for a in alphas:
                gain = float(lift[(c, d, a)][selection, c].mean())
                if kl[(c, d, a)] <= budget and gain > best:
                    alpha, best = a, gain
            chosen = lift[(c, d, alpha)][report] if alpha > 0 else np.zeros((len(report), plain.shape[1]))
            own = chosen[:, c]
            spread = own - chosen[:, others].mean(1) if others else np.full(len(report), np.nan)
            boot = bootstrap_means(np.stack([own, spread], 1), n_bootstrap, np.random.default_rng([seed, c, di]))
            low, high = percentile_interval(boot, level)
            rows.append({"cluster": c, "direction": d, "alpha": alpha, "kl": float(kl[(c, d, alpha)]) if alpha > 0 else 0.0,
                         "lift": float(own.mean()), "lift_low": float(low[0]), "lift_high": float(high[0]),
                         "specificity": float(spread.mean()), "specificity_low": float(low[1]),
                         "specificity_high": float(high[1]), "selection_prompts": len(selection),
                         "report_prompts": len(report)})
    per_cluster = pa.Table.from_pylist(rows)
    return per_cluster, summarize_statistics(rows, budget, level, len(selection), len(report))


def summarize_statistics(rows: list[dict], budget: float, level: float, n_selection: int, n_report: int) -> dict:
    """Medians over clusters per direction and the paired tests of LDA and the difference of means
    against random, from steering_statistics' rows."""
    by = {d: {r["cluster"]: r for r in rows if r["direction"] == d} for d in DIRECTIONS}
    clusters = sorted(by["random"])
    lifts = {d: np.array([by[d][c]["lift"] for c in clusters]) for d in DIRECTIONS}
    out = {"clusters": len(clusters), "kl_budget": budget, "level": level, "selection_prompts": n_selection,
           "report_prompts": n_report}
    for d in DIRECTIONS:
        out[f"median_lift_{d}"] = float(np.median(lifts[d])) if clusters else float("nan")
        out[f"median_specificity_{d}"] = (float(np.median([by[d][c]["specificity"] for c in clusters]))
                                          if clusters else float("nan"))
    for d in ("lda", "mean"):
        test = paired_test(lifts[d], lifts["random"])
        out.update({f"{d}_vs_random_statistic": test["statistic"], f"{d}_vs_random_p": test["p_value"],
                    f"{d}_vs_random_clusters": test["clusters"]})
    return out
