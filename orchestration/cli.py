"""`latent-atlas`: run the demo or your own data, remove a chunk, show status, analyze a sentence, steer the
model, write synthetic chunks."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

from orchestration.instance import fail_orphaned_runs, runs_in_progress, use_atlas_home
from orchestration.stop import STOP, Stopped, stop_on_sigterm

META_MAX_TOKENS = 160  # analyze --llm local: room for a 3-5 sentence interpretation
# Hugging Face's progress bars (weight loading, the one-time GGUF dequantization) would print as \r-joined
# text between our progress lines.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TQDM_DISABLE", "1")


def _stages(defs, steering: bool, until: list[str] | None = None):
    """The whole graph's stages; without `steering`, all but steering_eval, which generates text
    for every top cluster (minutes on CPU) and so runs on request only. With `until`, only those
    assets and their upstreams."""
    from orchestration.jobs import ON_REQUEST, stages_of

    if until:
        return stages_of(defs, until)
    names = [k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()]
    if not steering:
        print(f"{ON_REQUEST} not run: add --steering, or materialize it in the UI")
    return stages_of(defs, names if steering else [n for n in names if n != ON_REQUEST])


def _asset_config(args: argparse.Namespace) -> dict[str, dict]:
    """Run config of the assets the command line sets: the number of clusters."""
    return {"centroids": {"n_clusters": args.clusters}}


def _recover_from_kills(instance, home: Path) -> None:
    """Mark failed the runs whose process was killed, then delete the temp files of killed writes.

    A temp file is a killed write's when it is old, or at once when no run of this home is in progress
    any more: the pipeline writes inside its runs, and a rerun right after a kill -9 must not leave the
    killed write's file behind for the next 15 minutes.
    """
    from latent_atlas.data.atomic import remove_stale_temp_files

    for run_id in fail_orphaned_runs(instance):
        print(f"marked run {run_id} failed: its process was killed")
    in_progress = runs_in_progress(instance, limit=1)
    for path in remove_stale_temp_files(home, **({} if in_progress else {"min_age_s": 0.0})):
        print(f"removed a killed write's temp file: {path}")


def _demo(args: argparse.Namespace) -> int:
    home = use_atlas_home(args.home)
    import dagster as dg

    from orchestration.definitions import build_definitions
    from orchestration.home_resources import record_home_resources
    from orchestration.pipeline import register_partitions, run_stages
    from resources import CorpusResource, ModelResource

    per_category = 0 if args.full else args.documents_per_category
    skip = {} if args.skip_first is None else {"skip_first_positions": args.skip_first}
    corpus = CorpusResource(documents_per_category=per_category, sequences_per_chunk=args.sequences_per_chunk, **skip)
    model = ModelResource(name=args.model, layer=args.layer)
    defs = build_definitions(corpus=corpus, model=model)
    record_home_resources(defs, home)  # the code location of the UI and the daemon builds the same
    instance = dg.DagsterInstance.get()
    started = time.perf_counter()
    print(f"latent-atlas demo: {args.model} on BBC News "
          f"({'all articles' if args.full else f'{per_category} articles per category'}), ATLAS_HOME={home}")
    _recover_from_kills(instance, home)
    from latent_atlas.data.errors import CorpusMismatchError

    try:
        keys = corpus.register(model.tokenizer(), model.name)
    except CorpusMismatchError as exc:
        print(f"latent-atlas demo: {exc}", file=sys.stderr)
        return 2
    register_partitions(instance, keys)
    print(f"registered {len(keys)} chunk partitions ({keys[0]} .. {keys[-1]})")
    report = run_stages(defs, instance, keys, _stages(defs, args.steering), asset_config=_asset_config(args))
    from orchestration.status import final_summary

    print("\n".join(final_summary(defs, instance, home, report.keys, len(report.failed), time.perf_counter() - started)))
    return 1 if report.failed else 0


def _run(args: argparse.Namespace) -> int:
    """The whole pipeline on the user's own data: a folder of NPZ chunks or text files."""
    home = use_atlas_home(args.home)
    import dagster as dg

    from orchestration.definitions import build_definitions
    from orchestration.home_resources import record_home_resources
    from orchestration.pipeline import register_partitions, run_stages
    from resources import CorpusResource, ModelResource

    source = {"source": "npz", "path": args.npz} if args.npz else {"source": "files", "path": args.files}
    corpus = CorpusResource(**source, name=args.name, sequences_per_chunk=args.sequences_per_chunk,
                            expected_dim=args.expected_dim, already_whitened=args.already_whitened)
    model = ModelResource(name=args.model, layer=args.layer)
    defs = build_definitions(corpus=corpus, model=model)
    record_home_resources(defs, home)  # the code location of the UI and the daemon builds the same
    instance = dg.DagsterInstance.get()
    started = time.perf_counter()
    _recover_from_kills(instance, home)
    print(f"latent-atlas run: {source['source']} {source['path']} as corpus {corpus.corpus_name()!r}, ATLAS_HOME={home}")
    from latent_atlas.data.errors import CorpusMismatchError, DimensionError

    try:  # the registration the incoming sensor uses too (orchestration.sensors)
        registration = corpus.registration(None if args.npz else model.tokenizer(), model.name)
    except (FileNotFoundError, DimensionError, CorpusMismatchError) as exc:
        print(f"latent-atlas run: {exc}", file=sys.stderr)
        return 2
    for line in registration.warnings():
        print(f"warning: {line}")
    if registration.dimension:
        dim, basis = registration.dimension
        print(f"activations' dimension d={dim} ({'--expected-dim' if args.expected_dim else basis}); "
              f"files of another d are refused")
    if not registration.keys:
        print("latent-atlas run: nothing to run (no usable files)", file=sys.stderr)
        return 1
    unknown = sorted(set(args.until or []) - {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()})
    if unknown:
        print(f"latent-atlas run: --until {' '.join(unknown)}: no such asset", file=sys.stderr)
        return 2
    register_partitions(instance, registration.keys)
    print(f"registered {len(registration.keys)} chunk partitions ({registration.keys[0]} .. {registration.keys[-1]})")
    try:
        report = run_stages(defs, instance, registration.keys, _stages(defs, args.steering, args.until),
                            asset_config=_asset_config(args), workers=args.workers)
    except RuntimeError as exc:
        print(f"latent-atlas run: {exc}", file=sys.stderr)
        return 1
    from orchestration.status import final_summary

    problems = report.problem_lines() + [f"  {line}" for line in registration.warnings()]
    if problems:
        print("problems (fix or delete the file, then `latent-atlas remove-chunk KEY`):\n" + "\n".join(problems))
    print("\n".join(final_summary(defs, instance, home, report.keys, len(report.failed), time.perf_counter() - started)))
    return 1 if report.failed or registration.refused else 0


def _remove_chunk(args: argparse.Namespace) -> int:
    """Delete a chunk partition, its manifest and its per-chunk outputs, so the home works again."""
    use_atlas_home(args.home)
    import dagster as dg

    from latent_atlas.data.manifests import remove_chunk
    from assets.partitions import chunks

    instance = dg.DagsterInstance.get()
    known = instance.has_dynamic_partition(chunks.name, args.key)
    removed = remove_chunk(args.key)
    if not known and not removed:
        print(f"latent-atlas remove-chunk: no chunk {args.key!r} in this ATLAS_HOME", file=sys.stderr)
        return 2
    if known:
        instance.delete_dynamic_partition(chunks.name, args.key)
    print(f"removed chunk {args.key}: partition {'deleted' if known else 'was not registered'}, {len(removed)} files")
    print("rerun `latent-atlas run ...` (or materialize the global assets) to refit without it")
    return 0


def _status(args: argparse.Namespace) -> int:
    home = use_atlas_home(args.home)
    import dagster as dg

    from orchestration.definitions import defs
    from assets.partitions import chunks
    from orchestration.status import summary_lines

    instance = dg.DagsterInstance.get()
    print("\n".join(summary_lines(defs, instance, home, instance.get_dynamic_partitions(chunks.name))))
    return 0


def _ui(args: argparse.Namespace) -> int:
    """The Dagster UI on this ATLAS_HOME's instance (sensors and schedules run with it)."""
    use_atlas_home(args.home)
    root = Path(__file__).resolve().parents[1]
    dagster = Path(sys.executable).with_name("dagster")
    os.execv(str(dagster), [str(dagster), "dev", "-w", str(root / "workspace.yaml"), "-p", str(args.port)])


def _chat_client(name: str, home: Path):
    """The chat client for --llm, or None (then the meta-interpretation is the deterministic summary)."""
    if name == "none":
        return None
    from latent_atlas.data.paths import model_cache_dir

    try:
        from latent_atlas.labels.llm import LocalChatClient  # lazily: it loads a second model
    except ImportError as exc:
        print(f"latent-atlas analyze: no local LLM client ({exc}); showing the deterministic summary", file=sys.stderr)
        return None
    # a few sentences need more room than the labeler's default cap on new tokens
    return LocalChatClient(cache_dir=model_cache_dir(home), max_new_tokens=META_MAX_TOKENS)


def _analyze(args: argparse.Namespace) -> int:
    """Per-token clusters, labels and confidences of one sentence (read-only on ATLAS_HOME)."""
    from latent_atlas.reading.sentences import SentenceAnalyzer, table, to_json

    try:
        analyzer = SentenceAnalyzer(args.home or None, top=args.top)
    except FileNotFoundError as exc:
        print(f"latent-atlas analyze: {exc}", file=sys.stderr)
        return 2
    rows = analyzer.analyze_sentence(args.sentence)
    wants_meta = args.meta or args.llm != "none"
    client = _chat_client(args.llm, analyzer.home) if wants_meta else None
    meta = analyzer.interpret_with_meta_model(args.sentence, client, rows, META_MAX_TOKENS) if wants_meta else None
    if args.json and meta is not None:
        print(json.dumps({"tokens": json.loads(to_json(rows)), "meta_interpretation": meta}, indent=1, ensure_ascii=False))
    elif args.json:
        print(to_json(rows))
    else:
        print(table(rows))
        if not analyzer.labels:
            print(f"(no labels under {analyzer.home / 'labels' / 'clusters'} yet: materialize cluster_labels)")
        if meta is not None:
            print("\n" + meta)
    return 0


def _steer(args: argparse.Namespace) -> int:
    """Unsteered and steered greedy continuations of a prompt, side by side (read-only on ATLAS_HOME)."""
    import textwrap

    from latent_atlas.steering.vectors import Steerer

    try:
        steerer = Steerer(args.home or None)
    except FileNotFoundError as exc:
        print(f"latent-atlas steer: {exc}", file=sys.stderr)
        return 2
    result = steerer.steer(args.prompt, args.cluster, args.alpha, args.kind, args.from_position, args.max_new_tokens)
    width = 48
    left, right = textwrap.wrap(result.unsteered, width) or [""], textwrap.wrap(result.steered, width) or [""]
    print(f"prompt: {result.prompt}")
    print(f"cluster {result.cluster}, {result.kind} vector x {result.alpha:g} (natural scale) at layer "
          f"{steerer.vectors.layer}, from position {result.from_position}")
    print(f"{'unsteered':<{width}} | steered")
    print(f"{'-' * width}-+-{'-' * width}")
    for i in range(max(len(left), len(right))):
        print(f"{left[i] if i < len(left) else '':<{width}} | {right[i] if i < len(right) else ''}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from latent_atlas.clustering.model import ClusteringConfig  # the library's defaults are the CLI's

    parser = argparse.ArgumentParser(prog="latent-atlas", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the whole pipeline on the embedded default (SmolLM2 on BBC News)")
    demo.add_argument("--full", action="store_true", help="all 2,225 articles instead of a sample per category")
    demo.add_argument("--documents-per-category", type=int, default=40, help="articles per category (default 40)")
    demo.add_argument("--sequences-per-chunk", type=int, default=128, help="sequences per chunk partition")
    demo.add_argument("--model", default="smollm2-135m", help="smollm2-135m (default) or minilm-l6")
    demo.add_argument("--layer", type=int, default=0, help="residual stream layer (0 = middle)")
    demo.add_argument("--skip-first", type=int, default=None,
                      help="leave the first N positions of every window out of the analysis (default: the corpus default)")
    demo.add_argument("--clusters", type=int, default=64,
                      help="number of clusters k (default 64: ~1,400 tokens each in the default demo's ~90k)")
    demo.add_argument("--steering", action="store_true", help="also run steering_eval (generates text: minutes)")
    demo.add_argument("--home", default="", help="ATLAS_HOME (default $ATLAS_HOME or ./.atlas)")
    demo.set_defaults(func=_demo)
    run = sub.add_parser("run", help="the whole pipeline on your own data: NPZ chunks or text files")
    data = run.add_mutually_exclusive_group(required=True)
    data.add_argument("--npz", default="", help="a folder of seed-format .npz chunks (one chunk per file)")
    data.add_argument("--files", default="", help="a .txt/.jsonl/.parquet file or a folder of them")
    run.add_argument("--clusters", type=int, default=ClusteringConfig.n_clusters,
                     help=f"number of clusters k (default {ClusteringConfig.n_clusters}, the library's; fewer for "
                     "small corpora: aim for at least ~1,000 tokens per cluster)")
    run.add_argument("--steering", action="store_true", help="also run steering_eval (text corpora; minutes)")
    run.add_argument("--name", default="", help="corpus name in the partition keys (default: the folder's name)")
    run.add_argument("--model", default="smollm2-135m", help="text only: smollm2-135m (default) or minilm-l6")
    run.add_argument("--layer", type=int, default=0, help="text only: residual stream layer (0 = middle)")
    run.add_argument("--sequences-per-chunk", type=int, default=256, help="text only: sequences per chunk")
    run.add_argument("--expected-dim", type=int, default=0,
                     help="NPZ only: the activations' d; files of another d are refused (default: the d more "
                          "than half of the files share, read from their headers)")
    run.add_argument("--already-whitened", action="store_true", help="NPZ only: whitening is the identity")
    run.add_argument("--until", nargs="+", default=None, metavar="ASSET",
                     help="materialize only these assets and their upstreams (e.g. --until memberships)")
    run.add_argument("--workers", type=int, default=1,
                     help="per-chunk runs at once, each in a worker process (default 1: one at a time, in this "
                          "process); with several GPUs, worker i uses GPU i")
    run.add_argument("--home", default="", help="ATLAS_HOME (default $ATLAS_HOME or ./.atlas); one atlas per home")
    run.set_defaults(func=_run)
    remove = sub.add_parser("remove-chunk", help="delete a (bad) chunk partition and its outputs")
    remove.add_argument("key", help="the partition key, e.g. mydata-part7")
    remove.add_argument("--home", default="", help="ATLAS_HOME (default $ATLAS_HOME or ./.atlas)")
    remove.set_defaults(func=_remove_chunk)
    status = sub.add_parser("status", help="partitions and what is materialized")
    status.add_argument("--home", default="")
    status.set_defaults(func=_status)
    ui = sub.add_parser("ui", help="open the Dagster UI (dagster dev) on this ATLAS_HOME")
    ui.add_argument("--home", default="")
    ui.add_argument("--port", type=int, default=3000)
    ui.set_defaults(func=_ui)
    analyze = sub.add_parser("analyze", help="which clusters each token of a sentence falls into, with labels")
    analyze.add_argument("sentence", help='the text to analyze, e.g. "The quick brown fox jumps over the lazy dog."')
    analyze.add_argument("--home", default="", help="ATLAS_HOME (default $ATLAS_HOME or ./.atlas)")
    analyze.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    analyze.add_argument("--top", type=int, default=2, help="clusters per token (default 2)")
    analyze.add_argument("--meta", action="store_true", help="add a meta-interpretation of the whole sentence")
    analyze.add_argument("--llm", choices=["none", "local"], default="none",
                         help="who writes the meta-interpretation: 'none' (a deterministic summary of the table) or "
                              "'local' (SmolLM2-Instruct; implies --meta)")
    analyze.set_defaults(func=_analyze)
    steer = sub.add_parser("steer", help="continue a prompt with and without a cluster's steering vector")
    steer.add_argument("prompt", help='the text to continue, e.g. "The government said"')
    steer.add_argument("--cluster", type=int, required=True, help="the cluster whose vector is added")
    steer.add_argument("--alpha", type=float, default=0.5,
                       help="multiple of the vector's natural scale (default 0.5; the demo's KL budget of 0.5 nats holds to ~0.5)")
    steer.add_argument("--kind", choices=["lda", "mean"], default="lda",
                       help="the LDA vector (default) or the difference of means")
    steer.add_argument("--from-position", type=int, default=0,
                       help="add the vector from this token position on (default 0: every position)")
    steer.add_argument("--max-new-tokens", type=int, default=24, help="greedy tokens generated (default 24)")
    steer.add_argument("--home", default="", help="ATLAS_HOME (default $ATLAS_HOME or ./.atlas)")
    steer.set_defaults(func=_steer)
    synthetic = sub.add_parser("synthetic", help="write seed-format NPZ chunks from a known mixture",
                               add_help=False)
    synthetic.set_defaults(func=None)
    stop_on_sigterm()
    args, rest = parser.parse_known_args(argv)
    if args.command == "synthetic":
        from latent_atlas.data.synthetic import main as synthetic_main

        return synthetic_main(rest)
    try:
        return args.func(args)
    except Stopped as exc:
        print(f"latent-atlas {args.command}: {exc}", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        if not STOP.is_set():
            raise
        print(f"latent-atlas {args.command}: stopped (SIGTERM) between runs; rerun to continue", file=sys.stderr)
        return 128 + signal.SIGTERM


if __name__ == "__main__":
    sys.exit(main())
