"""`latent-atlas run --workers N`: a per-chunk stage's runs, N at once, each in a worker process.

One run is one chunk of one stage, as without workers: the same job, run config and fingerprint tag
(computed by the parent, which also decides what is up to date), executed by a worker with
execute_in_process against the same instance (SQLite serializes the writers; PostgreSQL takes them
at once). The workers live for the whole pipeline, so Python, torch and the definitions are imported
once per worker, not once per run. On a machine with several GPUs worker i sees only GPU i (mod the
count), through CUDA_VISIBLE_DEVICES set before anything imports torch.
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
from concurrent.futures import Future, ProcessPoolExecutor

import dagster as dg

# The resources build_definitions takes: a worker rebuilds the definitions from their fields.
RESOURCES = ("corpus", "model", "device", "compute", "labeler")


def gpu_assignment(workers: int, visible: list[str]) -> list[str | None]:
    """The CUDA_VISIBLE_DEVICES of each worker: with several GPUs, worker i gets visible[i % len(visible)];
    with one or none, None (the worker keeps the parent's view)."""
    return [visible[i % len(visible)] if len(visible) > 1 else None for i in range(workers)]


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES names them (their indices when unset)."""
    named = os.environ.get("CUDA_VISIBLE_DEVICES")
    if named is not None:
        return [d for d in named.split(",") if d.strip() and d.strip() != "-1"]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        return []


class ChunkWorkers:
    """A pool of `count` worker processes running per-chunk stage runs of `defs` on `instance`."""

    def __init__(self, defs: dg.Definitions, instance: dg.DagsterInstance, count: int):
        unknown = set(defs.resources or {}) - set(RESOURCES) - {"parquet_io_manager", "tensor_io_manager"}
        if unknown:
            raise ValueError(f"--workers rebuilds the definitions with build_definitions; these resources it "
                             f"would not have: {sorted(unknown)}")
        self.spec = {name: (f"{type(r).__module__}:{type(r).__name__}", r.model_dump())
                     for name, r in (defs.resources or {}).items() if name in RESOURCES}
        self.instance_ref = instance.get_ref()
        context = multiprocessing.get_context("spawn")  # no forked copy of the parent's Dagster/torch state
        gpus = context.Queue()
        for gpu in gpu_assignment(count, visible_gpus()):
            gpus.put(gpu)
        self.pool = ProcessPoolExecutor(count, mp_context=context, initializer=_start_worker, initargs=(gpus,))

    def submit(self, names: tuple[str, ...], key: str, run_config: dict, tags: dict) -> Future:
        """A future of the run's outcome: {'run_id', 'success', 'error', 'pid', 'gpu'}."""
        return self.pool.submit(_run_chunk, self.spec, self.instance_ref, names, key, run_config, tags)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


_STATE: dict = {}  # in a worker: its GPU, and its definitions and instance, made by its first run


def _start_worker(gpus) -> None:
    gpu = gpus.get()
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
        _STATE["gpu"] = gpu


def _run_chunk(spec: dict, instance_ref, names: tuple[str, ...], key: str, run_config: dict, tags: dict) -> dict:
    from orchestration.pipeline import _first_error, _stage_job_defs

    if "defs" not in _STATE:
        from orchestration.definitions import build_definitions

        _STATE["defs"] = build_definitions(**{name: _resource(*spec[name]) for name in spec})
        _STATE["instance"] = dg.DagsterInstance.from_ref(instance_ref)
    job = _stage_job_defs(_STATE["defs"], [(names, True)])[names]
    result = job.execute_in_process(instance=_STATE["instance"], partition_key=key, raise_on_error=False,
                                    run_config=run_config, tags=tags)
    return {"run_id": result.run_id, "success": result.success, "pid": os.getpid(),
            "gpu": _STATE.get("gpu"), "error": None if result.success else _first_error(result)}


def _resource(path: str, fields: dict):
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)(**fields)
