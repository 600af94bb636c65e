"""Resources and IO managers clean up after themselves and trust nothing a file names."""

import json
import sys
import threading
from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from io_managers import tensors
from io_managers.tensors import TensorIOManager, load_artifact
from latent_atlas.data.whitening import Moments, Whitening

DEMO_HOME = Path("/tmp/demo-final")


def test_dask_cluster_is_closed_when_the_resource_context_ends():
    from distributed.core import Status

    from resources import ComputeBackendResource

    with dg.build_resources({"compute": ComputeBackendResource(kind="dask")}) as resources:
        backend = resources.compute.backend()
        assert resources.compute.backend() is backend  # one cluster per context, not one per asset
        assert backend.map(pow, [1, 2, 3], exp=2) == [1, 4, 9]
        cluster, client = backend.client.cluster, backend.client
        assert cluster.status == Status.running
    assert client.status == "closed"
    assert cluster.status == Status.closed


def test_tokenizer_loads_no_model_weights(atlas_home):
    from latent_atlas.data.models import MINILM, load_model
    from latent_atlas.data.paths import model_cache_dir
    from resources.model import ModelResource, _load

    _load.cache_clear()
    tokenizer = ModelResource(name=MINILM).tokenizer()
    assert _load.cache_info().currsize == 0, "tokenizer() loaded a full copy of the model"
    text = "The Bank of England held rates at 4.75%."
    model_tokenizer = load_model(MINILM, model_cache_dir(), __import__("torch").device("cpu")).tokenizer
    assert tokenizer(text)["input_ids"] == model_tokenizer(text)["input_ids"]


def _output_context(name: str):
    return dg.build_output_context(asset_key=dg.AssetKey(name))


def _whitening(seed: int) -> Whitening:
    x = np.random.default_rng(seed).standard_normal((200, 8))
    return Whitening.fit(Moments.of_vectors(x), method="zca")


def test_artifacts_round_trip_with_no_temp_files_left(tmp_path):
    manager = TensorIOManager(base_dir=str(tmp_path))
    whitening = _whitening(0)
    manager.handle_output(_output_context("whitening"), whitening)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["whitening.json", "whitening.npz"]
    assert json.loads((tmp_path / "whitening.json").read_text()) == {"class": "latent_atlas.data.whitening:Whitening"}
    loaded = load_artifact(tmp_path / "whitening.npz")
    np.testing.assert_array_equal(loaded.matrix_, whitening.matrix_)
    np.testing.assert_array_equal(loaded.mean_, whitening.mean_)


def test_a_sidecar_written_before_the_library_packages_still_loads(tmp_path):
    # Homes written when the library was flat name latent_atlas.<module>:<class> in their sidecars.
    manager = TensorIOManager(base_dir=str(tmp_path))
    whitening = _whitening(1)
    manager.handle_output(_output_context("whitening"), whitening)
    (tmp_path / "whitening.json").write_text(json.dumps({"class": "latent_atlas.whitening:Whitening"}))
    loaded = load_artifact(tmp_path / "whitening.npz")
    assert isinstance(loaded, Whitening)
    np.testing.assert_array_equal(loaded.matrix_, whitening.matrix_)
    # written again, it names the class where it lives now
    manager.handle_output(_output_context("whitening"), loaded)
    assert json.loads((tmp_path / "whitening.json").read_text()) == {"class": "latent_atlas.data.whitening:Whitening"}


def test_every_saved_class_is_named_where_it_lives_and_by_its_name_before_the_packages():
    import importlib

    for kind in tensors.SAVED_TYPES:
        module, _, name = kind.partition(":")
        cls = getattr(importlib.import_module(module), name)
        assert f"{cls.__module__}:{cls.__qualname__}" == kind
    assert set(tensors.LEGACY_TYPES.values()) == tensors.SAVED_TYPES  # every class saved before has its old name
    for old, new in tensors.LEGACY_TYPES.items():
        assert old.split(":")[1] == new.split(":")[1] and old.count(".") == 1, old


def test_an_old_name_of_a_class_that_is_not_saved_is_refused(tmp_path):
    np.savez(tmp_path / "cluster_tree.npz", x=np.zeros(3))
    (tmp_path / "cluster_tree.json").write_text(json.dumps({"class": "latent_atlas.tree:TreeConfig"}))
    with pytest.raises(ValueError, match=r"cluster_tree\.json.*latent_atlas\.tree:TreeConfig"):
        load_artifact(tmp_path / "cluster_tree.npz")


def test_a_sidecar_naming_a_foreign_class_is_refused_before_any_import(tmp_path, monkeypatch):
    # A module whose import has a visible effect: loading must not import it at all.
    marker = tmp_path / "imported"
    (tmp_path / "foreign_artifact.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('yes')\n"
        "class Artifact:\n    @classmethod\n    def load(cls, path):\n        return cls()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    np.savez(tmp_path / "centroids.npz", x=np.zeros(3))
    (tmp_path / "centroids.json").write_text(json.dumps({"class": "foreign_artifact:Artifact"}))
    with pytest.raises(ValueError, match=r"centroids\.json.*foreign_artifact:Artifact"):
        load_artifact(tmp_path / "centroids.npz")
    assert not marker.exists() and "foreign_artifact" not in sys.modules


def test_an_unknown_type_is_refused_on_write(tmp_path):
    class NotOurs:
        def save(self, path):
            np.savez(path, x=np.zeros(1))

    with pytest.raises(TypeError, match="NotOurs"):
        TensorIOManager(base_dir=str(tmp_path)).handle_output(_output_context("centroids"), NotOurs())
    assert list(tmp_path.rglob("*")) == []


class _SlowArtifact:
    """Saves, then waits until the other writer has saved too: both are mid-write at once."""

    both_saved = threading.Barrier(2)

    def __init__(self, value: float):
        self.value = value

    def save(self, path):
        np.savez(path, value=np.float64(self.value))
        self.both_saved.wait(timeout=30)

    @classmethod
    def load(cls, path):
        with np.load(path) as f:
            return cls(float(f["value"]))


def test_two_writers_of_one_artifact_never_share_a_temp_file(tmp_path, monkeypatch):
    kind = f"{_SlowArtifact.__module__}:{_SlowArtifact.__qualname__}"
    monkeypatch.setattr(tensors, "SAVED_TYPES", getattr(tensors, "SAVED_TYPES", frozenset()) | {kind}, raising=False)
    manager = TensorIOManager(base_dir=str(tmp_path))
    errors: list[BaseException] = []

    def write(value):
        try:
            manager.handle_output(_output_context("centroids"), _SlowArtifact(value))
        except BaseException as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=write, args=(v,)) for v in (1.0, 2.0)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["centroids.json", "centroids.npz"]
    assert load_artifact(tmp_path / "centroids.npz").value in (1.0, 2.0)


@pytest.mark.skipif(not DEMO_HOME.is_dir(), reason="no finished demo home on this machine")
def test_every_artifact_of_an_existing_home_is_still_loadable():
    sidecars = [p for p in (DEMO_HOME / "tensors").rglob("*.json") if p.with_suffix(".npz").exists()]
    assert sidecars
    for sidecar in sidecars:
        kind = json.loads(sidecar.read_text())["class"]
        assert tensors.LEGACY_TYPES.get(kind, kind) in tensors.SAVED_TYPES, sidecar
    centroids = load_artifact(DEMO_HOME / "tensors" / "centroids.npz")
    assert centroids.cluster_centers_.shape[0] == 64
