"""Where one stage job's time goes on one chunk of a finished home: cProfile of its second run.

    python benchmarks/stage_profile.py HOME STAGE_JOB [PARTITION] --npz DIR [--top 25]

e.g. `benchmarks/stage_profile.py /tmp/scale3/h26 whitened_activations_stage npz-chunk_00000 --npz /tmp/scale3/npz`
(a home that benchmarks/scale.py made from the NPZ folder DIR). Runs the job in process twice on the home's own
instance (the first run warms the page cache, imports and kernels; it rewrites the same outputs), profiles the
second and prints its wall time and the functions of this repository (and numpy/torch calls) with the most
cumulative time. Without PARTITION the job is a global one (e.g. whitening_stage).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("home")
    parser.add_argument("job")
    parser.add_argument("partition", nargs="?")
    parser.add_argument("--npz", required=True, help="the NPZ folder the home's corpus was registered from")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()

    from orchestration.instance import use_atlas_home

    use_atlas_home(args.home)
    import dagster as dg

    from orchestration.definitions import build_definitions
    from resources import CorpusResource

    job = build_definitions(corpus=CorpusResource(source="npz", path=args.npz)).resolve_job_def(args.job)
    instance = dg.DagsterInstance.get()
    run = {"partition_key": args.partition} if args.partition else {}
    job.execute_in_process(instance=instance, **run)  # warm-up
    profile = cProfile.Profile()
    start = time.perf_counter()
    profile.enable()
    result = job.execute_in_process(instance=instance, **run)
    profile.disable()
    print(f"{args.job} {args.partition or ''}: {'succeeded' if result.success else 'FAILED'} in "
          f"{time.perf_counter() - start:.2f} s (profiled run)")
    out = io.StringIO()
    pstats.Stats(profile, stream=out).sort_stats("cumulative").print_stats(
        rf"{REPO}/(latent_atlas|assets|io_managers)|method|built-in", args.top)
    print(out.getvalue())


if __name__ == "__main__":
    main()
