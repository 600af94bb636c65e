"""Whitening: merged per-chunk moments equal moments of the concatenation; whitened covariance is I."""

import numpy as np
import pytest

from latent_atlas.chunks import write_chunk, read_chunk
from latent_atlas.whitening import Moments, Whitening, covariance_error


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


def test_too_few_vectors():
    with pytest.raises(ValueError, match="at least 2 vectors"):
        Whitening.fit(Moments.of_vectors(np.ones((1, 3))))
