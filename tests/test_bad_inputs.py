"""The bad-input matrix: every kind of bad file fails alone, named, and the home works again once
it is removed. benchmarks/bad_inputs.py runs the same cases one home each and prints the table."""

import json
import os
import shutil
import time

import numpy as np
import pytest

from latent_atlas.data.atomic import remove_stale_temp_files
from latent_atlas.data.errors import ChunkError
from latent_atlas.data.manifests import read_manifest, register_npz, remove_chunk
from latent_atlas.data.seed_chunks import load_npz_chunk
from latent_atlas.data.whitening import Whitening
from assets.partitions import chunks
from orchestration.pipeline import run_stages
from resources import CorpusResource, ModelResource
from tests.conftest import materialized, write_seed_npz


def _truncated(path):
    write_seed_npz(path)
    path.write_bytes(path.read_bytes()[:700])


def _beyond_float16(path):
    acts = np.random.default_rng(3).standard_normal((6, 16, 32))  # float64, finite
    acts[2, 3, 4] = 7e4  # inf once cast to float16
    write_seed_npz(path, activations=acts)


def _one_value(value):
    def make(path):
        acts = np.zeros((6, 16, 32), np.float16)
        acts[1, 2, 3] = value
        write_seed_npz(path, activations=acts)
    return make


def _pickled(path):
    np.savez(path, activations=np.array([{"x": 1}], dtype=object), attention_mask=np.ones((1, 1)),
             token_ids=np.ones((1, 1)))


def _token_id(value):
    def make(path):
        ids = np.ones((6, 16), np.int64)
        ids[1, 2] = value  # position 2 is attended in every sequence of write_seed_npz
        write_seed_npz(path, token_ids=ids)
    return make


# case -> (file name, how to write it, what its error must say)
NPZ_CASES = {
    "truncated": ("truncated.npz", _truncated, "truncated or corrupt"),
    "pickled": ("pickled.npz", _pickled, "pickled"),
    "not-a-zip": ("not_a_zip.npz", lambda p: p.write_text("activations,mask\n1,2\n"), "no zip header"),
    "0-byte": ("zero_byte.npz", lambda p: p.write_bytes(b""), "no zip header"),
    "NaN": ("nan.npz", _one_value(np.nan), "NaN/Inf (first at sequence 1, position 2)"),
    "Inf": ("inf.npz", _one_value(np.inf), "NaN/Inf (first at sequence 1, position 2)"),
    "wrong dimension": ("wrong_dim.npz", lambda p: write_seed_npz(p, dim=24), "dimension 24, expected 32"),
    "float64 beyond fp16": ("float64_big.npz", _beyond_float16, "exceed the float16 range"),
    "int dtype": ("int_dtype.npz", lambda p: write_seed_npz(p, activations=np.ones((6, 16, 32), np.int32)),
                  "must be floating point"),
    "mismatched mask": ("mask_shape.npz", lambda p: write_seed_npz(p, attention_mask=np.ones((6, 15), bool)),
                        "attention mask shape"),
    "empty mask": ("empty_mask.npz", lambda p: write_seed_npz(p, attention_mask=np.zeros((6, 16), bool)), "empty"),
    "zero sequences": ("zero_seq.npz", lambda p: write_seed_npz(p, n_seq=0), "empty"),
    "negative token id": ("negative_id.npz", _token_id(-7), "token ids must be >= 0 where the mask attends, got -7 "
                                                            "(first at sequence 1, position 2)"),
    "int32 min token id": ("int_min_id.npz", _token_id(-2**31), "got -2147483648"),
}


# One of each way a file is caught (zip reader, pickle refusal, the corpus's d, the float16 range,
# dtype, shape): the whole matrix runs through the pipeline in benchmarks/bad_inputs.py.
PIPELINE_CASES = ["truncated", "pickled", "wrong dimension", "float64 beyond fp16", "int dtype", "zero sequences",
                  "negative token id"]


@pytest.mark.parametrize("case", sorted(NPZ_CASES))
def test_every_bad_npz_is_refused_with_its_file_named(tmp_path, case):
    name, make, expected = NPZ_CASES[case]
    make(tmp_path / name)
    with pytest.raises(ChunkError) as err:
        load_npz_chunk(tmp_path / name, expected_dim=32)
    assert str(err.value).startswith(f"{tmp_path / name}: ") and expected in str(err.value)


def write_good_npz(folder):
    """Good chunks, named so that one of them is the corpus's first (it fixes d = 32); two collide."""
    for i, name in enumerate(["a b", "a_b", "good0", "good1"]):
        write_seed_npz(folder / f"{name}.npz", seed=i)
    shutil.copy(folder / "good0.npz", folder / "zz_copy_of_good0.npz")  # duplicate content


def test_bad_npz_fail_alone_and_the_home_recovers(atlas_home, tmp_path):
    folder = tmp_path / "lab"
    folder.mkdir()
    write_good_npz(folder)
    for case in PIPELINE_CASES:
        name, make, _ = NPZ_CASES[case]
        make(folder / name)
    corpus = CorpusResource(source="npz", path=str(folder))
    registration = corpus.registration(None, "")
    assert registration.duplicates == {str(folder / "zz_copy_of_good0.npz"): str(folder / "good0.npz")}
    assert registration.renamed == {str(folder / "a_b.npz"): registration.renamed[str(folder / "a_b.npz")]}
    good = ["lab-a_b", registration.renamed[str(folder / "a_b.npz")], "lab-good0", "lab-good1"]
    with materialized(atlas_home, corpus, ["whitening"]) as (defs, instance, keys, report):
        assert sorted(keys) == sorted(registration.keys) and len(keys) == 4 + len(PIPELINE_CASES)
        bad = [k for k in keys if k not in good]
        assert sorted(report.failed) == sorted(bad)  # every bad file failed, no good one did
        for name, _, expected in (NPZ_CASES[case] for case in PIPELINE_CASES):
            error = report.failed[f"lab-{name[:-4]}"]
            # 'ChunkError: <file>: <problem>', not 'BadZipFile: File is not a zip file' without a file name
            assert error.startswith(f"ChunkError: {folder / name}: ") and expected in error, error
        assert np.isfinite(Whitening.load(atlas_home / "tensors" / "whitening.npz").matrix_).all()

        # the user deletes the bad files and removes their chunks: the home works again
        for key in bad:
            os.remove(read_manifest(key).path)
            assert remove_chunk(key)
            instance.delete_dynamic_partition(chunks.name, key)
        assert not [p for p in atlas_home.rglob("*") if any(p.name.startswith(k) for k in bad)]
        again = run_stages(defs, instance, instance.get_dynamic_partitions(chunks.name), [(("whitening",), False)],
                           log=lambda _: None)
        assert again.failed == {} and again.refused == {}
        fitted = Whitening.load(atlas_home / "tensors" / "whitening.npz")
        assert fitted.dim == 32 and np.isfinite(fitted.matrix_).all()


def test_whitening_leaves_out_stored_chunks_of_another_dimension_or_not_finite(atlas_home, tmp_path):
    """Chunks already on disk from before the chunk-stage checks (or written by hand) never kill the
    global fit: they are refused by name and the fit uses the others."""
    folder = tmp_path / "lab"
    folder.mkdir()
    for i in range(2):
        write_seed_npz(folder / f"good{i}.npz", seed=i)
    corpus = CorpusResource(source="npz", path=str(folder))
    with materialized(atlas_home, corpus, ["activations"]) as (defs, instance, keys, _):
        stored = atlas_home / "tensors" / "activations"
        for key, acts in {"old-dim": np.ones((2, 4, 24), np.float16),
                          "old-inf": np.full((2, 4, 32), np.inf, np.float16)}.items():
            (stored / key).mkdir()
            np.save(stored / key / "activations.npy", acts)
            np.save(stored / key / "attention_mask.npy", np.ones((2, 4), bool))
            np.save(stored / key / "token_ids.npy", np.zeros((2, 4), np.int32))
            (stored / key / "meta.json").write_text("{}")
        instance.add_dynamic_partitions(chunks.name, ["old-dim", "old-inf"])
        report = run_stages(defs, instance, keys + ["old-dim", "old-inf"], [(("whitening",), False)],
                            log=lambda _: None)
    assert set(report.refused) == {"old-dim", "old-inf"}
    assert "dimension 24, expected 32" in report.refused["old-dim"] and "NaN/Inf" in report.refused["old-inf"]
    assert str(stored / "old-inf") in report.refused["old-inf"]
    assert np.isfinite(Whitening.load(atlas_home / "tensors" / "whitening.npz").matrix_).all()


@pytest.fixture(scope="module")
def tokenizer():
    return ModelResource(name="minilm-l6").tokenizer()


def write_text_corpus(folder):
    """Two good text files, a copy of one, and the bad ones: non-UTF-8, a bad JSONL line, a 10 MB line."""
    (folder / "cats.txt").write_text("The cat sat on the mat and looked at the garden. " * 40)
    (folder / "news.jsonl").write_text("\n".join(json.dumps({"text": f"Report {i} on the markets today."})
                                                 for i in range(5)))
    shutil.copy(folder / "cats.txt", folder / "cats_copy.txt")
    (folder / "latin1.txt").write_bytes("café au lait".encode("latin-1"))
    (folder / "broken.jsonl").write_text('{"text": "fine"}\n{"text": "no closing brace"\n')
    (folder / "long.txt").write_text("government " * 953_675)  # one 10 MB line, ~950k tokens


def test_bad_text_files_are_refused_by_name_and_long_documents_split(atlas_home, tmp_path, tokenizer):
    folder = tmp_path / "speeches"
    folder.mkdir()
    write_text_corpus(folder)
    assert (folder / "long.txt").stat().st_size > 10_000_000
    corpus = CorpusResource(source="files", path=str(folder), sequences_per_chunk=4096)
    registration = corpus.registration(tokenizer, "minilm-l6")
    assert registration.refused == {
        str(folder / "latin1.txt"): "not UTF-8 text: invalid byte at offset 3",
        str(folder / "broken.jsonl"): "line 2 is not valid JSON: Expecting ',' delimiter",
    }
    assert registration.duplicates == {str(folder / "cats_copy.txt"): str(folder / "cats.txt")}
    keys = registration.keys
    assert keys[0] == "speeches-00000"  # named after the corpus folder, not the demo's 'bbc-*'
    plans = [read_manifest(k) for k in keys]
    # 953,675 tokens in windows of 126: 7,569 sequences, split into chunks of at most 4,096
    assert sum(p.n_sequences for p in plans) == 7569 + 5 + 4 and max(p.n_sequences for p in plans) <= 4096 + 4

    with materialized(atlas_home, corpus, ["token_chunks"]) as (_, instance, again, report):
        assert again == keys and report.failed == {}  # registering again: the same keys
        import pyarrow.parquet as pq

        tables = {k: pq.read_table(atlas_home / "tables" / "token_chunks" / f"{k}.parquet") for k in keys}
        assert all(t.num_rows <= 4096 + 4 for t in tables.values())
        windows = sorted(w for t in tables.values() for d, w in zip(t["doc_id"].to_pylist(), t["window"].to_pylist())
                         if d == "long")
        assert len(windows) >= 7569 - 2 and windows[:2] == [0, 1]  # cuts at window starts lose at most a window each

    # a file added later becomes a new chunk; the existing ones keep their keys and contents
    before = {k: (atlas_home / "manifests" / f"{k}.json").read_text() for k in keys}
    (folder / "new.txt").write_text("A new speech about the economy. " * 20)
    added = corpus.registration(tokenizer, "minilm-l6").keys
    assert added[: len(keys)] == keys and len(added) == len(keys) + 1
    assert {k: (atlas_home / "manifests" / f"{k}.json").read_text() for k in keys} == before


def test_npz_keys_are_stable_when_files_are_added(atlas_home, tmp_path):
    folder = tmp_path / "acts"
    folder.mkdir()
    write_seed_npz(folder / "b.npz")
    first = register_npz(sorted(folder.glob("*.npz")), corpus="acts")
    write_seed_npz(folder / "a.npz", seed=1)
    write_seed_npz(folder / "a-.npz", seed=2)  # 'acts-a-' is not 'acts-a', but its key must differ too
    second = register_npz(sorted(folder.glob("*.npz")), corpus="acts")
    assert first == ["acts-b"] and sorted(second) == sorted(["acts-a", "acts-a-", "acts-b"])


def test_stale_temp_files_of_a_killed_write_are_removed(atlas_home):
    tables = atlas_home / "tables" / "memberships"
    tables.mkdir(parents=True)
    (tables / "lab-0.parquet").write_bytes(b"kept")
    stale = tables / ".lab-0.parquet.tmp-1a2b3c4d"
    stale.write_bytes(b"half a file")
    stale_dir = atlas_home / "tensors" / "activations" / ".lab-0.tmp-9f8e7d6c"
    stale_dir.mkdir(parents=True)
    (stale_dir / "activations.npy").write_bytes(b"half")
    fresh = tables / ".lab-1.parquet.tmp-0a0b0c0d"  # a write in progress elsewhere
    fresh.write_bytes(b"being written")
    ours_not = atlas_home / "dagster" / ".something.tmp-12345678"
    ours_not.write_bytes(b"dagster's")
    old = time.time() - 3600
    for path in (stale, stale_dir, stale_dir / "activations.npy", ours_not):
        os.utime(path, (old, old))
    assert sorted(remove_stale_temp_files(atlas_home)) == sorted([stale, stale_dir])
    assert fresh.exists() and ours_not.exists() and (tables / "lab-0.parquet").exists()
