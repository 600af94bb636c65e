"""Bad data is stopped at the door, whatever the file order: the corpus's d is decided at registration
from every file (or given), a file of another d is refused by name, and a file deleted without
`remove-chunk` is left out of the global fits, which are refit from the files that remain."""

import io
import zipfile

import dagster as dg
import numpy as np
import pytest

from latent_atlas.data.dimensions import decide_dimension, npz_array_shape
from latent_atlas.data.errors import DimensionError
from latent_atlas.data.paths import manifests_dir
from orchestration.cli import main
from orchestration.jobs import stages_of
from orchestration.pipeline import run_stages
from resources import CorpusResource
from tests.conftest import materialized, write_planted_chunk, write_planted_corpus, write_seed_npz

CONFIG = {"centroids": {"n_clusters": 4, "n_epochs": 2}}
TARGETS = ["centroids"]


def latest_metadata(instance, asset: str) -> dict:
    event = instance.get_latest_materialization_event(dg.AssetKey(asset))
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}


def header_only_npz(path, shape):
    """An NPZ whose activations member is a .npy header alone: its shape is known, its data absent."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f2", "fortran_order": False, "shape": shape})
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("activations.npy", header.getvalue())
    return path


def test_the_majority_d_is_read_from_the_headers_alone(atlas_home, tmp_path):
    files = [header_only_npz(tmp_path / "a_huge.npz", (300_000, 128, 12)),  # 0.9 GB of fp16 if it were read
             write_seed_npz(tmp_path / "b.npz", dim=8)]
    np.savez_compressed(tmp_path / "c.npz", activations=np.zeros((2, 4, 8), np.float16))
    files += [tmp_path / "c.npz", write_seed_npz(tmp_path / "d.npz", dim=8, seed=1)]
    (tmp_path / "e.npz").write_bytes(b"truncated")  # unreadable: not counted, it fails at its own chunk stage
    assert npz_array_shape(files[0], "activations") == (300_000, 128, 12)
    assert decide_dimension("lab", files + [tmp_path / "e.npz"]) == (8, "3 of 4 files")
    with pytest.raises(DimensionError, match=r"\(d=8: b.npz; d=12: a_huge.npz\)"):  # one each: no strict majority
        decide_dimension("lab", files[:2])


def test_a_file_of_another_dimension_that_sorts_first_is_refused_and_the_good_ones_fitted(atlas_home, tmp_path):
    folder = write_planted_corpus(tmp_path / "lab", 3, n_seq=8, dim=96)
    write_planted_chunk(folder, 9, n_seq=8, dim=128).rename(folder / "a_bad.npz")  # sorts before part0..2
    corpus = CorpusResource(source="npz", path=str(folder))
    assert corpus.registration(None, "").dimension == (96, "3 of 4 files")
    with materialized(atlas_home, corpus, TARGETS, asset_config=CONFIG) as (_, instance, keys, report):
        assert keys[0] == "lab-a_bad"
        assert report.failed == {"lab-a_bad": f"ChunkError: {folder / 'a_bad.npz'}: activations have dimension 128, "
                                              f"expected 96 (the corpus's d, shared by 3 of 4 files)"}
        whitening, centroids = latest_metadata(instance, "whitening"), latest_metadata(instance, "centroids")
    assert (whitening["dim"], whitening["chunks"], centroids["chunks"]) == (96, 3, 3)
    assert np.load(atlas_home / "tensors" / "centroids.npz")["cluster_centers"].shape == (4, 96)
    assert not (atlas_home / "tensors" / "activations" / "lab-a_bad").exists()  # nothing of it on disk


def test_files_that_disagree_with_no_majority_are_refused_unless_the_dimension_is_given(atlas_home, tmp_path, capsys):
    folder = tmp_path / "mixed"
    folder.mkdir()
    for i, (name, dim) in enumerate([("a", 24), ("b", 32), ("c", 24), ("d", 32)]):
        write_seed_npz(folder / f"{name}.npz", dim=dim, seed=i)
    with pytest.raises(DimensionError, match=r"d=24: a.npz, c.npz; d=32: b.npz, d.npz"):
        CorpusResource(source="npz", path=str(folder)).registration(None, "")
    assert not list(manifests_dir().glob("*.json"))  # refused as a whole: no manifest left behind

    assert main(["run", "--npz", str(folder), "--until", "activations"]) == 2  # refused before anything runs
    err = capsys.readouterr().err
    assert "no dimension is shared by more than half" in err and "--expected-dim" in err
    assert not (atlas_home / "tensors").exists()

    assert main(["run", "--npz", str(folder), "--expected-dim", "32", "--until", "whitening"]) == 1  # a, c failed
    out = capsys.readouterr().out
    assert "d=32 (--expected-dim)" in out
    for name in ("a", "c"):
        assert (f"chunk mixed-{name} failed: ChunkError: {folder / name}.npz: activations have dimension 24, "
                f"expected 32 (set by expected_dim)") in out
    assert sorted(p.name for p in (atlas_home / "tensors" / "activations").iterdir()) == ["mixed-b", "mixed-d"]
    with dg.DagsterInstance.get() as instance:
        assert latest_metadata(instance, "whitening")["chunks"] == 2


def test_a_file_deleted_without_remove_chunk_is_left_out_and_the_fits_recomputed(atlas_home, tmp_path, monkeypatch):
    folder = write_planted_corpus(tmp_path / "lab", 3, n_seq=8, dim=24)
    corpus = CorpusResource(source="npz", path=str(folder))
    with materialized(atlas_home, corpus, TARGETS, asset_config=CONFIG) as (defs, instance, keys, first):
        assert not first.failed and latest_metadata(instance, "centroids")["chunks"] == 3
        (folder / "part1.npz").unlink()  # no remove-chunk

        again = run_stages(defs, instance, keys, stages_of(defs, TARGETS), log=lambda _: None, asset_config=CONFIG)
        assert list(again.failed) == ["lab-part1"]
        assert "the file is gone" in again.failed["lab-part1"] and "remove-chunk lab-part1" in again.failed["lab-part1"]
        assert not any(stage in ("whitening", "centroids") for stage, _ in again.skipped)  # refit, not "up to date"
        assert [latest_metadata(instance, a)["chunks"] for a in ("whitening", "centroids")] == [2, 2]
        followed = np.load(atlas_home / "tensors" / "centroids.npz")["cluster_centers"]

        third = run_stages(defs, instance, keys, stages_of(defs, TARGETS), log=lambda _: None, asset_config=CONFIG)
        assert list(third.failed) == ["lab-part1"]  # still named on every run, never silently dropped

    fresh = tmp_path / "fresh"  # the two remaining files in a new home: what a first run on them learns
    monkeypatch.setenv("ATLAS_HOME", str(fresh))
    monkeypatch.setenv("DAGSTER_HOME", str(fresh / "dagster"))
    (fresh / "dagster").mkdir(parents=True)
    with materialized(fresh, corpus, TARGETS, asset_config=CONFIG) as (_, _, keys, report):
        assert keys == ["lab-part0", "lab-part2"] and not report.failed
        assert np.array_equal(np.load(fresh / "tensors" / "centroids.npz")["cluster_centers"], followed)
