"""A stage's run records its inputs fingerprint from inside, whoever launched it: a stage materialized
without `latent-atlas run` (here by executing its job directly, as a run the daemon launches does) is
up to date for the next `latent-atlas run`, which then runs nothing again."""

import dagster as dg
import pytest

from orchestration.definitions import build_definitions
from orchestration.freshness import FINGERPRINT_TAG, ChangedDuringRun, stage_fingerprint
from orchestration.jobs import refit_range_tags, stages_of
from orchestration.pipeline import _stage_job_defs, register_partitions, run_stages
from resources import CorpusResource, ModelResource
from tests.conftest import write_planted_corpus

TARGETS = ["whitened_activations"]  # a per-chunk stage, a global one, a per-chunk one reading it


def test_a_stage_run_launched_elsewhere_is_up_to_date_for_latent_atlas_run(atlas_home, tmp_path):
    corpus = CorpusResource(source="npz", path=str(write_planted_corpus(tmp_path / "corpus", 3)))
    defs = build_definitions(corpus=corpus, model=ModelResource(name="minilm-l6"))
    with dg.instance_for_test(temp_dir=str(atlas_home / "dagster")) as instance:
        keys = corpus.register(None, "")
        register_partitions(instance, keys)
        stages = stages_of(defs, TARGETS)
        jobs = _stage_job_defs(defs, stages)  # the jobs `latent-atlas run` runs, here launched without any tag
        for names, per_chunk in stages:
            job = jobs[names]
            for key in keys if per_chunk else [None]:
                assert job.execute_in_process(instance=instance, partition_key=key).success
                run = instance.get_runs(limit=1)[0]
                expected = stage_fingerprint(defs, instance, names, key, {})
                assert run.tags.get(FINGERPRINT_TAG) == expected, (names, key)
        runs = len(instance.get_runs())

        report = run_stages(defs, instance, keys, stages, log=lambda _: None)
        assert len(report.skipped) == 2 * len(keys) + 1 and not report.failed
        assert len(instance.get_runs()) == runs  # nothing ran again

        # a run over a range of partitions is no one stage: it records nothing (the refit's content
        # versions judge it), and a fingerprint whose upstream changed after the run began is refused
        refit = defs.resolve_job_def("refit_job").execute_in_process(instance=instance, tags=refit_range_tags(keys))
        assert refit.success and FINGERPRINT_TAG not in instance.get_run_by_id(refit.run_id).tags
        started = instance.get_run_record_by_id(refit.run_id).start_time
        with pytest.raises(ChangedDuringRun):
            stage_fingerprint(defs, instance, ("whitened_activations",), keys[0], {}, started)
