"""Activation extraction on a real model (MiniLM): the hook reads exactly the residual stream."""

import numpy as np
import pytest
import torch

from latent_atlas.compute.device import batch_size_for_budget, pick_device
from latent_atlas.data.corpus import tokenize_documents
from latent_atlas.data.documents import bbc_documents
from latent_atlas.data.errors import ChunkError
from latent_atlas.data.models import MINILM, LoadedModel, extract_activations, load_model


@pytest.fixture(scope="module")
def minilm(tmp_path_factory):
    return load_model(MINILM, tmp_path_factory.mktemp("models"), torch.device("cpu"))


def test_hooked_layer_equals_hidden_states(minilm):
    tokens = tokenize_documents(bbc_documents(per_category=1)[:2], minilm.tokenizer, 32)
    ids, mask = tokens.token_ids[:5], tokens.model_mask[:5]
    with torch.inference_mode():
        hidden = minilm.model(
            input_ids=torch.as_tensor(ids, dtype=torch.long),
            attention_mask=torch.as_tensor(mask, dtype=torch.long),
            output_hidden_states=True,
        ).hidden_states
    for layer in (1, minilm.default_layer, minilm.n_layers):
        acts = extract_activations(minilm, ids, mask, layer, batch_size=2)
        assert acts.dtype == np.float16 and acts.shape == (5, 32, minilm.hidden_size)
        np.testing.assert_allclose(acts, hidden[layer].numpy(), atol=2e-2, rtol=1e-2)


def test_layer_out_of_range(minilm):
    with pytest.raises(ValueError, match="layer must be in 1..6"):
        extract_activations(minilm, np.zeros((1, 4), int), np.ones((1, 4), bool), 7, 1)


def test_device_and_budget():
    assert pick_device("auto").type in ("cpu", "cuda")
    small = batch_size_for_budget(64, 128, 576, 15)
    large = batch_size_for_budget(4096, 128, 576, 15)
    assert 1 <= small < large


class _Amplifier(torch.nn.Module):
    """A stand-in transformer whose one block multiplies its input: activations as large as we like."""

    def __init__(self, gain: float):
        super().__init__()
        self.layers = torch.nn.ModuleList([torch.nn.Identity()])
        self.gain = gain

    def forward(self, input_ids, attention_mask):
        return self.layers[0](input_ids[..., None].float().expand(-1, -1, 4) * self.gain)


def test_activations_beyond_float16_fail_before_they_become_inf():
    ids = np.array([[1, 2], [3, 4], [5, 1]])
    mask = np.ones_like(ids, bool)
    fine = LoadedModel("amplifier", _Amplifier(1e4), None, 1, 4, torch.device("cpu"))
    acts = extract_activations(fine, ids, mask, 1, batch_size=2)
    np.testing.assert_allclose(acts[:, :, 0], ids * 1e4, rtol=1e-3)  # 5e4: within range, kept
    huge = LoadedModel("amplifier", _Amplifier(1.5e4), None, 1, 4, torch.device("cpu"))
    with pytest.raises(ChunkError) as err:
        extract_activations(huge, ids, mask, 1, batch_size=2)
    # 5 x 1.5e4 = 7.5e4 is the only value past 65504, in the second batch: located in the whole chunk
    assert str(err.value) == ("model amplifier layer 1: activations: values up to 7.5e+04 exceed the float16 range "
                              "(65504) (first at sequence 2, position 0)")


def test_cpu_forward_batches_are_cache_sized_and_gpu_batches_follow_the_budget():
    from latent_atlas.compute.device import CPU_BATCH_TOKENS, forward_batch_size

    assert forward_batch_size("cpu", 4096, 128, 576, 15) == CPU_BATCH_TOKENS // 128
    assert forward_batch_size("cpu", 4096, 4096, 576, 15) == 1  # one long sequence still runs
    assert forward_batch_size("cpu", 16, 128, 576, 15) == batch_size_for_budget(16, 128, 576, 15)  # budget binds
    assert forward_batch_size("cuda", 4096, 128, 576, 15) == batch_size_for_budget(4096, 128, 576, 15)


def test_the_model_cache_is_the_homes_unless_one_is_shared(monkeypatch, tmp_path):
    from latent_atlas.data.paths import model_cache_dir

    monkeypatch.delenv("ATLAS_MODEL_CACHE", raising=False)
    monkeypatch.setenv("ATLAS_HOME", str(tmp_path / "home"))
    assert model_cache_dir() == (tmp_path / "home").resolve() / "models"
    assert model_cache_dir(tmp_path / "other") == tmp_path / "other" / "models"
    monkeypatch.setenv("ATLAS_MODEL_CACHE", str(tmp_path / "shared"))
    assert model_cache_dir() == model_cache_dir(tmp_path / "other") == (tmp_path / "shared").resolve()
