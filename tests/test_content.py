"""Content versions see every byte, the dtype and the shape, and nothing else (not the memory layout)."""

import numpy as np
import pytest
import torch

from latent_atlas.data.chunks import DenseChunk
from latent_atlas.data.content import chunk_version, content_version


def test_content_version_changes_with_any_byte_dtype_or_shape_and_only_then():
    x = np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32)
    base = content_version(x, {"b": 1, "a": [1, "two"]})
    assert content_version(x.copy(), {"a": [1, "two"], "b": 1}) == base  # key order does not matter
    assert content_version(np.asfortranarray(x), {"b": 1, "a": [1, "two"]}) == base  # nor the layout
    y = x.copy()
    y[3, 5] = np.nextafter(y[3, 5], np.float32(np.inf))
    assert content_version(y, {"b": 1, "a": [1, "two"]}) != base
    assert content_version(x.astype(np.float64), {"b": 1, "a": [1, "two"]}) != base
    assert content_version(x.reshape(6, 4), {"b": 1, "a": [1, "two"]}) != base
    assert content_version(x, {"b": 2, "a": [1, "two"]}) != base
    with pytest.raises(TypeError, match="Tensor"):
        content_version(torch.zeros(3))  # a tensor's str() is abbreviated: refused, never hashed by str
    with pytest.raises(TypeError, match="object array"):
        content_version(np.array(["a"] * 2000, dtype=object))  # so is an object array's repr()


def test_chunk_version_covers_mask_tokens_and_meta():
    acts = np.ones((2, 3, 4), np.float16)
    mask, ids = np.ones((2, 3), bool), np.arange(6, dtype=np.int32).reshape(2, 3)
    base = chunk_version(DenseChunk(acts, mask, ids, meta={"layer": 3}))
    assert chunk_version(DenseChunk(acts.copy(), mask.copy(), ids.copy(), meta={"layer": 3})) == base
    other_mask = mask.copy()
    other_mask[1, 2] = False
    assert chunk_version(DenseChunk(acts, other_mask, ids, meta={"layer": 3})) != base
    assert chunk_version(DenseChunk(acts, mask, ids + 1, meta={"layer": 3})) != base
    assert chunk_version(DenseChunk(acts, mask, ids, meta={"layer": 4})) != base
