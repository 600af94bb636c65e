"""The torch device: CUDA when present, else CPU, with a dtype and a memory budget."""

from __future__ import annotations

import dagster as dg
import torch
from pydantic import Field

from latent_atlas.compute.device import compute_dtype, pick_device


class TorchDeviceResource(dg.ConfigurableResource):
    """Where the heavy kernels run."""

    device: str = Field(default="auto", description="'auto' (CUDA if present, else CPU), 'cpu', 'cuda', 'cuda:1' ...")
    dtype: str = Field(default="auto", description="'auto' (fp32 on CPU; bf16 on a GPU that has it, else fp16), or a torch dtype name")
    memory_budget_mb: float = Field(default=2048, description="Working memory for one batch; sets batch sizes")

    def torch_device(self) -> torch.device:
        return pick_device(self.device)

    def torch_dtype(self) -> torch.dtype:
        return compute_dtype(self.torch_device(), self.dtype)
