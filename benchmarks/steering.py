"""Steering evaluation on a finished demo home: does each cluster's vector cause its concept?

    python benchmarks/steering.py [--source /tmp/demo-final] [--home /tmp/steering-home] [--top-n 8] ...

Copies the source home once (it is never written), materializes `steering_vectors` and
`steering_eval` on the copy's Dagster instance, and prints (latent_atlas.steering.statistics): per
cluster and direction (LDA, difference of means, a random direction of equal norm drawn from the
activations, the baseline measured in the same run) the alpha chosen within the KL budget on the
selection half of the prompts, and on the report half the lift (usage difference) and specificity
with their bootstrap intervals; the medians; the one-sided Wilcoxon signed-rank tests across clusters
of LDA and the difference of means against random (statistic, p-value, clusters); the dose-response
plot's path, three steered generations beside the unsteered ones, the CPU and the wall time.
"""

import argparse
import shutil
import sys
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default="/tmp/demo-final", help="a finished demo ATLAS_HOME (read only)")
    parser.add_argument("--home", default="/tmp/steering-home", help="where the copy lives (made once)")
    parser.add_argument("--top-n", type=int, default=None, help="clusters evaluated (default: the asset's)")
    parser.add_argument("--alphas", type=float, nargs="+", default=None, help="alpha grid (default: the asset's)")
    parser.add_argument("--kl-budget", type=float, default=None)
    parser.add_argument("--n-prompts", type=int, default=None, help="prompts, both halves (default: the asset's)")
    args = parser.parse_args(argv)
    home = Path(args.home)
    if not home.exists():
        shutil.copytree(args.source, home, symlinks=True)
    from orchestration.instance import use_atlas_home

    use_atlas_home(home)
    import dagster as dg
    import pyarrow.parquet as pq

    from latent_atlas.compute.cpu import describe
    from latent_atlas.data.tables import read_metadata
    from latent_atlas.steering.statistics import steering_statistics
    from orchestration.definitions import defs

    overrides = {k: v for k, v in (("top_n", args.top_n), ("alphas", args.alphas), ("kl_budget", args.kl_budget),
                                   ("n_prompts", args.n_prompts)) if v is not None}
    started = time.perf_counter()
    result = dg.materialize(list(defs.assets), instance=dg.DagsterInstance.get(), resources=defs.resources,
                            selection=dg.AssetSelection.assets("steering_vectors", "steering_eval"),
                            run_config={"ops": {"steering_eval": {"config": overrides}}} if overrides else None)
    seconds = time.perf_counter() - started
    if not result.success:
        print("materialization failed")
        return 1
    path = home / "tables" / "steering_eval.parquet"
    table, stored = pq.read_table(path), read_metadata(path)
    meta = {k: v.value for k, v in result.asset_materializations_for_node("steering_eval")[0].metadata.items()}
    budget = float(stored["kl_budget"])
    per_cluster, summary = steering_statistics(table, budget, stored["level"], stored["n_bootstrap"], stored["seed"])
    level = f"{summary['level']:.0%}"
    print(f"CPU: {describe()}")
    print(f"steering_eval on {home}: {summary['clusters']} clusters (top by usage), alphas {meta['alphas']}, "
          f"{meta['prompts']} prompts ({summary['selection_prompts']} choose alpha, {summary['report_prompts']} report), "
          f"{meta['neutral_windows']} neutral windows, KL budget {budget:g} nats")
    print(f"\nper cluster, on the report prompts: lift = usage difference [{level} bootstrap interval], "
          "specificity = lift - mean lift of the other evaluated clusters; alpha chosen on the selection prompts")
    for row in per_cluster.to_pylist():
        print(f"  cluster {row['cluster']:>3} {row['direction']:<6} alpha {row['alpha']:<4g} KL {row['kl']:5.2f}  "
              f"lift {row['lift']:+.4f} [{row['lift_low']:+.4f}, {row['lift_high']:+.4f}]  "
              f"specificity {row['specificity']:+.4f} [{row['specificity_low']:+.4f}, {row['specificity_high']:+.4f}]")
    print("\nmedian over clusters: " + "; ".join(
        f"{d} lift {summary[f'median_lift_{d}']:+.4f}, specificity {summary[f'median_specificity_{d}']:+.4f}"
        for d in ("lda", "mean", "random")))
    for d, name in (("lda", "LDA"), ("mean", "difference of means")):
        print(f"{name} > random (one-sided Wilcoxon signed-rank over clusters): statistic "
              f"{summary[f'{d}_vs_random_statistic']:g}, p = {summary[f'{d}_vs_random_p']:.4f}, "
              f"{summary[f'{d}_vs_random_clusters']} clusters with unequal lifts")
    rows = table.drop_columns(["prompt_usage", "prompt_usage_unsteered"]).to_pylist()
    print(f"\ndose-response plot: {meta['dose_response_plot']}")
    strongest = sorted((r for r in rows if r["direction"] == "mean" and r["kl"] <= budget), key=lambda r: -r["lift"])
    shown = []
    for r in strongest:
        if r["cluster"] not in {s["cluster"] for s in shown}:
            shown.append(r)
        if len(shown) == 3:
            break
    for r in shown:
        print(f"\ncluster {r['cluster']}, difference of means, alpha {r['alpha']:g} (lift {r['lift']:+.4f}, "
              f"KL {r['kl']:.2f}): prompt {r['example_prompt']!r}")
        left = textwrap.wrap(r["example_unsteered"], 48) or [""]
        right = textwrap.wrap(r["example_steered"], 48) or [""]
        print(f"  {'unsteered':<48} | steered")
        for i in range(max(len(left), len(right))):
            print(f"  {left[i] if i < len(left) else '':<48} | {right[i] if i < len(right) else ''}")
    print(f"\nwall time (steering_vectors + steering_eval, model load included): {seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
