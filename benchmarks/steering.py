"""Steering evaluation on a finished demo home: does each cluster's vector cause its concept?

    python benchmarks/steering.py [--source /tmp/demo-final] [--home /tmp/steering-home] [--top-n 8] ...

Copies the source home once (it is never written), materializes `steering_vectors` and
`steering_eval` on the copy's Dagster instance, and prints: the median concept lift at the KL budget
for LDA, difference of means and a random direction of equal norm (the baseline measured in the same
run), how often LDA beats the difference of means, the dose-response plot's path, three steered
generations beside the unsteered ones, the CPU and the wall time.
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
    args = parser.parse_args(argv)
    home = Path(args.home)
    if not home.exists():
        shutil.copytree(args.source, home, symlinks=True)
    from orchestration.instance import use_atlas_home

    use_atlas_home(home)
    import dagster as dg
    import pyarrow.parquet as pq

    from latent_atlas.compute.cpu import describe
    from latent_atlas.steering.evaluation import summarize
    from orchestration.definitions import defs

    overrides = {k: v for k, v in (("top_n", args.top_n), ("alphas", args.alphas), ("kl_budget", args.kl_budget))
                 if v is not None}
    started = time.perf_counter()
    result = dg.materialize(list(defs.assets), instance=dg.DagsterInstance.get(), resources=defs.resources,
                            selection=dg.AssetSelection.assets("steering_vectors", "steering_eval"),
                            run_config={"ops": {"steering_eval": {"config": overrides}}} if overrides else None)
    seconds = time.perf_counter() - started
    if not result.success:
        print("materialization failed")
        return 1
    table = pq.read_table(home / "tables" / "steering_eval.parquet")
    meta = {k: v.value for k, v in result.asset_materializations_for_node("steering_eval")[0].metadata.items()}
    budget = float(meta["kl_budget"])
    summary = summarize(table, budget)
    print(f"CPU: {describe()}")
    print(f"steering_eval on {home}: {summary['clusters']} clusters (top by usage), alphas {meta['alphas']}, "
          f"{meta['prompts']} prompts, {meta['neutral_windows']} neutral windows, KL budget {budget:g} nats")
    print("median concept lift at the budget: " + ", ".join(
        f"{d} {summary[f'median_lift_{d}']:.2f}" for d in ("lda", "mean", "random")))
    print(f"LDA beats difference of means in {summary['lda_beats_mean']}, loses in {summary['mean_beats_lda']}, "
          f"ties {summary['lda_mean_ties']} of {summary['clusters']} clusters; beat random: LDA "
          f"{summary['lda_beats_random']}, mean {summary['mean_beats_random']}")
    rows = table.to_pylist()
    print("\nper cluster, best lift at the budget (alpha):")
    from latent_atlas.steering.evaluation import best_at_budget

    for c, best in best_at_budget(table, budget).items():
        print(f"  cluster {c:>3}: " + "  ".join(f"{d} {b['lift']:6.2f} (a={b['alpha']:g}, kl={b['kl']:.2f})"
                                                for d, b in best.items()))
    print(f"\ndose-response plot: {meta['dose_response_plot']}")
    strongest = sorted((r for r in rows if r["direction"] == "mean" and r["kl"] <= budget), key=lambda r: -r["lift"])
    shown = []
    for r in strongest:
        if r["cluster"] not in {s["cluster"] for s in shown}:
            shown.append(r)
        if len(shown) == 3:
            break
    for r in shown:
        print(f"\ncluster {r['cluster']}, difference of means, alpha {r['alpha']:g} (lift {r['lift']:.2f}, "
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
