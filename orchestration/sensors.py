"""New data flows in: a sensor registers files dropped into ATLAS_HOME/incoming as chunk partitions of the
home's corpus, through the same registration as `latent-atlas run`."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg

from latent_atlas.data.corpus import NpzPlan
from latent_atlas.data.dimensions import EXPECTED, corpus_dimension, npz_header_problem
from latent_atlas.data.documents import TEXT_SUFFIXES
from latent_atlas.data.errors import CorpusMismatchError, DimensionError
from latent_atlas.data.home_corpus import home_corpora
from latent_atlas.data.manifests import all_manifests, read_manifest, source_identity
from latent_atlas.data.paths import incoming_dir
from orchestration.jobs import chunk_job
from assets.partitions import chunks
from resources import CorpusResource, ModelResource


def _fingerprint(path: Path) -> str:
    stat = path.stat()
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def incoming_source(corpus: CorpusResource, source: str) -> CorpusResource:
    """The incoming folder as a source of the home's corpus: its files join that corpus under its name (a
    home holds one corpus); in an empty home they start one named after the folder ('incoming'). A d the
    user set for the home's NPZ corpus (--expected-dim) stays set: the sensor's resource does not know it."""
    held = home_corpora()
    name = held[0].name if len(held) == 1 else corpus.name
    record = corpus_dimension(name) if name else None
    expected_dim = record[0] if record and record[1] == EXPECTED else corpus.expected_dim
    return CorpusResource(**{**corpus.model_dump(), "source": source, "path": str(incoming_dir()), "name": name,
                             "expected_dim": expected_dim})


def _chunks_holding(path: str) -> list[str]:
    """The registered chunks made of file `path` (what a duplicate of it would have duplicated)."""
    return sorted(key for key, plan in all_manifests().items()
                  if (plan.path == path if isinstance(plan, NpzPlan) else any(d.path == path for d in plan.documents)))


def register_files(files: list[Path], source: CorpusResource, model: ModelResource) -> tuple[list[str], list[str]]:
    """Register `files` as `latent-atlas run` registers a source; returns the keys to run and one line per
    file refused or skipped. An NPZ file whose header shows it unreadable or of another d than the corpus's
    is named here rather than requested, so its run does not fail where no one looks."""
    try:
        tokenizer = model.tokenizer() if source.source == "files" else None
        report = source.registration(tokenizer, model.name, files)
    except (CorpusMismatchError, DimensionError) as exc:
        return [], [f"skipped {', '.join(p.name for p in files)}: {exc}"]
    lines = [f"skipped {path}: {problem}" for path, problem in report.refused.items()]
    lines += [f"skipped {path}: duplicate of {other} (chunk {', '.join(_chunks_holding(other)) or '?'})"
              for path, other in report.duplicates.items()]
    lines += [f"{path} registered as {key}: its name collides with another file's key"
              for path, key in report.renamed.items()]
    keys = []
    for key in report.written:
        plan = read_manifest(key)
        problem = (npz_header_problem(plan.path, source.npz_activations_key, corpus_dimension(plan.corpus))
                   if isinstance(plan, NpzPlan) else None)
        if problem:
            lines.append(f"skipped {plan.path}: {problem}")
        else:
            keys.append(key)
    return keys, lines


@dg.sensor(job=chunk_job, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING)
def incoming_chunks(context: dg.SensorEvaluationContext, corpus: CorpusResource, model: ModelResource):
    """Watch ATLAS_HOME/incoming for new .npz chunks and text files; register them as `latent-atlas run`
    does (the home's corpus, its d, duplicates, text deduplicated), add partitions and request a run per new
    chunk. Each file refused or skipped is named in the tick's log, and in its skip reason when nothing runs.
    The cursor remembers every file seen (by size and mtime), so nothing is requested twice; a file that
    changes is registered again."""
    seen: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
    folder = incoming_dir()
    folder.mkdir(parents=True, exist_ok=True)
    new = sorted(
        p for p in folder.iterdir()
        if p.is_file() and p.suffix in (".npz", *TEXT_SUFFIXES) and seen.get(p.name) != _fingerprint(p)
    )
    if not new:
        return dg.SkipReason(f"no new files in {folder}")
    keys, lines = [], []
    npz, text = [p for p in new if p.suffix == ".npz"], [p for p in new if p.suffix != ".npz"]
    for source, files in (("npz", npz), ("files", text)):
        if files:  # NPZ first: in an empty home they decide its corpus, and text beside them is refused
            more_keys, more_lines = register_files(files, incoming_source(corpus, source), model)
            keys, lines = keys + more_keys, lines + more_lines
    for line in lines:
        context.log.warning(line)
    seen.update({p.name: _fingerprint(p) for p in new})
    # The run key carries the chunk's source as it is on disk: a changed file reruns, an unchanged one never.
    run_requests = [dg.RunRequest(partition_key=key, run_key=f"{key}@{source_identity(key)}") for key in keys]
    return dg.SensorResult(
        run_requests=run_requests,
        dynamic_partitions_requests=[chunks.build_add_request(keys)] if keys else [],
        cursor=json.dumps(seen, sort_keys=True),
        skip_reason=None if keys else "; ".join(lines) or f"no new chunks in {folder}",
    )
