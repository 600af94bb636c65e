"""The whole project on one screen: assets, checks, resources, IO managers, jobs, sensors, schedules."""

import dagster as dg

import assets
from io_managers import ParquetIOManager, TensorIOManager
from orchestration.freshness import code_fingerprint
from orchestration.home_resources import home_resources
from orchestration.jobs import chunk_job, refit_job, stage_jobs
from orchestration.schedules import nightly_refit
from orchestration.sensors import incoming_chunks
from resources import ComputeBackendResource, CorpusResource, LabelerResource, ModelResource, TorchDeviceResource


def build_definitions(
    corpus: CorpusResource = CorpusResource(),
    model: ModelResource = ModelResource(),
    device: TorchDeviceResource = TorchDeviceResource(),
    compute: ComputeBackendResource = ComputeBackendResource(),
    labeler: LabelerResource = LabelerResource(),
    executor: dg.ExecutorDefinition = dg.in_process_executor,
) -> dg.Definitions:
    """Definitions with the given resources (the defaults are the embedded demo: SmolLM2 on BBC News).

    `executor` runs the steps of the runs the webserver and the daemon launch. In process by default:
    a chunk's run is a chain of dependent steps (token_chunks then activations), so Dagster's default
    multiprocess executor bought no parallelism and paid a second process per run that starts, imports
    and loads the code again (~6 s of a ~10 s run; benchmarks/run_overhead.py). Chunks run in parallel
    as runs (the run queue, `latent-atlas run --workers N`); docs/deployment.md passes dask_executor.
    """
    # One code version for every asset, a hash of the project's source (what freshness fingerprints):
    # Dagster's UI and data versions then see code edits, and nothing else.
    versioned = dg.map_asset_specs(lambda spec: spec.replace_attributes(code_version=code_fingerprint()),
                                   dg.load_assets_from_package_module(assets))
    graph = dg.Definitions(
        assets=versioned,
        resources={
            "corpus": corpus,
            "model": model,
            "device": device,
            "compute": compute,
            "labeler": labeler,
            "parquet_io_manager": ParquetIOManager(),
            "tensor_io_manager": TensorIOManager(),
        },
    )
    return dg.Definitions.merge(graph, dg.Definitions(
        jobs=[chunk_job, refit_job, *stage_jobs(graph)],
        sensors=[incoming_chunks],
        schedules=[nightly_refit],
        executor=executor,
    ))

# The home's own corpus and model where `latent-atlas run` recorded them (orchestration.home_resources),
# so the UI's and the daemon's runs are the CLI's runs; else the embedded demo's.
defs = build_definitions(**home_resources())
