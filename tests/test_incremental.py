"""Only what changed is recomputed: a rerun skips every up-to-date stage, a new chunk runs its own
per-chunk stages and the global refits (and what reads them), a changed config reruns its stage."""

import dagster as dg
import numpy as np

from orchestration.jobs import refit_range_tags, stages_of
from orchestration.pipeline import register_partitions, run_stages
from orchestration.schedules import last_fit_config
from resources import CorpusResource
from tests.conftest import materialized, write_planted_chunk, write_planted_corpus, write_seed_npz

TARGETS = ["memberships"]
CONFIG = {"centroids": {"n_clusters": 4, "n_epochs": 2}}


def runs_by_job(instance) -> dict[str, int]:
    counts: dict[str, int] = {}
    for run in instance.get_runs():
        counts[run.job_name] = counts.get(run.job_name, 0) + 1
    return counts


def test_rerun_skips_and_a_new_chunk_runs_only_what_it_changes(atlas_home, tmp_path):
    folder = write_planted_corpus(tmp_path / "corpus", 3)
    corpus = CorpusResource(source="npz", path=str(folder))
    with materialized(atlas_home, corpus, TARGETS, asset_config=CONFIG) as (defs, instance, keys, first):
        stages = stages_of(defs, TARGETS)
        assert not first.skipped and not first.failed
        before = runs_by_job(instance)
        centers = np.load(atlas_home / "tensors" / "centroids.npz")["cluster_centers"].copy()

        again = run_stages(defs, instance, keys, stages, log=lambda _: None, asset_config=CONFIG)
        assert runs_by_job(instance) == before  # nothing ran again
        assert len(again.skipped) == sum(len(keys) if per_chunk else 1 for _, per_chunk in stages)

        write_planted_chunk(folder, 3)  # one more chunk: its own per-chunk stages, the global refits, and what reads them
        keys = corpus.register(None, "")
        register_partitions(instance, keys)
        grown = run_stages(defs, instance, keys, stages, log=lambda _: None, asset_config=CONFIG)
        after = runs_by_job(instance)
        added = {job: after[job] - before.get(job, 0) for job in after}
        assert added["token_chunks_stage"] == 1  # the new chunk's activations only
        assert added["whitening_stage"] == 1 and added["centroids_stage_adhoc"] == 1
        assert added["whitened_activations_stage"] == 4 and added["memberships_stage_adhoc"] == 4  # refit whitening
        assert ("activations+token_chunks", keys[0]) in grown.skipped

        changed = {"centroids": {**CONFIG["centroids"], "seed": 1}}  # a config change reruns its stage
        run_stages(defs, instance, keys, stages, log=lambda _: None, asset_config=changed)
        final = runs_by_job(instance)
        assert final["centroids_stage_adhoc"] == after["centroids_stage_adhoc"] + 1
        assert final["whitening_stage"] == after["whitening_stage"]  # upstream of the change: skipped
        assert not np.array_equal(np.load(atlas_home / "tensors" / "centroids.npz")["cluster_centers"], centers)

        off = run_stages(defs, instance, keys, stages, log=lambda _: None, asset_config=changed, skip_up_to_date=False)
        assert not off.skipped and runs_by_job(instance)["whitening_stage"] == final["whitening_stage"] + 1
        assert dg.DagsterRunStatus.FAILURE not in {r.status for r in instance.get_runs()}


def materialization_counts(defs, instance) -> dict[str, int]:
    return {key.to_user_string(): len(instance.fetch_materializations(key, limit=10_000).records)
            for key in defs.resolve_asset_graph().get_all_asset_keys()}


def added_since(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Materializations added per asset, the assets with none left out."""
    return {name: after[name] - before[name] for name in after if after[name] != before[name]}


def test_an_unchanged_refit_leaves_everything_downstream_up_to_date(atlas_home, tmp_path):
    folder = write_planted_corpus(tmp_path / "corpus", 3)
    corpus = CorpusResource(source="npz", path=str(folder))
    with materialized(atlas_home, corpus, TARGETS, asset_config=CONFIG) as (defs, instance, keys, _):
        stages = stages_of(defs, TARGETS)
        # the nightly refit's run, on unchanged chunks, with the config of the fits it replaces
        refit = defs.resolve_job_def("refit_job").execute_in_process(
            instance=instance, tags=refit_range_tags(keys), run_config=last_fit_config(instance))
        assert refit.success
        before = materialization_counts(defs, instance)

        again = run_stages(defs, instance, keys, stages, log=lambda _: None, asset_config=CONFIG)
        assert materialization_counts(defs, instance) == before  # no second fit, nothing downstream
        assert len(again.skipped) == sum(len(keys) if per_chunk else 1 for _, per_chunk in stages)

        # a refit (no fingerprint) that made other centroids: they are refit with the run's config, and
        # what reads them, made from the centroids now restored, stays up to date
        other = {"ops": {"centroids": {"config": {**CONFIG["centroids"], "n_clusters": 3}}}}
        assert defs.resolve_job_def("refit_job").execute_in_process(
            instance=instance, tags=refit_range_tags(keys), run_config=other).success
        refit_again = materialization_counts(defs, instance)
        run_stages(defs, instance, keys, stages, log=lambda _: None, asset_config=CONFIG)
        restored = materialization_counts(defs, instance)
        assert added_since(refit_again, restored) == {"centroids": 1}
        before = restored

        write_planted_chunk(folder, 3)  # a changed input does run: the new chunk, the refits, what reads them
        keys = corpus.register(None, "")
        register_partitions(instance, keys)
        run_stages(defs, instance, keys, stages, log=lambda _: None, asset_config=CONFIG)
        after = materialization_counts(defs, instance)
        assert added_since(before, after) == {"token_chunks": 1, "activations": 1, "whitening": 1,
                                              "whitened_activations": 4, "centroids": 1, "memberships": 4}


def test_a_chunk_rewritten_in_place_recomputes_it_and_what_reads_it(atlas_home, tmp_path, monkeypatch):
    folder = write_planted_corpus(tmp_path / "corpus", 3)
    corpus = CorpusResource(source="npz", path=str(folder))
    with materialized(atlas_home, corpus, TARGETS, asset_config=CONFIG) as (defs, instance, keys, _):
        stages = stages_of(defs, TARGETS)
        before = materialization_counts(defs, instance)
        stale = np.load(atlas_home / "tensors" / "centroids.npz")["cluster_centers"]
        rng = np.random.default_rng(7)  # the same path and shape, data near 4 other directions
        acts = rng.standard_normal((4, 32))[rng.integers(0, 4, (16, 16))] + 0.3 * rng.standard_normal((16, 16, 32))
        write_seed_npz(folder / "part1.npz", n_seq=16, seq_len=16, dim=32, seed=1, activations=acts.astype(np.float16))

        again = run_stages(defs, instance, keys, stages, log=lambda _: None, asset_config=CONFIG)
        assert not again.failed
        # that chunk's inputs, the global refits, and every chunk's outputs that read them
        assert added_since(before, materialization_counts(defs, instance)) == {
            "token_chunks": 1, "activations": 1, "whitening": 1, "whitened_activations": 3, "centroids": 1,
            "memberships": 3}
        assert {("activations+token_chunks", keys[0]), ("activations+token_chunks", keys[2])} <= set(again.skipped)
        followed = np.load(atlas_home / "tensors" / "centroids.npz")["cluster_centers"]

    fresh = tmp_path / "fresh"  # the same files, a new home: the centroids a first run on them learns
    monkeypatch.setenv("ATLAS_HOME", str(fresh))
    monkeypatch.setenv("DAGSTER_HOME", str(fresh / "dagster"))
    (fresh / "dagster").mkdir(parents=True)
    with materialized(fresh, corpus, TARGETS, asset_config=CONFIG):
        first_run = np.load(fresh / "tensors" / "centroids.npz")["cluster_centers"]
    assert np.array_equal(followed, first_run) and not np.array_equal(stale, first_run)


def test_a_chunk_that_fails_now_is_left_out_of_the_global_fits(atlas_home, tmp_path):
    folder = write_planted_corpus(tmp_path / "corpus", 3)
    corpus = CorpusResource(source="npz", path=str(folder))
    with materialized(atlas_home, corpus, TARGETS + ["merged_statistics"], asset_config=CONFIG) as (defs, instance, keys, _):
        stages = stages_of(defs, TARGETS + ["merged_statistics"])
        meta = lambda asset: {k: v.value for k, v in  # noqa: E731
                              instance.get_latest_materialization_event(dg.AssetKey(asset)).asset_materialization.metadata.items()}
        tokens = {key: instance.fetch_materializations(dg.AssetRecordsFilter(
            asset_key=dg.AssetKey("chunk_stats"), asset_partitions=[key]), limit=1).records[0]
            .asset_materialization.metadata["tokens"].value for key in keys}
        assert meta("merged_statistics")["tokens"] == sum(tokens.values())
        (folder / "part1.npz").write_bytes(b"not a zip any more")  # succeeded before, fails now

        again = run_stages(defs, instance, keys, stages, log=lambda _: None, asset_config=CONFIG)
        assert list(again.failed) == [keys[1]] and "part1.npz" in again.failed[keys[1]]
        # refit without it: its old activations, whitened activations and chunk_stats are never read
        assert meta("whitening")["chunks"] == 2 and meta("centroids")["chunks"] == 2
        assert meta("merged_statistics")["chunks"] == 2 and meta("merged_statistics")["tokens"] == tokens[keys[0]] + tokens[keys[2]]


def test_a_text_file_rewritten_in_place_recomputes_its_chunk(atlas_home, tmp_path):
    folder = tmp_path / "texts"
    folder.mkdir()
    for i, topic in enumerate(["markets and shares", "football and goals", "films and actors"]):
        (folder / f"doc{i}.txt").write_text(f"A short report about {topic}. " * 20)
    corpus = CorpusResource(source="files", path=str(folder))
    with materialized(atlas_home, corpus, ["activations"]) as (defs, instance, keys, _):
        stages = stages_of(defs, ["activations"])
        before = materialization_counts(defs, instance)
        assert run_stages(defs, instance, keys, stages, log=lambda _: None).skipped  # unchanged: up to date
        assert materialization_counts(defs, instance) == before
        (folder / "doc1.txt").write_text("An entirely different text about weather and rain. " * 20)
        again = run_stages(defs, instance, keys, stages, log=lambda _: None)
        assert not again.failed
        # the manifest holds references and the text is read when the chunk is made: the file is the source
        assert added_since(before, materialization_counts(defs, instance)) == {"token_chunks": len(keys), "activations": len(keys)}
