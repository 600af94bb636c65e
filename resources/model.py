"""The language model whose activations we read, loaded offline and once per process."""

from __future__ import annotations

from functools import lru_cache

import dagster as dg
import torch
from pydantic import Field

from latent_atlas.data.models import SMOLLM2, LoadedModel, load_model, load_tokenizer
from latent_atlas.data.paths import model_cache_dir


@lru_cache(maxsize=2)
def _load(name: str, device: str, dtype: str) -> LoadedModel:
    return load_model(name, model_cache_dir(), torch.device(device), getattr(torch, dtype))


@lru_cache(maxsize=2)
def _load_tokenizer(name: str):
    # Tokenizing needs no weights: a full fp32 copy of the model just for its tokenizer would
    # double the model's memory beside the copy extraction loads on the device.
    return load_tokenizer(name, model_cache_dir())


class ModelResource(dg.ConfigurableResource):
    """A Hugging Face model from an installed package (see latent_atlas.data.models)."""

    name: str = Field(default=SMOLLM2, description="'smollm2-135m' (default), 'minilm-l6' (fast), or a local model dir")
    layer: int = Field(default=0, description="Residual stream after this block (1..n_layers); 0 = a middle layer")

    def load(self, device: torch.device, dtype: torch.dtype) -> LoadedModel:
        return _load(self.name, str(device), str(dtype).removeprefix("torch."))

    def tokenizer(self):
        return _load_tokenizer(self.name)

    def decoder(self):
        """ids -> display strings with this model's tokenizer."""
        return decoder_for(self.tokenizer())

    def layer_of(self, loaded: LoadedModel) -> int:
        return self.layer or loaded.default_layer


def decoder_for(tokenizer):
    """ids -> one display string per token; without a tokenizer (NPZ corpora), '<id>'."""
    if tokenizer is None:
        return lambda ids: [f"<{int(i)}>" for i in ids]
    return lambda ids: [tokenizer.decode([int(i)]) for i in ids]
