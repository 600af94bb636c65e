"""The nightly refit runs only when chunks landed since the last fit, and refits whitening, every
chunk's whitened activations and the centroids together in one run over all chunk partitions."""

import dagster as dg
import numpy as np

from orchestration.definitions import build_definitions
from orchestration.jobs import stages_of
from orchestration.pipeline import register_partitions, run_stages
from orchestration.schedules import last_fit_config, nightly_refit
from resources import CorpusResource, ModelResource
from tests.conftest import write_planted_chunk, write_planted_corpus, write_seed_npz

CONFIG = {"centroids": {"n_clusters": 4, "n_epochs": 2}}


def evaluate(instance):
    return nightly_refit(dg.build_schedule_context(instance=instance))


def chunk_bytes(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_refit_waits_for_new_chunks_and_refits_whitening_and_centroids_together(atlas_home, tmp_path):
    folder = write_planted_corpus(tmp_path / "corpus", 3)
    corpus = CorpusResource(source="npz", path=str(folder))
    defs = build_definitions(corpus=corpus, model=ModelResource(name="minilm-l6"))
    stages = stages_of(defs, ["centroids"])
    with dg.instance_for_test(temp_dir=str(atlas_home / "dagster")) as instance:
        assert evaluate(instance).skip_message == "no chunk has activations yet"
        assert last_fit_config(instance) == {}  # no fit yet: a first refit takes the assets' defaults
        keys = corpus.register(None, "")
        register_partitions(instance, keys)
        run_stages(defs, instance, keys, stages, log=lambda _: None, asset_config=CONFIG)
        skipped = evaluate(instance)
        assert isinstance(skipped, dg.SkipReason) and skipped.skip_message.startswith("no chunk landed since the last fit")

        write_planted_chunk(folder, 3)  # a chunk lands (its per-chunk inputs run, the global fits do not) ...
        write_seed_npz(folder / "part4.npz", n_seq=4, seq_len=16, dim=16, seed=4)  # ... and one of another d fails
        keys = corpus.register(None, "")
        new = sorted(set(keys) - set(instance.get_dynamic_partitions("chunks")))
        register_partitions(instance, keys)
        inputs = [s for s in stages if "activations" in s[0]]
        landing = run_stages(defs, instance, new, inputs, log=lambda _: None, asset_config=CONFIG)
        good, bad = [k for k in keys if k not in landing.failed], list(landing.failed)
        assert len(bad) == 1 and bad[0].endswith("part4")
        request = evaluate(instance)
        assert isinstance(request, dg.RunRequest), request
        assert request.tags["dagster/asset_partition_range_start"] == keys[0]
        assert request.tags["dagster/asset_partition_range_end"] == keys[-1]
        assert request.tags["latent-atlas/landed_chunks"] == sorted(set(new) - set(bad))[0]

        refit_job = defs.resolve_job_def("refit_job")
        pending = instance.create_run_for_job(refit_job, status=dg.DagsterRunStatus.NOT_STARTED, tags=request.tags)
        assert evaluate(instance).skip_message == f"refit run {pending.run_id} is still in progress"
        instance.delete_run(pending.run_id)

        assert request.run_config == {"ops": {"centroids": {"config": CONFIG["centroids"]}}}  # the last fit's k
        refit = refit_job.execute_in_process(instance=instance, tags=request.tags, run_config=request.run_config)
        assert refit.success
        materialized = {(e.asset_key.to_user_string(), e.partition) for e in refit.get_asset_materialization_events()}
        assert materialized == {("whitening", None), ("centroids", None), *(("whitened_activations", k) for k in keys)}
        pages = {e.partition: e.step_materialization_data.materialization.metadata
                 for e in refit.get_asset_materialization_events() if e.asset_key == dg.AssetKey("whitened_activations")}
        assert pages[bad[0]]["left_out"].value == "no materialized activations"
        assert all("token_norms" in pages[k] and "left_out" not in pages[k] for k in good)
        assert not (atlas_home / "tensors" / "whitened_activations" / bad[0]).exists()
        fit = instance.get_latest_materialization_event(dg.AssetKey("centroids")).asset_materialization
        assert fit.metadata["chunks"].value == 4
        assert evaluate(instance).skip_message.startswith("no chunk landed since the last fit")

        # The range run wrote each chunk's whitened activations as a one-partition run does, byte for byte.
        whitened = atlas_home / "tensors" / "whitened_activations"
        from_refit = {k: chunk_bytes(whitened / k) for k in good}
        one = [s for s in stages if s[0] == ("whitened_activations",)]
        run_stages(defs, instance, good, one, log=lambda _: None, skip_up_to_date=False)
        assert {k: chunk_bytes(whitened / k) for k in good} == from_refit
        assert not np.isnan(np.load(whitened / new[0] / "activations.npy")).any()
        assert {r.status for r in instance.get_runs() if r.job_name == "refit_job"} == {dg.DagsterRunStatus.SUCCESS}
