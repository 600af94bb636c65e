"""Torch device, dtype and a batch size that fits a memory budget."""

from __future__ import annotations

import torch


def pick_device(preference: str = "auto") -> torch.device:
    """CUDA when present (or asked for), else CPU."""
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(preference)


def compute_dtype(device: torch.device, requested: str = "auto") -> torch.dtype:
    """The model's forward pass: fp32 on CPU (bf16 GEMMs are fast only with AMX, and fp32 is exact);
    bf16 on a GPU that has it (fp16's range, 65504, is exceeded by the massive activations of some
    models' residual streams), else fp16."""
    if requested != "auto":
        return getattr(torch, requested)
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def batch_size_for_budget(
    memory_budget_mb: float, sequence_length: int, hidden_size: int, n_layers: int, dtype_bytes: int = 4
) -> int:
    """Sequences per forward pass such that activations kept alive stay within the budget.

    A forward pass keeps roughly (n_layers + 4) hidden-state sized tensors plus the attention
    scores; a factor of 2 leaves room for the MLP's wider intermediate.
    """
    per_sequence = sequence_length * hidden_size * dtype_bytes * (n_layers + 4) * 2
    per_sequence += sequence_length * sequence_length * dtype_bytes * 16
    return max(1, int(memory_budget_mb * 2**20 // per_sequence))
