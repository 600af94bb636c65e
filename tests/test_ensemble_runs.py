"""An ensemble of re-fits of the atlas's clustering: what each member is fitted with, and the registry's
record of it under an id that names the config, the seeds and the sample."""

import numpy as np

from latent_atlas.clustering.model import SequentialSoftClustering
from latent_atlas.hierarchy.ensemble import RunRegistry
from latent_atlas.hierarchy.ensemble_runs import fit_atlas_ensemble, refit_params, register_ensemble


def _planted(seed=0, k=4, per_cluster=50, d=8):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d))
    labels = np.repeat(np.arange(k), per_cluster)
    return (centers[labels] + 0.1 * rng.normal(size=(len(labels), d))).astype(np.float32)


def test_members_take_the_atlas_config_with_the_ensembles_steps():
    x = _planted()
    atlas = SequentialSoftClustering(4, seed=7, max_points=50, n_epochs=3).fit(x)
    params = refit_params(atlas, 0, 5, len(x))
    assert "n_clusters" not in params and "seed" not in params
    assert params["max_points"] == len(x) and params["n_epochs"] == 5  # 0 rows per step = the whole sample
    assert refit_params(atlas, 30, 5, len(x))["max_points"] == 30


def test_registry_records_each_member_under_one_id_per_config_seeds_and_sample(tmp_path):
    x = _planted()
    atlas = SequentialSoftClustering(4, seed=7, max_points=len(x), n_epochs=5).fit(x)
    run = fit_atlas_ensemble(x, atlas, [0, 1], 0, 5, 10)
    assert run.result.centers.shape == (2, 4, 8) and run.n_points == len(x)
    registry = RunRegistry(tmp_path / "ensembles.sqlite")
    first = register_ensemble(registry, run, "v1", tmp_path / "ensemble.npz")
    again = register_ensemble(registry, run, "v1", tmp_path / "ensemble.npz")
    other = register_ensemble(registry, run, "v2", tmp_path / "ensemble.npz")
    assert first == again != other
    rows = registry.runs(first)
    assert [r["seed"] for r in rows] == [0, 1, 0, 1]
    assert all(r["config"]["n_clusters"] == 4 and r["config"]["seed"] == r["seed"] for r in rows)
    assert "npz_keys" not in rows[0]["config"] and rows[0]["data_version"] == "v1"
    summary = run.summary()
    assert summary["sample"] == len(x) and summary["online_steps_per_run"] == 5  # one step per epoch
    assert [(r["run_a"], r["run_b"]) for r in run.pairwise_rows()] == [("seed=0", "seed=1")]
