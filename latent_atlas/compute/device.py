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


CPU_BATCH_TOKENS = 1024
"""Tokens per forward pass on a CPU. Larger batches do not use the cores better there, they only
spill the layer's activations out of cache: SmolLM2-135M at layer 15 ran 1.32x faster in batches of
1024 tokens than of 16,384 (the 2 GB budget's), 1.23x at 2048, 1.18x at 512 (AMD EPYC, 2 cores;
`benchmarks/forward_batch.py`). A GPU takes what the budget allows."""


def forward_batch_size(device, memory_budget_mb: float, sequence_length: int, hidden_size: int,
                       n_layers: int) -> int:
    """Sequences per forward pass: the memory budget's, and on a CPU at most CPU_BATCH_TOKENS tokens."""
    batch = batch_size_for_budget(memory_budget_mb, sequence_length, hidden_size, n_layers)
    if torch.device(device).type == "cpu":
        batch = min(batch, max(1, CPU_BATCH_TOKENS // sequence_length))
    return batch
