"""Residual-stream activations of tokenized sequences, in batches that fit a memory budget.

The one path from a TokenChunk to activations (tokenize_documents -> forward_batch_size ->
extract_activations): a CSV's documents go through it exactly as a corpus chunk's sequences do, so
both meet the whitening and the trees on the same footing.
"""

import numpy as np

from latent_atlas.compute.device import forward_batch_size
from latent_atlas.data.corpus import TokenChunk
from latent_atlas.data.models import LoadedModel, extract_activations


def sequence_activations(loaded: LoadedModel, tokens: TokenChunk, layer: int, memory_budget_mb: float) -> np.ndarray:
    """Activations after block `layer` of every token of `tokens` -> [n_seq, seq_len, hidden_size] fp16,
    as many sequences per forward pass as `memory_budget_mb` allows (on a CPU, a cache-sized batch)."""
    sequence_length = tokens.token_ids.shape[1]
    batch = forward_batch_size(loaded.device, memory_budget_mb, sequence_length, loaded.hidden_size, layer)
    return extract_activations(loaded, tokens.token_ids, tokens.model_mask, layer, batch)
