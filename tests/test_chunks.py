"""Chunk storage round-trips and every kind of bad NPZ is refused with the file named."""

import numpy as np
import pytest

from latent_atlas.data.chunks import FLOAT16_MAX, read_chunk, to_float16, write_chunk
from latent_atlas.data.errors import ChunkError
from latent_atlas.data.seed_chunks import NpzKeys, load_npz_chunk
from tests.conftest import write_seed_npz


def test_write_then_read_is_identical_and_memory_mapped(tmp_path):
    rng = np.random.default_rng(0)
    acts = rng.standard_normal((4, 8, 16)).astype(np.float16)
    mask = rng.random((4, 8)) > 0.3
    ids = rng.integers(0, 50, (4, 8)).astype(np.int32)
    write_chunk(tmp_path / "c", acts, mask, ids, {"layer": 3})
    chunk = read_chunk(tmp_path / "c")
    assert isinstance(chunk.activations, np.memmap)
    np.testing.assert_array_equal(chunk.activations, acts)
    np.testing.assert_array_equal(chunk.attention_mask, mask)
    np.testing.assert_array_equal(chunk.token_ids, ids)
    assert chunk.meta == {"layer": 3} and chunk.n_tokens == mask.sum()


def test_rewrite_replaces_and_leaves_no_temp_directories(tmp_path):
    for value in (1.0, 2.0):
        write_chunk(tmp_path / "c", np.full((1, 2, 3), value), np.ones((1, 2), bool), np.zeros((1, 2), int))
    assert read_chunk(tmp_path / "c").activations[0, 0, 0] == 2.0
    assert [p.name for p in tmp_path.iterdir()] == ["c"]


def test_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(ValueError):
        write_chunk(tmp_path / "c", np.ones((1, 2, 3)), np.ones((1, 2), bool), np.array([["x", "y"]]))
    assert list(tmp_path.iterdir()) == []


def test_valid_npz_loads(tmp_path):
    chunk = load_npz_chunk(write_seed_npz(tmp_path / "ok.npz"), expected_dim=32)
    assert chunk.activations.shape == (6, 16, 32) and chunk.attention_mask.dtype == bool


def test_configurable_key_names(tmp_path):
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "k.npz", acts=rng.standard_normal((2, 4, 8)), mask=np.ones((2, 4)), ids=np.ones((2, 4), int))
    chunk = load_npz_chunk(tmp_path / "k.npz", NpzKeys("acts", "mask", "ids"))
    assert chunk.n_tokens == 8


def _truncated(tmp_path):
    path = write_seed_npz(tmp_path / "bad.npz")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _pickled(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, activations=np.array([{"evil": 1}], dtype=object), attention_mask=np.ones((1, 1)), token_ids=np.ones((1, 1)))
    return path


def _nan(tmp_path):
    acts = np.zeros((3, 4, 32), np.float16)
    acts[2, 1, 5] = np.nan
    return write_seed_npz(tmp_path / "bad.npz", n_seq=3, seq_len=4, activations=acts)


def _inf(tmp_path):
    acts = np.zeros((3, 4, 32), np.float16)
    acts[0, 0, 0] = np.inf
    return write_seed_npz(tmp_path / "bad.npz", n_seq=3, seq_len=4, activations=acts)


def _beyond_float16(tmp_path):
    acts = np.zeros((3, 4, 32), np.float32)  # finite in float32, inf once cast to float16
    acts[1, 2, 3] = 1e5
    return write_seed_npz(tmp_path / "bad.npz", n_seq=3, seq_len=4, activations=acts)


BAD_INPUTS = {
    "truncated": (_truncated, "truncated or corrupt"),
    "pickled": (_pickled, "pickled"),
    "nan": (_nan, "NaN/Inf (first at sequence 2, position 1)"),
    "inf": (_inf, "NaN/Inf"),
    "beyond_float16": (_beyond_float16, "values up to 1e+05 exceed the float16 range (65504) (first at sequence 1, position 2)"),
    "wrong_dim": (lambda p: write_seed_npz(p / "bad.npz", dim=16), "dimension 16, expected 32"),
    "mask_shape": (lambda p: write_seed_npz(p / "bad.npz", attention_mask=np.ones((6, 15), bool)), "attention mask shape"),
    "token_shape": (lambda p: write_seed_npz(p / "bad.npz", token_ids=np.ones((5, 16), np.int32)), "token ids shape"),
    "empty": (lambda p: write_seed_npz(p / "bad.npz", attention_mask=np.zeros((6, 16), bool)), "empty"),
    "no_sequences": (lambda p: write_seed_npz(p / "bad.npz", n_seq=0), "empty"),
    "missing_key": (lambda p: np.savez(p / "bad.npz", activations=np.ones((1, 2, 32))) or p / "bad.npz", "missing arrays"),
    "not_npz": (lambda p: (p / "bad.npz").write_text("hello") and p / "bad.npz", "truncated or corrupt"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_npz_names_file_and_problem(tmp_path, case):
    make, expected = BAD_INPUTS[case]
    path = make(tmp_path)
    with pytest.raises(ChunkError) as err:
        load_npz_chunk(path, expected_dim=32)
    assert str(path) in str(err.value) and expected in str(err.value)


def test_write_refuses_values_beyond_float16_and_leaves_nothing(tmp_path):
    acts = np.ones((2, 3, 4), np.float32)
    acts[1, 0, 2] = -1.2e5
    with pytest.raises(ChunkError) as err:
        write_chunk(tmp_path / "c", acts, np.ones((2, 3), bool), np.zeros((2, 3), int))
    message = str(err.value)
    assert str(tmp_path / "c") in message and "values up to 1.2e+05 exceed the float16 range (65504)" in message
    assert "sequence 1, position 0" in message
    assert list(tmp_path.iterdir()) == []


def test_to_float16_keeps_the_range_and_locates_the_first_bad_value():
    edge = np.array([[FLOAT16_MAX, -FLOAT16_MAX, 1.5]], np.float32)
    np.testing.assert_array_equal(to_float16(edge, "x"), edge.astype(np.float16))
    already = np.ones((2, 2), np.float16)
    assert to_float16(already, "x").dtype == np.float16
    rows = np.zeros((5_000_000, 1), np.float64)  # spans several cast blocks
    rows[4_999_999, 0] = np.nan
    with pytest.raises(ChunkError, match=r"^src: vectors contain NaN/Inf \(first at row 4999999\)"):
        to_float16(rows, "src", "vectors")


def _disk_bytes(folder):
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def test_stored_npz_chunk_is_a_reference_not_a_copy(tmp_path):
    npz = write_seed_npz(tmp_path / "seed.npz", n_seq=8, seq_len=32, dim=64)
    loaded = load_npz_chunk(npz, expected_dim=64)
    assert loaded.storage == "reference" and isinstance(loaded.activations, np.memmap)
    write_chunk(tmp_path / "c", loaded.activations, loaded.attention_mask, loaded.token_ids, {}, loaded.activations_ref)
    assert not (tmp_path / "c" / "activations.npy").exists()
    # the stored chunk holds mask, token ids and a reference: far less than the 32 KB of activations
    assert _disk_bytes(tmp_path / "c") < loaded.activations.nbytes / 4
    chunk = read_chunk(tmp_path / "c")
    with np.load(npz) as original:
        np.testing.assert_array_equal(chunk.activations, original["activations"])
        np.testing.assert_array_equal(chunk.attention_mask, original["attention_mask"])
    np.testing.assert_array_equal(read_chunk(tmp_path / "c", mmap=False).activations, chunk.activations)
    # a chunk written from a referenced chunk references the same file (identity whitening)
    write_chunk(tmp_path / "w", chunk.activations, chunk.attention_mask, chunk.token_ids, {}, chunk.activations_ref)
    assert read_chunk(tmp_path / "w").activations_ref.file == str(npz.resolve())


def test_compressed_or_float32_npz_falls_back_to_a_copy(tmp_path):
    rng = np.random.default_rng(2)
    arrays = {"attention_mask": np.ones((2, 4), bool), "token_ids": np.ones((2, 4), np.int32)}
    np.savez_compressed(tmp_path / "z.npz", activations=rng.standard_normal((2, 4, 8)).astype(np.float16), **arrays)
    np.savez(tmp_path / "f32.npz", activations=rng.standard_normal((2, 4, 8)).astype(np.float32), **arrays)
    for name in ("z.npz", "f32.npz"):
        loaded = load_npz_chunk(tmp_path / name)
        assert loaded.storage == "copy"
        write_chunk(tmp_path / name.replace(".npz", ""), loaded.activations, loaded.attention_mask,
                    loaded.token_ids, {}, loaded.activations_ref)
        stored = read_chunk(tmp_path / name.replace(".npz", ""))
        np.testing.assert_array_equal(stored.activations, loaded.activations.astype(np.float16))
        assert (tmp_path / name.replace(".npz", "") / "activations.npy").exists()


def test_reference_to_a_changed_file_names_it(tmp_path):
    npz = write_seed_npz(tmp_path / "seed.npz")
    loaded = load_npz_chunk(npz)
    write_chunk(tmp_path / "c", loaded.activations, loaded.attention_mask, loaded.token_ids, {}, loaded.activations_ref)
    write_seed_npz(npz, seed=5, n_seq=7)  # rewritten: another size and mtime
    with pytest.raises(ChunkError, match="seed.npz, which changed since it was registered; rerun it"):
        read_chunk(tmp_path / "c")
    npz.unlink()
    with pytest.raises(ChunkError, match="seed.npz, which cannot be read"):
        read_chunk(tmp_path / "c")
