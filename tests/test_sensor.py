"""The incoming sensor registers new files as partitions of the home's corpus, once, and again only if they
change; it refuses what `latent-atlas run` refuses and names each file it refuses or skips."""

import json
import os
import shutil

import dagster as dg

from latent_atlas.data.manifests import all_manifests
from orchestration.cli import main
from orchestration.sensors import incoming_chunks
from resources import CorpusResource, ModelResource
from tests.conftest import write_seed_npz


def _evaluate(instance, cursor):
    context = dg.build_sensor_context(
        instance=instance, cursor=cursor,
        resources={"corpus": CorpusResource(), "model": ModelResource(name="minilm-l6")},
    )
    return incoming_chunks(context)


def _keys(result) -> list[str]:
    return [r.partition_key for r in result.run_requests]


def _lab_home(tmp_path):
    """A home holding NPZ corpus 'lab' of d=32, registered as `latent-atlas run --npz lab` registers it."""
    lab = tmp_path / "lab"
    lab.mkdir()
    for i in range(3):
        write_seed_npz(lab / f"part{i}.npz", seed=i)
    CorpusResource(source="npz", path=str(lab)).registration(None, "")
    return lab


def test_new_files_become_partitions_once(atlas_home):
    incoming = atlas_home / "incoming"
    incoming.mkdir()
    write_seed_npz(incoming / "a.npz")
    write_seed_npz(incoming / "b.npz", seed=1)
    (incoming / "notes.md").write_text("ignored")
    with dg.instance_for_test(temp_dir=str(atlas_home / "dagster")) as instance:
        first = _evaluate(instance, None)
        keys = _keys(first)
        assert keys == ["incoming-a", "incoming-b"]  # an empty home: a corpus named after the folder
        assert first.dynamic_partitions_requests[0].partition_keys == keys
        assert set(json.loads(first.cursor)) == {"a.npz", "b.npz"}

        second = _evaluate(instance, first.cursor)
        assert isinstance(second, dg.SkipReason)

        write_seed_npz(incoming / "c.npz", seed=2)
        os.utime(incoming / "a.npz", ns=(1, 1))  # a changed file is registered again
        third = _evaluate(instance, first.cursor)
        assert _keys(third) == ["incoming-a", "incoming-c"]
        assert third.run_requests[0].run_key != first.run_requests[0].run_key


def test_duplicates_bad_files_and_another_d_are_named_and_only_the_good_file_requested(atlas_home, tmp_path, capfd):
    lab = _lab_home(tmp_path)
    incoming = atlas_home / "incoming"
    incoming.mkdir()
    write_seed_npz(incoming / "good.npz", seed=5)
    shutil.copy(incoming / "good.npz", incoming / "good_copy.npz")  # a duplicate within the drop
    shutil.copy(lab / "part1.npz", incoming / "old.npz")  # a duplicate of a file the home registered
    (incoming / "bad.npz").write_bytes(b"truncated")
    write_seed_npz(incoming / "wide.npz", dim=16, seed=6)
    with dg.instance_for_test(temp_dir=str(atlas_home / "dagster")) as instance:
        result = _evaluate(instance, None)
    assert _keys(result) == ["lab-good"]  # joins the home's corpus; nothing else is run
    assert result.dynamic_partitions_requests[0].partition_keys == ["lab-good"]
    out = "".join(capfd.readouterr())
    assert f"skipped {incoming / 'good_copy.npz'}: duplicate of {incoming / 'good.npz'} (chunk lab-good)" in out
    assert f"skipped {incoming / 'old.npz'}: duplicate of {lab / 'part1.npz'} (chunk lab-part1)" in out
    assert f"skipped {incoming / 'bad.npz'}: not a readable NPZ file" in out
    assert f"skipped {incoming / 'wide.npz'}: activations have dimension 16, expected 32" in out


def test_a_text_file_dropped_twice_registers_its_documents_once(atlas_home, capfd):
    incoming = atlas_home / "incoming"
    incoming.mkdir()
    (incoming / "story.txt").write_text("A short story about a cat. " * 40)
    (incoming / "broken.txt").write_bytes(b"\xff\xfe not utf-8")
    with dg.instance_for_test(temp_dir=str(atlas_home / "dagster")) as instance:
        first = _evaluate(instance, None)
        [key] = _keys(first)
        assert f"skipped {incoming / 'broken.txt'}: not UTF-8 text" in "".join(capfd.readouterr())

        shutil.copy(incoming / "story.txt", incoming / "story_copy.txt")
        second = _evaluate(instance, first.cursor)
    assert _keys(second) == []
    assert (f"skipped {incoming / 'story_copy.txt'}: duplicate of {incoming / 'story.txt'} (chunk {key})"
            in second.skip_reason.skip_message)
    documents = [d.path for plan in all_manifests().values() for d in plan.documents]
    assert documents == [str(incoming / "story.txt")]


def test_a_second_corpus_is_refused_naming_the_homes_corpus(atlas_home, tmp_path, capsys):
    _lab_home(tmp_path)
    before = sorted(all_manifests())
    incoming = atlas_home / "incoming"
    incoming.mkdir()
    (incoming / "story.txt").write_text("A short story about a cat. " * 40)
    with dg.instance_for_test(temp_dir=str(atlas_home / "dagster")) as instance:
        result = _evaluate(instance, None)
    assert _keys(result) == []
    message = result.skip_reason.skip_message
    assert message.startswith("skipped story.txt: this ATLAS_HOME holds corpus 'lab' (NPZ chunks); corpus 'lab' "
                              "(text, model minilm-l6) is refused"), message

    other = tmp_path / "other"
    other.mkdir()
    write_seed_npz(other / "x.npz", seed=7)
    assert main(["run", "--npz", str(other), "--until", "activations"]) == 2
    err = capsys.readouterr().err
    assert "this ATLAS_HOME holds corpus 'lab' (NPZ chunks); corpus 'other' (NPZ chunks) is refused" in err
    assert sorted(all_manifests()) == before  # nothing of either registered
