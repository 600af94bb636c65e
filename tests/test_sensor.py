"""The incoming sensor registers new files as partitions, once, and again only if they change."""

import json
import os

import dagster as dg

from orchestration.sensors import incoming_chunks
from resources import CorpusResource, ModelResource
from tests.conftest import write_seed_npz


def _evaluate(instance, cursor):
    context = dg.build_sensor_context(
        instance=instance, cursor=cursor,
        resources={"corpus": CorpusResource(), "model": ModelResource(name="minilm-l6")},
    )
    return incoming_chunks(context)


def test_new_files_become_partitions_once(atlas_home):
    incoming = atlas_home / "incoming"
    incoming.mkdir()
    write_seed_npz(incoming / "a.npz")
    write_seed_npz(incoming / "b.npz", seed=1)
    (incoming / "notes.md").write_text("ignored")
    (incoming / "story.txt").write_text("A short story about a cat. " * 40)
    (incoming / "broken.txt").write_bytes(b"\xff\xfe not utf-8")
    with dg.instance_for_test(temp_dir=str(atlas_home / "dagster")) as instance:
        first = _evaluate(instance, None)
        keys = [r.partition_key for r in first.run_requests]
        assert keys == ["npz-a", "npz-b", "story-00000"]  # broken.txt is logged and skipped
        assert first.dynamic_partitions_requests[0].partition_keys == keys
        cursor = json.loads(first.cursor)
        assert set(cursor) == {"a.npz", "b.npz", "story.txt", "broken.txt"}

        second = _evaluate(instance, first.cursor)
        assert isinstance(second, dg.SkipReason)

        write_seed_npz(incoming / "c.npz", seed=2)
        os.utime(incoming / "a.npz", ns=(1, 1))  # a changed file is registered again
        third = _evaluate(instance, first.cursor)
        assert [r.partition_key for r in third.run_requests] == ["npz-a", "npz-c"]
        assert third.run_requests[0].run_key != first.run_requests[0].run_key
