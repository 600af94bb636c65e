"""TopKCollector: the k highest-activating tokens per feature, with context, for any features.

Works for soft clusters and for SAE latents alike, inside or outside a training loop:

    collector = TopKCollector(n_features=4096, k=20, threshold=0.1, context=8)
    for batch in loader:
        collector.add(sae.encode(acts), batch_token_ids)   # [batch, seq, f] + [batch, seq]
    print(collector.report(decode=lambda ids: tokenizer.convert_ids_to_tokens(ids)))
    collector.save("topk.npz")

Each feature's top-k is a min-heap in array form: the stored values plus their minimum (the
heap root). A batch is prefiltered against max(threshold, root) per feature, and the survivors
are narrowed with argpartition for all features at once, so no token goes through heapq.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from latent_atlas.data.tables import read_npz, write_npz


class TopKCollector:
    """Keeps, per feature, the k largest activations above `threshold` and a context window.

    Parameters: n_features; k (samples kept per feature); threshold (activations at or below
    it are neither kept nor counted in the statistics); context (tokens kept on each side)."""

    def __init__(self, n_features: int, k: int = 20, threshold: float = 0.0, context: int = 10):
        if n_features <= 0 or k <= 0 or context < 0:
            raise ValueError(f"TopKCollector: need n_features > 0, k > 0, context >= 0; got "
                             f"n_features={n_features}, k={k}, context={context}")
        self.n_features, self.k, self.threshold, self.context = int(n_features), int(k), float(threshold), int(context)
        f, w = self.n_features, 2 * self.context + 1
        self.values_ = np.full((f, k), -np.inf, np.float32)  # [f, k]; -inf marks an empty slot
        self.token_ids_ = np.full((f, k), -1, np.int32)  # [f, k]
        self.contexts_ = np.full((f, k, w), -1, np.int32)  # [f, k, 2*context+1]; -1 outside the sequence
        self.sequence_ids_ = np.full((f, k), -1, np.int64)  # [f, k]
        self.positions_ = np.full((f, k), -1, np.int32)  # [f, k]
        self.count_ = np.zeros(f, np.int64)  # activations above threshold
        self.sum_ = np.zeros(f)
        self.sumsq_ = np.zeros(f)
        self.max_ = np.full(f, -np.inf, np.float32)
        self.n_tokens_ = 0  # tokens seen
        self.n_sequences_ = 0  # sequences seen (default sequence ids)

    # ---- collecting ------------------------------------------------------------------------
    def add(self, activations, token_ids, sequence_ids=None, attention_mask=None) -> "TopKCollector":
        """Offer a batch. activations [batch, seq, f] with token_ids [batch, seq], or
        activations [n_tokens, f] with token_ids [n_tokens] (context is then the token alone).
        sequence_ids [batch] name the sequences (default: a running counter); attention_mask
        [batch, seq] drops padding. numpy arrays or torch tensors."""
        acts, tokens = _numpy(activations).astype(np.float32, copy=False), _numpy(token_ids)
        if acts.ndim == 2:
            acts, tokens = acts[:, None, :], tokens.reshape(-1, 1)
        if acts.ndim != 3 or acts.shape[2] != self.n_features or tokens.shape != acts.shape[:2]:
            raise ValueError(f"TopKCollector.add: activations must be [batch, seq, {self.n_features}] or "
                             f"[n, {self.n_features}] with matching token_ids; got {acts.shape} and {tokens.shape}")
        b, s, _ = acts.shape
        seq_ids = np.arange(self.n_sequences_, self.n_sequences_ + b) if sequence_ids is None else _numpy(sequence_ids)
        self.n_sequences_ += b
        flat = acts.reshape(b * s, self.n_features)
        if attention_mask is not None:
            keep = _numpy(attention_mask).reshape(-1).astype(bool)
            flat = np.where(keep[:, None], flat, -np.inf)
            tokens = np.where(keep.reshape(b, s), tokens, -1)  # padding never shows in a context
            self.n_tokens_ += int(keep.sum())
        else:
            self.n_tokens_ += b * s
        above = flat > self.threshold
        kept = np.where(above, flat, 0.0)
        self.count_ += above.sum(axis=0)
        self.sum_ += kept.sum(axis=0, dtype=np.float64)
        self.sumsq_ += np.square(kept, dtype=np.float64).sum(axis=0)
        self.max_ = np.maximum(self.max_, flat.max(axis=0))
        bar = np.maximum(self.threshold, self.values_.min(axis=1))  # heap roots
        active = np.flatnonzero(flat.max(axis=0) > bar)
        if active.size == 0:
            return self
        sub = flat[:, active]  # [n, fa]
        n_take = min(self.k, sub.shape[0])
        idx = np.argpartition(-sub, n_take - 1, axis=0)[:n_take] if sub.shape[0] > n_take else \
            np.broadcast_to(np.arange(n_take)[:, None], (n_take, active.size))
        vals = np.take_along_axis(sub, idx, axis=0).T  # [fa, n_take]
        idx = idx.T
        vals = np.where(vals > bar[active, None], vals, -np.inf)
        padded = np.pad(tokens.astype(np.int32), ((0, 0), (self.context, self.context)), constant_values=-1)
        row, pos = idx // s, idx % s
        ctx = padded[row[..., None], pos[..., None] + np.arange(2 * self.context + 1)]  # [fa, n_take, w]
        self._offer(active, vals, tokens[row, pos], ctx, seq_ids[row], pos)
        return self

    def merge(self, other: "TopKCollector") -> "TopKCollector":
        """Combine a collector that saw other data (e.g. another worker); same settings required."""
        if (other.n_features, other.k, other.threshold, other.context) != (self.n_features, self.k, self.threshold, self.context):
            raise ValueError("TopKCollector.merge: collectors differ in n_features, k, threshold or context")
        self._offer(np.arange(self.n_features), other.values_, other.token_ids_, other.contexts_,
                    other.sequence_ids_, other.positions_)
        self.count_ += other.count_
        self.sum_ += other.sum_
        self.sumsq_ += other.sumsq_
        self.max_ = np.maximum(self.max_, other.max_)
        self.n_tokens_ += other.n_tokens_
        self.n_sequences_ += other.n_sequences_
        return self

    def _offer(self, features, values, token_ids, contexts, sequence_ids, positions) -> None:
        """Keep the k largest of stored + offered samples for `features` (arrays [fa, m, ...])."""
        both = lambda mine, theirs: np.concatenate([mine[features], theirs], axis=1)  # noqa: E731
        vals = both(self.values_, values)
        keep = np.argpartition(-vals, self.k - 1, axis=1)[:, : self.k]
        for name, offered in (("values_", values), ("token_ids_", token_ids), ("contexts_", contexts),
                              ("sequence_ids_", sequence_ids), ("positions_", positions)):
            merged = both(getattr(self, name), offered)
            pick = keep if merged.ndim == 2 else keep[..., None]
            getattr(self, name)[features] = np.take_along_axis(merged, pick, axis=1)

    # ---- reading ---------------------------------------------------------------------------
    def top(self, feature: int) -> list[dict]:
        """Samples of one feature, highest activation first."""
        order = np.argsort(-self.values_[feature], kind="stable")
        return [
            {"activation": float(self.values_[feature, i]), "token_id": int(self.token_ids_[feature, i]),
             "sequence_id": int(self.sequence_ids_[feature, i]), "position": int(self.positions_[feature, i]),
             "context_token_ids": self.contexts_[feature, i].tolist()}
            for i in order if np.isfinite(self.values_[feature, i])
        ]

    def feature_stats(self, feature: int) -> dict:
        """max, mean, std and count of activations above threshold; density = count / tokens seen."""
        n = int(self.count_[feature])
        mean = self.sum_[feature] / n if n else 0.0
        var = max(self.sumsq_[feature] / n - mean**2, 0.0) if n else 0.0
        return {"feature": int(feature), "count": n, "max": float(self.max_[feature]) if n else None,
                "mean": float(mean), "std": float(np.sqrt(var)), "density": n / max(self.n_tokens_, 1)}

    def report(self, decode: Callable[[Sequence[int]], list[str]] | None = None,
               features: Sequence[int] | None = None, n_examples: int = 5) -> str:
        """Markdown: a table of feature statistics, then each feature's top examples with the
        activating token in **bold**. Default features: those that fired, most frequent first."""
        if features is None:
            fired = np.flatnonzero(self.count_ > 0)
            features = fired[np.argsort(-self.count_[fired], kind="stable")].tolist()
        decode = decode or (lambda ids: [str(t) for t in ids])
        lines = [f"# Top-{self.k} activations", "",
                 f"{self.n_tokens_} tokens seen, threshold {self.threshold}, {len(features)} features shown.", "",
                 "| feature | count | density | max | mean | std |", "|---:|---:|---:|---:|---:|---:|"]
        for f in features:
            st = self.feature_stats(f)
            lines.append(f"| {f} | {st['count']} | {st['density']:.4g} | {st['max'] or 0:.4g} | "
                         f"{st['mean']:.4g} | {st['std']:.4g} |")
        for f in features:
            lines += ["", f"## Feature {f}", ""]
            for sample in self.top(f)[:n_examples]:
                ids = sample["context_token_ids"]
                words = decode([t for t in ids if t >= 0])
                shown = iter(words)
                text = "".join(_bold(next(shown)) if i == self.context else next(shown)
                               for i, t in enumerate(ids) if t >= 0)
                lines.append(f"- {sample['activation']:.3f} (sequence {sample['sequence_id']}, position "
                             f"{sample['position']}): {text.replace(chr(10), ' ')}")
        return "\n".join(lines) + "\n"

    # ---- disk ------------------------------------------------------------------------------
    _STATE = ("values_", "token_ids_", "contexts_", "sequence_ids_", "positions_", "count_", "sum_", "sumsq_", "max_")

    def save(self, path: str | Path) -> Path:
        """One .npz (no pickles), written to a temp file and renamed."""
        meta = {"n_features": self.n_features, "k": self.k, "threshold": self.threshold, "context": self.context,
                "n_tokens": self.n_tokens_, "n_sequences": self.n_sequences_}
        return write_npz(path, {name: getattr(self, name) for name in self._STATE}, meta)

    @classmethod
    def load(cls, path: str | Path) -> "TopKCollector":
        arrays, meta = read_npz(path)
        out = cls(meta["n_features"], meta["k"], meta["threshold"], meta["context"])
        for name in cls._STATE:
            setattr(out, name, arrays[name])
        out.n_tokens_, out.n_sequences_ = meta["n_tokens"], meta["n_sequences"]
        return out


def _bold(token: str) -> str:
    """Markdown bold that keeps a token's leading space outside the markers (so it renders)."""
    body = token.lstrip()
    return f"{token[: len(token) - len(body)]}**{body}**" if body else token


def _numpy(x) -> np.ndarray:
    """numpy view of a numpy array or a (CPU/GPU) torch tensor, without importing torch."""
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
