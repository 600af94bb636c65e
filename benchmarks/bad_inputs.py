"""The bad-input matrix, one fresh ATLAS_HOME per case: the error shown, whether the other chunks
finished, and whether the home works again once the bad file is deleted and its chunk removed.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bad_inputs.py [--only CASE ...]

NPZ cases run the chunk stage and the global whitening fit (the fan-in a bad chunk used to kill);
"other chunks finished" means the bad file's chunk failed and no other did, every good chunk's
activations were stored and the whitening was fitted on exactly the good chunks ("deleted without
remove-chunk": on the two files left, at the second run; "no majority dimension": refused at
registration, then run with expected_dim=32); text cases register the folder and tokenize every
chunk (MiniLM-L6's tokenizer).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402


def _npz_case(root: Path, case: str) -> dict:
    import dagster as dg

    from latent_atlas.data.errors import DimensionError
    from latent_atlas.data.manifests import read_manifest, remove_chunk
    from orchestration.definitions import build_definitions
    from assets.partitions import chunks
    from orchestration.jobs import stages_of
    from orchestration.pipeline import register_partitions, run_stages
    from resources import CorpusResource, ModelResource
    from tests.conftest import write_seed_npz
    from tests.test_bad_inputs import NPZ_CASES

    folder = root / "lab"
    folder.mkdir()
    for i in range(3 if case in DIMENSION_CASES else 2):
        write_seed_npz(folder / f"good{i}.npz", seed=i)
    if case == "duplicate content":
        shutil.copy(folder / "good0.npz", folder / "zz_copy.npz")
    elif case == "colliding names":
        write_seed_npz(folder / "a b.npz", seed=5)
        write_seed_npz(folder / "a_b.npz", seed=6)
    elif case == "wrong dimension, sorts first":
        write_seed_npz(folder / "a_wrong_dim.npz", dim=24, seed=5)
    elif case == "no majority dimension":  # 2 files of d=24 against good0, good1 (and good2, made d=24)
        for seed, name in enumerate(("a_dim24.npz", "good2.npz"), start=5):
            write_seed_npz(folder / name, dim=24, seed=seed)
    elif case != "deleted without remove-chunk":
        name, make, _ = NPZ_CASES[case]
        make(folder / name)
    # the files that must fail, and no other: a good file refused by the bad one's d is not "finished"
    must_fail = {"wrong dimension, sorts first": ["a_wrong_dim"], "no majority dimension": ["a_dim24", "good2"],
                 "deleted without remove-chunk": ["good1"]}.get(case)
    if must_fail is None:
        must_fail = [NPZ_CASES[case][0][:-4]] if case in NPZ_CASES else []
    corpus = CorpusResource(source="npz", path=str(folder))
    shown = []
    if case == "no majority dimension":  # refused at registration; then run with the d the user gives
        try:
            corpus.registration(None, "")
        except DimensionError as exc:
            shown.append(f"DimensionError: {exc}")
        corpus = CorpusResource(source="npz", path=str(folder), expected_dim=32)
    defs = build_definitions(corpus=corpus, model=ModelResource(name="minilm-l6"))
    stages = stages_of(defs, ["whitening"])
    with dg.instance_for_test(temp_dir=str(root / "home" / "dagster")) as instance:
        registration = corpus.registration(None, "")
        register_partitions(instance, registration.keys)
        try:
            report = run_stages(defs, instance, registration.keys, stages, log=lambda _: None)
            if case == "deleted without remove-chunk":  # the second run is the case
                (folder / "good1.npz").unlink()
                report = run_stages(defs, instance, registration.keys, stages, log=lambda _: None)
            shown += list(report.failed.values()) + list(report.refused.values()) + registration.warnings()
            fitted = _whitening_chunks(instance)
        except RuntimeError as exc:  # a global stage died for everybody
            report, fitted = None, 0
            shown.append(str(exc))
        good = [k for k in registration.keys if k not in {f"lab-{stem}" for stem in must_fail}]
        stored = all((root / "home" / "tensors" / "activations" / k).exists() for k in good)
        finished = (report is not None and sorted(report.failed) == sorted(f"lab-{stem}" for stem in must_fail)
                    and fitted == len(good) and stored)
        bad = list(report.failed) if report else []
        for key in bad:
            Path(read_manifest(key).path).unlink(missing_ok=True)
            remove_chunk(key)
            instance.delete_dynamic_partition(chunks.name, key)
        try:
            again = run_stages(defs, instance, instance.get_dynamic_partitions(chunks.name), stages, log=lambda _: None)
            usable = not again.failed and not again.refused
        except RuntimeError:
            usable = False
    return {"shown": shown, "finished": finished, "usable": usable}


def _whitening_chunks(instance) -> int:
    """How many chunks the latest whitening was fitted on (0 when there is none)."""
    import dagster as dg

    event = instance.get_latest_materialization_event(dg.AssetKey("whitening"))
    return int(event.asset_materialization.metadata["chunks"].value) if event else 0


def _text_case(root: Path, case: str, tokenizer) -> dict:
    import dagster as dg

    from latent_atlas.data.manifests import read_manifest
    from orchestration.definitions import build_definitions
    from orchestration.jobs import stages_of
    from orchestration.pipeline import register_partitions, run_stages
    from resources import CorpusResource, ModelResource

    folder = root / "speeches"
    folder.mkdir()
    (folder / "cats.txt").write_text("The cat sat on the mat and looked at the garden. " * 40)
    (folder / "dogs.txt").write_text("The dog ran in the park after the ball all day. " * 40)
    bad = {"non-UTF-8 text": ("latin1.txt", "café au lait".encode("latin-1")),
           "bad JSONL line": ("broken.jsonl", b'{"text": "fine"}\n{"text": "no closing brace"\n'),
           "10 MB single line": ("long.txt", b"government " * 953_675)}[case]
    (folder / bad[0]).write_bytes(bad[1])
    corpus = CorpusResource(source="files", path=str(folder), sequences_per_chunk=256)
    defs = build_definitions(corpus=corpus, model=ModelResource(name="minilm-l6"))
    with dg.instance_for_test(temp_dir=str(root / "home" / "dagster")) as instance:
        registration = corpus.registration(tokenizer, "minilm-l6")
        register_partitions(instance, registration.keys)
        report = run_stages(defs, instance, registration.keys, stages_of(defs, ["token_chunks"]), log=lambda _: None)
        shown = registration.warnings() + list(report.failed.values())
        sizes = [read_manifest(k).n_sequences for k in registration.keys]
        if case == "10 MB single line":
            shown.append(f"split into {len(sizes)} chunks of <= {max(sizes)} sequences (configured 256)")
        finished = not report.failed and all(
            (root / "home" / "tables" / "token_chunks" / f"{k}.parquet").exists() for k in registration.keys)
        (folder / bad[0]).unlink()
        again = corpus.registration(tokenizer, "minilm-l6")
        usable = not again.refused and again.keys[: len(registration.keys)] == registration.keys
    return {"shown": shown, "finished": finished, "usable": usable}


TEXT_CASES = ["non-UTF-8 text", "bad JSONL line", "10 MB single line"]
# the corpus's d and a vanished file (issue 28): three good chunks of d=32 and the case's file
DIMENSION_CASES = ["wrong dimension, sorts first", "no majority dimension", "deleted without remove-chunk"]


def main(argv: list[str] | None = None) -> int:
    from tests.test_bad_inputs import NPZ_CASES

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", nargs="*", default=None, help="run only these cases")
    args = parser.parse_args(argv)
    cases = [*NPZ_CASES, "duplicate content", "colliding names", *DIMENSION_CASES, *TEXT_CASES]
    tokenizer = None
    rows = []
    for case in args.only or cases:
        root = Path(tempfile.mkdtemp(prefix="bad-inputs-"))
        os.environ["ATLAS_HOME"] = str(root / "home")
        os.environ["DAGSTER_HOME"] = str(root / "home" / "dagster")
        (root / "home" / "dagster").mkdir(parents=True)
        started = time.perf_counter()
        if case in TEXT_CASES:
            if tokenizer is None:
                from resources import ModelResource

                tokenizer = ModelResource(name="minilm-l6").tokenizer()
            result = _text_case(root, case, tokenizer)
        else:
            result = _npz_case(root, case)
        shown = "; ".join(s.replace(str(root) + "/", "") for s in result["shown"]) or "(none)"
        rows.append((case, shown, result["finished"], result["usable"], time.perf_counter() - started))
        shutil.rmtree(root, ignore_errors=True)
        print(f"{case}: done in {rows[-1][4]:.1f} s", file=sys.stderr)
    print("| input | error shown | other chunks finished | home usable after |")
    print("|---|---|---|---|")
    for case, shown, finished, usable, _ in rows:
        print(f"| {case} | {shown.replace('|', '/')} | {'yes' if finished else 'no'} | {'yes' if usable else 'no'} |")
    return 0 if all(r[2] and r[3] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
