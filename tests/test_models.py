"""Activation extraction on a real model (MiniLM): the hook reads exactly the residual stream."""

import numpy as np
import pytest
import torch

from latent_atlas.corpus import bbc_documents, tokenize_documents
from latent_atlas.device import batch_size_for_budget, pick_device
from latent_atlas.models import MINILM, extract_activations, load_model


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
