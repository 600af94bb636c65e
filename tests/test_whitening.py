"""Whitening: merged per-chunk moments equal moments of the concatenation; whitened covariance is I."""

import numpy as np
import pytest

from latent_atlas.data.chunks import DenseChunk, StreamedChunk, read_chunk, write_chunk, write_streamed_chunk
from latent_atlas.data.errors import ChunkError
from latent_atlas.data.whitening import (Moments, Whitening, covariance_check, covariance_error, held_out_check,
                                         held_out_size)


def _correlated(n, d, seed):
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((d, d)) * np.linspace(0.1, 5, d)
    return rng.standard_normal((n, d)) @ mix + rng.standard_normal(d) * 3


def test_merged_moments_equal_concatenated():
    parts = [_correlated(n, 12, s) for s, n in enumerate((100, 7, 5000))]
    merged = Moments.zeros(12)
    for part in parts:
        merged.merge_(Moments.of_vectors(part))
    whole = Moments.of_vectors(np.concatenate(parts))
    assert merged.count == whole.count
    np.testing.assert_allclose(merged.total, whole.total, rtol=1e-12)
    np.testing.assert_allclose(merged.outer, whole.outer, rtol=1e-12)


def test_chunk_moments_use_attended_positions_only(tmp_path):
    rng = np.random.default_rng(0)
    acts = rng.standard_normal((3, 5, 4)).astype(np.float16)
    mask = rng.random((3, 5)) > 0.4
    acts[~mask] = 1000  # padding garbage must not count
    write_chunk(tmp_path / "c", acts, mask, np.zeros((3, 5), int))
    m = Moments.of_chunk(read_chunk(tmp_path / "c"))
    np.testing.assert_allclose(m.mean, acts[mask].astype(np.float64).mean(0), rtol=1e-6)


def _offset(n, d, seed):
    """float32 activations-like vectors: mean ~50 (spread 1 across dimensions), per-dimension spread
    0.2 to 2, one massive direction (spread 30), correlated."""
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((d, d)) / np.sqrt(d) * np.linspace(0.2, 2, d)
    mix[0] *= 30
    return (rng.standard_normal((n, d)) @ mix + 50 + rng.standard_normal(d)).astype(np.float32)


def _relative_errors(moments, reference) -> tuple[float, float]:
    """Largest errors of the mean and of the covariance relative to the dimensions' spreads: what the
    whitening divides by."""
    spread = np.sqrt(np.diag(reference.covariance))
    return (float((np.abs(moments.mean - reference.mean) / spread).max()),
            float((np.abs(moments.covariance - reference.covariance) / np.outer(spread, spread)).max()))


@pytest.mark.parametrize("seed", range(4))
def test_float32_moments_of_offset_vectors_match_float64(seed):
    # float32 vectors get a float32 product (shifted by each block's mean); a float64 copy of the same
    # vectors gets the float64 product: the reference
    x = _offset(24_000, 256, seed)
    fit, held_out = x[:20_000], x[20_000:]
    fast, reference = Moments.of_vectors(fit), Moments.of_vectors(fit.astype(np.float64))
    assert fast.count == reference.count
    # float32 sums over a block of 4096 rows of correlated dimensions err by up to ~2^-24·sqrt(4096) = 4e-6
    # (float32 mean_ itself rounds 50 by 4e-6)
    mean_error, covariance_error_ = _relative_errors(fast, reference)
    assert mean_error < 1e-5 and covariance_error_ < 1e-5  # measured <= 3.6e-8 and <= 1.5e-7 (seeds 0-3)
    naive = Moments(len(fit), fit.sum(0, dtype=np.float64), (fit.T @ fit).astype(np.float64))
    assert _relative_errors(naive, reference)[1] > 1e-3  # the cancellation the shift avoids is real here
    # the whitening fitted from them whitens vectors neither saw as well as the float64 one does
    errors = [covariance_error(Whitening.fit(m).transform(held_out))["relative_frobenius"] for m in (fast, reference)]
    assert abs(errors[0] - errors[1]) < 1e-5 * errors[1]


@pytest.mark.parametrize("padded", [False, True])
def test_float16_chunk_moments_match_float64_reference(tmp_path, padded):
    # 40 x 128 positions: more than one block of rows; padding makes the attended rows a gather
    rng = np.random.default_rng(int(padded))
    acts = _offset(40 * 128, 64, int(padded)).astype(np.float16).reshape(40, 128, 64)
    mask = np.arange(128) < rng.integers(1, 129, size=(40, 1)) if padded else np.ones((40, 128), bool)
    acts[~mask] = 1000  # padding garbage must not count
    write_chunk(tmp_path / "c", acts, mask, np.zeros((40, 128), int))
    moments = Moments.of_chunk(read_chunk(tmp_path / "c"))
    reference = Moments.of_vectors(acts[mask].astype(np.float64))
    assert moments.count == reference.count == mask.sum()
    assert max(_relative_errors(moments, reference)) < 1e-5  # measured 7.6e-7 and 1.7e-6 (padded: 3.6e-7, 1.6e-6)


@pytest.mark.parametrize("method", ["zca", "pca"])
def test_whitened_covariance_is_identity(method):
    x = _correlated(20000, 16, 1)
    w = Whitening.fit(Moments.of_vectors(x), method, eps=1e-9)
    err = covariance_error(w.transform(x))
    assert err["relative_frobenius"] < 1e-3 and abs(err["mean_diag"] - 1) < 1e-3


def test_zca_is_symmetric_and_closest_to_input():
    x = _correlated(5000, 8, 2)
    zca = Whitening.fit(Moments.of_vectors(x), "zca", eps=1e-9)
    pca = Whitening.fit(Moments.of_vectors(x), "pca", eps=1e-9)
    np.testing.assert_allclose(zca.matrix_, zca.matrix_.T, atol=1e-5)
    centered = x - x.mean(0)
    # ZCA is the whitening that moves the data least (Kessy et al. 2018)
    assert np.linalg.norm(zca.transform(x) - centered) < np.linalg.norm(pca.transform(x) - centered)


def test_eps_damps_directions_without_variance():
    x = _correlated(3000, 6, 3)
    x[:, 5] = x[:, 0]  # a rank-deficient direction
    w = Whitening.fit(Moments.of_vectors(x), "zca", eps=1e-3)
    assert np.isfinite(w.matrix_).all() and np.abs(w.transform(x)).max() < 100


def test_save_load_and_identity(tmp_path):
    w = Whitening.fit(Moments.of_vectors(_correlated(500, 5, 4)))
    w.save(tmp_path / "w.npz")
    back = Whitening.load(tmp_path / "w.npz")
    np.testing.assert_array_equal(back.matrix_, w.matrix_)
    assert back.method == "zca"
    x = np.ones((2, 5), np.float32)
    np.testing.assert_array_equal(Whitening.identity(5).transform(x), x)


def test_save_writes_exactly_the_path_given_and_nothing_else(tmp_path):
    moments = Moments.of_vectors(_correlated(200, 4, 7))
    w = Whitening.fit(moments)
    # the tensor IO manager saves to a temp name of its own, then renames it
    assert w.save(tmp_path / ".w.1a2b3c4d.tmp.npz") == tmp_path / ".w.1a2b3c4d.tmp.npz"
    assert moments.save(tmp_path / "moments.npz") == tmp_path / "moments.npz"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".w.1a2b3c4d.tmp.npz", "moments.npz"]
    np.testing.assert_array_equal(Whitening.load(tmp_path / ".w.1a2b3c4d.tmp.npz").eigenvalues_, w.eigenvalues_)
    back = Moments.load(tmp_path / "moments.npz")
    assert back.count == moments.count
    np.testing.assert_array_equal(back.outer, moments.outer)


def test_too_few_vectors():
    with pytest.raises(ValueError, match="at least 2 vectors"):
        Whitening.fit(Moments.of_vectors(np.ones((1, 3))))


def test_rank_deficient_whitening_is_finite_with_bounded_gain():
    # 10 vectors in 30 dimensions: rank 9, so most eigenvalues are ~0 and so was their median
    x = _correlated(20, 30, 5)
    fit, fresh = x[:10], x[10:]
    eps = 1e-3
    w = Whitening.fit(Moments.of_vectors(fit), "zca", eps=eps)
    gains = np.linalg.eigvalsh(w.matrix_.astype(np.float64))  # ZCA is symmetric: its eigenvalues are the gains
    spanned = w.eigenvalues_[:9]
    median_gain = 1 / np.sqrt(np.median(spanned) * (1 + eps))
    assert w.rank_ == 9
    assert gains.max() <= np.sqrt(1 + 1 / eps) * median_gain * 1.01  # no direction beyond ~32x a median one
    # vectors the fit never saw have variance in the null directions: finite and moderate, in fp16 too
    out = w.transform(fresh)
    assert np.isfinite(out).all() and np.abs(out).max() < 1e3
    chunk = DenseChunk(fresh[None].astype(np.float16), np.ones((1, 10), bool), np.zeros((1, 10), np.int32))
    assert np.isfinite(w.transform_chunk(chunk)).all()


def test_whitened_values_beyond_float16_fail_naming_the_chunk(tmp_path):
    acts = np.ones((2, 3, 4), np.float16)
    acts[1, 2] = 100
    write_chunk(tmp_path / "c", acts, np.ones((2, 3), bool), np.zeros((2, 3), int))
    too_strong = Whitening(np.zeros(4, np.float32), np.eye(4, dtype=np.float32) * 1000, "zca", 1e-3, np.ones(4))
    with pytest.raises(ChunkError) as err:
        too_strong.transform_chunk(read_chunk(tmp_path / "c"))
    assert str(err.value) == (f"{tmp_path / 'c'}: whitened activations: values up to 1e+05 exceed the float16 range "
                              "(65504) (first at sequence 1, position 2)")


def test_moments_without_a_subset_equal_moments_of_the_rest():
    x = _correlated(300, 5, 6)
    rest = Moments.of_vectors(x).without(Moments.of_vectors(x[:40]))
    direct = Moments.of_vectors(x[40:])
    assert rest.count == direct.count
    np.testing.assert_allclose(rest.outer, direct.outer, rtol=1e-10)
    np.testing.assert_allclose(rest.total, direct.total, rtol=1e-10, atol=1e-9)


def test_held_out_check_passes_on_a_sound_fit():
    x = _correlated(20000, 16, 7)
    held_out = x[np.random.default_rng(0).choice(len(x), held_out_size(len(x), 4000), replace=False)]
    result = held_out_check(Moments.of_vectors(x), held_out, "zca", 1e-9)  # _correlated's spectrum spans 1e7
    assert result["passed"] and result["n"] == 4000
    assert abs(result["mean_diag"] - result["expected_mean_diag"]) < 0.05


def test_whitened_covariance_is_identity_fails_on_defects_an_in_sample_check_misses():
    d = 16
    x, other = _correlated(5000, d, 8), _correlated(5000, d, 9)
    # whitening fitted on other data: perfect on its own vectors, wrong on these
    w_other = Whitening.fit(Moments.of_vectors(other), eps=1e-9)
    assert covariance_error(w_other.transform(other))["relative_frobenius"] < 0.01
    result = covariance_check(w_other, x[:1000], fit_count=len(other))
    assert not result["passed"] and "mean diagonal" in result["reason"]
    # too few vectors for the dimension: in-sample covariance is ~I by construction, held-out is not
    few = x[: d + 1]
    result = held_out_check(Moments.of_vectors(np.concatenate([few, x[-4:]])), x[-4:])
    assert not result["passed"] and "not more than d + 1" in result["reason"]
    # an eps that damps real variance
    result = held_out_check(Moments.of_vectors(x), x[:1000], eps=1.0)
    assert not result["passed"]
    # input declared already whitened that is not
    assert not covariance_check(Whitening.identity(d), x[:1000])["passed"]
    assert covariance_check(Whitening.identity(d), np.random.default_rng(1).standard_normal((4000, d)))["passed"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_transform_chunk_whitens_attended_rows_only_across_blocks(seed):
    """The stage's transform equals the row-wise transform cast to fp16 where the mask attends and is zero
    elsewhere, over several 64-sequence blocks, one of them without an attended position; an identity
    whitening (already whitened inputs) returns the attended activations as they are."""
    rng = np.random.default_rng(seed)
    d = 24
    acts = (rng.standard_normal((150, 9, d)) * rng.uniform(0.2, 3, d) + 40).astype(np.float16)
    mask = rng.random((150, 9)) < 0.7
    mask[64:128] = False
    chunk = DenseChunk(acts, mask, np.zeros(mask.shape, np.int32))
    w = Whitening.fit(Moments.of_chunk(chunk))
    out = w.transform_chunk(chunk)
    assert out.dtype == np.float16 and out.shape == acts.shape
    np.testing.assert_array_equal(out[mask], w.transform(acts[mask]).astype(np.float16))
    assert not out[~mask].any()
    np.testing.assert_array_equal(Whitening.identity(d).transform_chunk(chunk), np.where(mask[..., None], acts, 0))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_streamed_whitened_chunk_writes_the_same_files_as_the_whole_array(tmp_path, seed):
    """What the stage stores (the chunk made while written, blocks overlapping their writes) is the
    directory write_chunk writes from the whole transformed array, byte for byte, norms included; a
    block without an attended position and a last block shorter than the others included."""
    rng = np.random.default_rng(seed)
    d = 24
    acts = (rng.standard_normal((150, 9, d)) * rng.uniform(0.2, 3, d) + 40).astype(np.float16)
    mask = rng.random((150, 9)) < 0.7
    mask[64:128] = False
    tokens = rng.integers(0, 1000, mask.shape).astype(np.int32)
    chunk = DenseChunk(acts, mask, tokens, meta={"seed": seed})
    w = Whitening.fit(Moments.of_chunk(chunk))
    whole, norms = w.transform_chunk_with_norms(chunk)
    write_chunk(tmp_path / "whole", whole, mask, tokens, {"seed": seed})
    made = write_streamed_chunk(tmp_path / "streamed", StreamedChunk(
        acts.shape, mask, tokens, {"seed": seed}, lambda f: {"norms": w.transform_chunk_into(chunk, f)}))
    np.testing.assert_array_equal(made["norms"], norms)
    for name in ("activations.npy", "attention_mask.npy", "token_ids.npy", "meta.json"):
        assert (tmp_path / "streamed" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name


def test_a_streamed_chunk_that_fails_leaves_nothing_on_disk(tmp_path):
    """An fp16 overflow found in a later block, after earlier blocks were written: ChunkError naming the
    chunk and the place, and neither the chunk directory nor a temp directory is left behind."""
    acts = np.ones((130, 3, 4), np.float16)
    acts[129, 2] = 100
    write_chunk(tmp_path / "in", acts, np.ones((130, 3), bool), np.zeros((130, 3), int))
    chunk = read_chunk(tmp_path / "in")
    too_strong = Whitening(np.zeros(4, np.float32), np.eye(4, dtype=np.float32) * 1000, "zca", 1e-3, np.ones(4))
    out = tmp_path / "out" / "c"
    with pytest.raises(ChunkError, match="sequence 129, position 2"):
        write_streamed_chunk(out, StreamedChunk(acts.shape, chunk.attention_mask, chunk.token_ids, {},
                                                lambda f: {"norms": too_strong.transform_chunk_into(chunk, f)}))
    assert list((tmp_path / "out").iterdir()) == []
