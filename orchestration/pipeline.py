"""Materialize the asset graph stage by stage on a persistent Dagster instance (demo, scripts, tests).

The same assets the UI materializes; per-chunk stages run once per partition, global stages once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import dagster as dg

from orchestration.partitions import chunks

Stage = tuple[tuple[str, ...], bool]  # (asset names, per chunk?)


def stages_of(defs: dg.Definitions, targets: list[str] | None = None) -> list[Stage]:
    """Stages in dependency order, read off the asset graph (only `targets` and their upstreams, if given).

    Each stage is a maximal set of assets of one kind (per chunk or global) whose upstreams are
    done: per-chunk chains such as token_chunks -> activations run together, one run per chunk.
    """
    graph = defs.resolve_asset_graph()
    if targets:
        keys = set(dg.AssetSelection.assets(*targets).upstream().resolve(graph))
    else:
        keys = set(graph.get_all_asset_keys())
    per_chunk = {k: graph.get(k).partitions_def is not None for k in keys}
    deps = {k: set(graph.get(k).parent_keys) & keys for k in keys}
    done: set = set()
    stages: list[Stage] = []
    while len(done) < len(keys):
        ready = [k for k in keys - done if deps[k] <= done]
        kind = any(per_chunk[k] for k in ready)
        stage = {k for k in ready if per_chunk[k] == kind}
        grown = True
        while grown:  # pull in same-kind descendants whose upstreams are now all available
            more = {k for k in keys - done - stage if per_chunk[k] == kind and deps[k] <= done | stage}
            grown = bool(more)
            stage |= more
        stages.append((tuple(sorted(k.to_user_string() for k in stage)), kind))
        done |= stage
    return stages


@dataclass
class PipelineReport:
    keys: list[str]
    failed: dict[str, str] = field(default_factory=dict)  # partition key -> error
    seconds: dict[str, float] = field(default_factory=dict)  # stage -> wall time


def register_partitions(instance: dg.DagsterInstance, keys: list[str]) -> None:
    new = [k for k in keys if not instance.has_dynamic_partition(chunks.name, k)]
    if new:
        instance.add_dynamic_partitions(chunks.name, new)


def run_stages(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    keys: list[str],
    stages: list[Stage] | None = None,
    log: Callable[[str], None] = print,
) -> PipelineReport:
    """Materialize each stage; a chunk that fails is reported and skipped by later stages."""
    report = PipelineReport(keys)
    for names, per_chunk in stages or stages_of(defs):
        start = time.perf_counter()
        selection = dg.AssetSelection.assets(*names)
        for key in ([k for k in keys if k not in report.failed] if per_chunk else [None]):
            result = dg.materialize(
                list(defs.assets), instance=instance, resources=defs.resources, partition_key=key,
                selection=selection, raise_on_error=False,
            )
            if not result.success:
                error = _first_error(result)
                if key is None:
                    raise RuntimeError(f"stage {names} failed: {error}")
                report.failed[key] = error
                log(f"  chunk {key} failed: {error}")
        report.seconds["+".join(names)] = time.perf_counter() - start
        log(f"  {'+'.join(names)}: {report.seconds['+'.join(names)]:.1f} s")
    return report


def _first_error(result) -> str:
    """The root cause of the first failed step, e.g. 'ChunkError: <file>: <problem>'."""
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data and event.step_failure_data.error:
            error = event.step_failure_data.error
            while error.cause is not None:
                error = error.cause
            return f"{error.cls_name}: {error.message.strip().splitlines()[-1].split(': ', 1)[-1]}"
    return "failed"
