"""New data flows in: a sensor registers files dropped into ATLAS_HOME/incoming as chunk partitions."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg

from latent_atlas.data.documents import TEXT_SUFFIXES, TextSource
from latent_atlas.data.errors import ChunkError
from latent_atlas.data.manifests import Registration, register_npz, register_text
from latent_atlas.data.paths import incoming_dir
from orchestration.jobs import chunk_job
from assets.partitions import chunks
from resources import CorpusResource, ModelResource


def _fingerprint(path: Path) -> str:
    stat = path.stat()
    return f"{stat.st_size}:{stat.st_mtime_ns}"


@dg.sensor(job=chunk_job, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING)
def incoming_chunks(context: dg.SensorEvaluationContext, corpus: CorpusResource, model: ModelResource):
    """Watch ATLAS_HOME/incoming for new .npz chunks and text files; add partitions and request a
    run per new partition. The cursor remembers every file seen (by size and mtime), so nothing is
    requested twice; a file that changes is registered again."""
    seen: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
    folder = incoming_dir()
    folder.mkdir(parents=True, exist_ok=True)
    new = sorted(
        p for p in folder.iterdir()
        if p.is_file() and p.suffix in (".npz", *TEXT_SUFFIXES) and seen.get(p.name) != _fingerprint(p)
    )
    if not new:
        return dg.SkipReason(f"no new files in {folder}")
    run_requests = []
    for path in new:
        fingerprint = _fingerprint(path)
        try:
            if path.suffix == ".npz":
                keys = register_npz([path], corpus.npz_keys().__dict__)
            else:
                report = Registration()
                keys = register_text(TextSource(files=[path]), model.tokenizer(), path.stem,
                                     corpus.sequence_length, corpus.sequences_per_chunk, model.name, report=report)
                if report.refused:  # unreadable: logged and skipped, as a file that cannot be listed always was
                    raise ChunkError(path, next(iter(report.refused.values())))
        except ChunkError as exc:
            context.log.error(f"skipped {exc}")  # a bad file must not block the others
            keys = []
        seen[path.name] = fingerprint
        # The run key carries the file's fingerprint: a changed file reruns, an unchanged one never.
        run_requests += [dg.RunRequest(partition_key=key, run_key=f"{key}@{fingerprint}") for key in keys]
    added = [r.partition_key for r in run_requests]
    return dg.SensorResult(
        run_requests=run_requests,
        dynamic_partitions_requests=[chunks.build_add_request(added)] if added else [],
        cursor=json.dumps(seen, sort_keys=True),
    )
