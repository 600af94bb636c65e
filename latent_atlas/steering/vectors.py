"""Steering: a cluster's intervention direction in the model's own coordinates, added to the residual
stream while the model generates.

Two coordinate systems. The atlas fits its directions on whitened activations z = (x − mean) @ W
(`InterventionVectors`: unit LDA and difference-of-means directions u). The model adds in the
residual stream x of the extraction layer. Adding v to x moves z by v @ W, so the residual vector
that moves z along u is the solution of v @ W = u: W is square and, for ZCA and PCA whitening, full
rank (eps damps the directions without variance, it never drops them), so the solution is exact; it
is solved by least squares in float64, which is the pseudo-inverse for a rank-deficient W (then
z moves by the part of u that W can reach, and `mapping_error` says how much was lost).

Natural scale: how far the cluster's members sit from the other tokens along u, in whitened units,
(mu_c+ − mu_c−) · u from the exact LDA moments (members weighted by membership, the rest by
1 − membership). The stored residual vector is scale · (the solution for u), so alpha = 1 moves a
typical non-member's whitened activation by as much as separates the cluster from the rest. For the
difference of means this residual vector is exactly the residual-stream difference of the means.

Generation is greedy (argmax, no sampling) with the key-value cache, a forward hook on the block
whose output the atlas reads (the point `models.extract_activations` captures) adding the vector at
every position from `from_position` on; alpha 0 adds zeros and reproduces the unsteered text exactly.
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from latent_atlas.data.models import LoadedModel, layer_modules, model_directory
from latent_atlas.data.tables import read_npz, write_npz
from latent_atlas.data.whitening import Whitening

KINDS = ("lda", "mean")  # the atlas's two directions: weighted LDA, difference of means


def residual_directions(whitening: Whitening, directions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(v [k, d], relative error [k]): v @ W = u for each whitened direction u [k, d], least squares in
    float64 (exact for a full-rank W; the pseudo-inverse solution otherwise)."""
    u = np.asarray(directions, np.float64)
    if whitening.method == "identity":
        return u.copy(), np.zeros(len(u))
    w = np.asarray(whitening.matrix_, np.float64)
    v = np.linalg.lstsq(w.T, u.T, rcond=None)[0].T  # W^T v^T = u^T
    error = np.linalg.norm(v @ w - u, axis=1) / np.maximum(np.linalg.norm(u, axis=1), 1e-30)
    return v, error


@dataclass
class SteeringVectors:
    """Per-cluster steering vectors in both coordinate systems (see the module docstring)."""

    whitened_lda: np.ndarray  # [k, d] unit LDA directions in whitened space (InterventionVectors.vectors)
    whitened_mean: np.ndarray  # [k, d] unit difference-of-means directions in whitened space
    residual_lda: np.ndarray  # [k, d] residual-stream vector at natural scale: moves z by scale_lda along whitened_lda
    residual_mean: np.ndarray  # [k, d] the same for the difference of means (= mu_c+ − mu_c− in the residual stream)
    scale_lda: np.ndarray  # [k] natural scale, whitened units: (mu_c+ − mu_c−) · whitened_lda
    scale_mean: np.ndarray  # [k] (mu_c+ − mu_c−) · whitened_mean = ||mu_c+ − mu_c−|| in whitened space
    mapping_error: np.ndarray  # [k, 2] relative error of v @ W = u (lda, mean); 0 up to rounding for full-rank W
    usage: np.ndarray  # [k] membership mass of each cluster over the fitting tokens (to rank clusters)
    model: str  # the model and layer whose residual stream the vectors live in
    layer: int

    @classmethod
    def from_moments(cls, whitening: Whitening, lda: np.ndarray, mean: np.ndarray, cluster_means: np.ndarray,
                     negative_means: np.ndarray, usage: np.ndarray, model: str, layer: int) -> "SteeringVectors":
        """From unit whitened directions lda, mean [k, d] and the whitened means of each cluster's
        members and non-members [k, d] (`LdaMoments.cluster_means`, `negative_means`)."""
        offset = np.asarray(cluster_means, np.float64) - np.asarray(negative_means, np.float64)
        scales, residuals, errors = [], [], []
        for u in (np.asarray(lda, np.float64), np.asarray(mean, np.float64)):
            scale = np.einsum("kd,kd->k", offset, u)
            v, error = residual_directions(whitening, u)
            scales.append(scale)
            residuals.append(v * scale[:, None])
            errors.append(error)
        return cls(np.asarray(lda, np.float32), np.asarray(mean, np.float32), residuals[0].astype(np.float32),
                   residuals[1].astype(np.float32), scales[0], scales[1], np.stack(errors, 1),
                   np.asarray(usage, np.float64), model, int(layer))

    @property
    def n_clusters(self) -> int:
        return int(self.whitened_lda.shape[0])

    def residual(self, cluster: int, kind: str = "lda") -> np.ndarray:
        """The residual-stream vector [d] at natural scale of one cluster; alpha multiplies it."""
        return getattr(self, f"residual_{_kind(kind)}")[self._check(cluster)]

    def whitened(self, cluster: int, kind: str = "lda") -> np.ndarray:
        """The unit whitened-space direction [d]."""
        return getattr(self, f"whitened_{_kind(kind)}")[self._check(cluster)]

    def _check(self, cluster: int) -> int:
        if not 0 <= int(cluster) < self.n_clusters:
            raise ValueError(f"cluster must be in 0..{self.n_clusters - 1}, got {cluster}")
        return int(cluster)

    _ARRAYS = ("whitened_lda", "whitened_mean", "residual_lda", "residual_mean", "scale_lda", "scale_mean",
               "mapping_error", "usage")

    def save(self, path: str | Path) -> Path:
        return write_npz(path, {n: getattr(self, n) for n in self._ARRAYS}, {"model": self.model, "layer": self.layer})

    @classmethod
    def load(cls, path: str | Path) -> "SteeringVectors":
        arrays, meta = read_npz(path)
        missing = [n for n in cls._ARRAYS if n not in arrays]
        if missing:
            raise ValueError(f"{path}: not a steering_vectors file, missing {missing}")
        return cls(**{n: arrays[n] for n in cls._ARRAYS}, model=str(meta["model"]), layer=int(meta["layer"]))


def _kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return kind


@dataclass
class CausalModel:
    """A causal language model (with its LM head) and its blocks; `loaded` views its bare transformer
    as `models.extract_activations` expects, sharing the weights."""

    name: str
    lm: torch.nn.Module
    tokenizer: object
    blocks: torch.nn.ModuleList
    device: torch.device

    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    @property
    def loaded(self) -> LoadedModel:
        config = self.lm.config
        return LoadedModel(self.name, self.lm.base_model, self.tokenizer, config.num_hidden_layers,
                           config.hidden_size, self.device)


def load_causal_model(name: str, cache_dir: Path, device: torch.device = torch.device("cpu")) -> CausalModel:
    """The model `name` (as `models.load_model` names it) with its LM head, offline, eval mode, fp32."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = model_directory(name, cache_dir)
    lm = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(directory)
    return CausalModel(name, lm, tokenizer, layer_modules(lm, lm.config.num_hidden_layers), device)


@contextmanager
def residual_addition(model: CausalModel, layer: int, vectors: np.ndarray | torch.Tensor | None,
                      from_position: int = 0):
    """While open, block `layer` (1..n_layers) adds vectors[b] ([B, d] or [d]) to the output of row b
    at every absolute position >= from_position. Yields the hook's state: `offset` is the absolute
    position of the next forward's first token (0 for a full pass; generation advances it)."""
    if not 1 <= layer <= model.n_layers:
        raise ValueError(f"layer must be in 1..{model.n_layers}, got {layer}")
    state = _HookState()
    if vectors is None:
        yield state
        return
    v = torch.as_tensor(np.asarray(vectors, np.float32) if not torch.is_tensor(vectors) else vectors,
                        dtype=torch.float32, device=model.device)
    v = v[None, None, :] if v.dim() == 1 else v[:, None, :]  # [B or 1, 1, d]

    def hook(_module, _inputs, output):
        hidden = output[0] if isinstance(output, tuple) else output
        positions = state.offset + torch.arange(hidden.shape[1], device=hidden.device)
        gate = (positions >= from_position).to(hidden.dtype)[None, :, None]
        steered = hidden + gate * v.to(hidden.dtype)
        return (steered, *output[1:]) if isinstance(output, tuple) else steered

    handle = model.blocks[layer - 1].register_forward_hook(hook)
    try:
        yield state
    finally:
        handle.remove()


@dataclass
class _HookState:
    offset: int = 0


@torch.inference_mode()
def greedy_generate(model: CausalModel, prompt_ids: np.ndarray, max_new_tokens: int, layer: int = 1,
                    vectors: np.ndarray | None = None, from_position: int = 0) -> np.ndarray:
    """Greedy continuations [B, max_new_tokens] of prompts [B, T] (equal length, no padding), with
    vectors [B, d] or [d] (or None) added at `layer` from `from_position` on. Never stops early: a
    fixed length keeps rows comparable (an end-of-text token is one more token)."""
    ids = torch.as_tensor(np.asarray(prompt_ids), dtype=torch.long, device=model.device)
    if ids.dim() != 2 or ids.shape[1] == 0:
        raise ValueError(f"prompt_ids must be [batch, length > 0], got shape {tuple(ids.shape)}")
    out = torch.empty((ids.shape[0], max_new_tokens), dtype=torch.long)
    with residual_addition(model, layer, vectors, from_position) as state:
        cache, step = None, ids
        # transformers renamed past_key_values to cache (5.x); the pin allows both
        name = "cache" if "cache" in inspect.signature(model.lm.forward).parameters else "past_key_values"
        for t in range(max_new_tokens):
            result = model.lm(input_ids=step, use_cache=True, logits_to_keep=1,  # only the next token's
                              **({name: cache} if cache is not None else {}))
            cache, state.offset = getattr(result, name), state.offset + step.shape[1]
            step = result.logits[:, -1].argmax(-1, keepdim=True)
            out[:, t] = step[:, 0].cpu()
    return out.numpy()


@torch.inference_mode()
def log_probs_and_activations(model: CausalModel, ids: np.ndarray, layer: int, vectors: np.ndarray | None = None,
                              capture: bool = False, last: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(next-token log-probabilities [B, T, V] fp32 (of the `last` positions only, [B, last, V], if
    last > 0), and if `capture` the residual stream after block `layer` [B, T, d] fp32, as
    extract_activations reads it) of token ids [B, T], teacher-forced, with vectors added at `layer`
    at every position (None: the unsteered model; the capture is taken before the addition)."""
    captured: list[torch.Tensor] = []
    handle = model.blocks[layer - 1].register_forward_hook(
        lambda _m, _i, output: captured.append(output[0] if isinstance(output, tuple) else output)) if capture else None
    try:
        with residual_addition(model, layer, vectors):
            logits = model.lm(input_ids=torch.as_tensor(np.asarray(ids), dtype=torch.long, device=model.device),
                              logits_to_keep=last).logits
    finally:
        if handle is not None:
            handle.remove()
    return torch.log_softmax(logits.float(), -1), (captured[0].float() if capture else None)


@dataclass
class SteeredText:
    """One prompt continued with and without a steering vector."""

    prompt: str
    unsteered: str
    steered: str
    cluster: int
    kind: str
    alpha: float
    from_position: int


class Steerer:
    """Steers the atlas's model in `home` (default $ATLAS_HOME or ./.atlas) with its clusters' vectors.

    Reads tensors/steering_vectors.npz (the `steering_vectors` asset) and the model from the model cache
    the pipeline wrote (`model_cache_dir`: home/models, or $ATLAS_MODEL_CACHE)."""

    def __init__(self, home: str | Path | None = None, device: str = "cpu"):
        from latent_atlas.data.paths import atlas_home, model_cache_dir

        self.home = Path(home).resolve() if home else atlas_home()
        path = self.home / "tensors" / "steering_vectors.npz"
        if not path.exists():
            raise FileNotFoundError(f"{path}: not found; materialize the steering_vectors asset first")
        self.vectors = SteeringVectors.load(path)
        self.model = load_causal_model(self.vectors.model, model_cache_dir(self.home), torch.device(device))

    def steer(self, prompt: str, cluster: int, alpha: float, kind: str = "lda", from_position: int = 0,
              max_new_tokens: int = 24) -> SteeredText:
        """Greedy continuations of `prompt` without and with alpha × the cluster's vector (natural scale)."""
        if not prompt.strip():
            raise ValueError("the prompt is empty")
        ids = np.asarray([self.model.tokenizer(prompt)["input_ids"]])
        vector = float(alpha) * self.vectors.residual(cluster, kind)
        rows = greedy_generate(self.model, np.repeat(ids, 2, 0), max_new_tokens, self.vectors.layer,
                               np.stack([np.zeros_like(vector), vector]), from_position)
        plain, steered = (self.model.tokenizer.decode(r, skip_special_tokens=True) for r in rows)
        return SteeredText(prompt, plain, steered, int(cluster), kind, float(alpha), int(from_position))
