"""A stage's run records its inputs fingerprint from inside the run, whoever launched it.

`latent-atlas run` tags its runs with the fingerprint when it launches them (orchestration.pipeline);
a run the daemon launches (a backfill from the UI, a sensor's request, a re-execution) carries none, and
without one orchestration.freshness could not tell its outputs are up to date: the next `latent-atlas
run` would redo them. So the IO managers call `record_fingerprint` as a run stores its first output:
a run that materializes exactly one stage (one chunk partition of a per-chunk stage, or a global stage)
computes the fingerprint the CLI would have given it and adds it to its tags (instance.add_run_tags),
before its materialization events are written. Its upstream materializations count as of the run's
start: when one was made again while the run computed, what it read is unknown and it records nothing
(it then runs again next time, the conservative side).
"""

from __future__ import annotations

from dataclasses import dataclass

import dagster as dg

from orchestration.freshness import FINGERPRINT_TAG, ChangedDuringRun, stage_fingerprint

_RECORDED: set[str] = set()  # run ids this process tagged (or found tagged): one look-up per run


@dataclass(frozen=True)
class RunDefinitions:
    """What stage_fingerprint reads of the Definitions, as a run has them: the whole asset graph and the
    configured resources (a run executed in process has no repository to ask)."""

    graph: object
    resources: dict

    def resolve_asset_graph(self):
        return self.graph

    @classmethod
    def of(cls, job_def: dg.JobDefinition) -> RunDefinitions:
        # A ConfigurableResource becomes a resource definition whose function is a method of the configured
        # object (Dagster 1.13): its fields are what the CLI's fingerprint hashes (Definitions.resources).
        configured = {name: getattr(r.resource_fn, "__self__", None) for name, r in job_def.resource_defs.items()}
        return cls(job_def.asset_layer.asset_graph.source_asset_graph,
                   {name: own for name, own in configured.items() if hasattr(own, "model_dump")})


def record_fingerprint(context: dg.OutputContext) -> str | None:
    """Tag the context's run with its stage's inputs fingerprint unless it has one; returns the tag, or
    None where the run is not one stage (a refit over a partition range, a hand-picked asset subset)."""
    step = context.step_context
    run, instance = step.dagster_run, step.instance
    if run.run_id in _RECORDED or FINGERPRINT_TAG in run.tags:
        return run.tags.get(FINGERPRINT_TAG)
    defs = RunDefinitions.of(step.job_def)
    selected = run.asset_selection or step.job_def.asset_layer.selected_asset_keys
    names = tuple(sorted(k.to_user_string() for k in selected))
    stage = _stage_kind(defs, names)
    partition = run.tags.get("dagster/partition")
    if stage is None or stage != (partition is not None):  # not a stage, or not one partition of a per-chunk one
        _RECORDED.add(run.run_id)
        return None
    record = instance.get_run_record_by_id(run.run_id)
    try:
        fingerprint = stage_fingerprint(defs, instance, names, partition, run.run_config or {},
                                        (record.start_time or record.create_timestamp.timestamp()) if record else None)
    except ChangedDuringRun as exc:
        context.log.warning(f"no inputs fingerprint recorded: {exc}; the next `latent-atlas run` redoes this stage")
        _RECORDED.add(run.run_id)
        return None
    instance.add_run_tags(run.run_id, {FINGERPRINT_TAG: fingerprint})
    _RECORDED.add(run.run_id)
    return fingerprint


def _stage_kind(defs: RunDefinitions, names: tuple[str, ...]) -> bool | None:
    """Whether the assets `names` are all per chunk (True) or all global (False); None when mixed.

    Any such set counts as a stage, not only the stages of the whole graph: `latent-atlas run --until`
    splits the graph into other stages. The fingerprint of a set hashes the identity of its upstream
    (outside it), so a stage S the CLI asks about matches a run of another set R only when both have
    the same upstream, and then every asset of S that R made was made from what S would read.
    """
    graph = defs.resolve_asset_graph()
    kinds = {graph.get(dg.AssetKey(name)).partitions_def is not None for name in names}
    return kinds.pop() if len(kinds) == 1 else None
