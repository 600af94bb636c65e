"""Synthetic activation chunks drawn from a known mixture of directions, for tests and benchmarks.

Every attended token belongs to one of `n_clusters` unit directions mu_j; its activation is
`norm * (s * mu_j + sqrt(1 - s^2) * u)` with u a random unit vector (near-orthogonal to mu_j in
high dimension), so its cosine to its own direction is ~`separation` (s) and to the other
directions ~0 +- 1/sqrt(d): a von Mises-Fisher-like cloud whose tightness is controlled by s.
Position 0 (a special token) and a random tail of each sequence (padding) are masked out; their
activations are noise, so code that ignores the mask is caught.

Chunks are written in the seed NPZ format (activations float16 [n_seq, seq_len, d],
attention_mask, token_ids, plus the true `labels` [n_seq, seq_len], -1 where masked), or as chunk
directories (`latent_atlas.data.chunks.write_chunk`) with the labels in `labels_<chunk>.npy` beside.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from latent_atlas.data.chunks import write_chunk
from latent_atlas.data.tables import save_npz

# Token ids come from a per-cluster vocabulary slice so that token statistics carry the labels.
_TOKENS_PER_CLUSTER = 50


def mixture_directions(n_clusters: int, dim: int, seed: int = 0) -> np.ndarray:
    """[n_clusters, dim] float32 unit directions, uniformly random on the sphere."""
    rng = np.random.default_rng([seed, 0])
    mu = rng.standard_normal((n_clusters, dim), dtype=np.float32)
    return mu / np.linalg.norm(mu, axis=1, keepdims=True)


def synthetic_chunk(
    directions: np.ndarray,
    n_sequences: int,
    seq_len: int,
    separation: float,
    padding_fraction: float,
    rng: np.random.Generator,
    modes: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Arrays of one chunk: activations [n_seq, seq_len, d] float16, mask, token ids, labels.

    modes: the mixture components this chunk draws from (default: all of them).
    """
    k, d = directions.shape
    modes = np.arange(k) if modes is None else np.asarray(modes)
    labels = modes[rng.integers(0, len(modes), size=(n_sequences, seq_len))]
    lengths = seq_len - rng.integers(0, int(padding_fraction * 2 * seq_len) + 1, size=n_sequences)
    mask = np.arange(seq_len)[None, :] < lengths[:, None]
    mask[:, 0] = False  # special token at the start of each sequence
    labels[~mask] = -1
    tokens = np.where(mask, labels * _TOKENS_PER_CLUSTER + rng.integers(0, _TOKENS_PER_CLUSTER, labels.shape), 0)
    acts = np.empty((n_sequences, seq_len, d), np.float16)
    for i in range(n_sequences):  # one sequence at a time keeps the float32 scratch small
        noise = rng.standard_normal((seq_len, d), dtype=np.float32)
        noise /= np.linalg.norm(noise, axis=1, keepdims=True)
        x = np.sqrt(1.0 - separation**2) * noise
        x[mask[i]] += separation * directions[labels[i, mask[i]]]
        x *= rng.lognormal(2.0, 0.25, size=(seq_len, 1)).astype(np.float32)  # activations are not unit-norm
        acts[i] = x
    return {"activations": acts, "attention_mask": mask, "token_ids": tokens.astype(np.int32), "labels": labels.astype(np.int32)}


def write_synthetic_chunks(
    out: str | Path,
    n_chunks: int = 4,
    n_sequences: int = 256,
    seq_len: int = 128,
    dim: int = 2304,
    n_clusters: int = 64,
    separation: float = 0.3,
    padding_fraction: float = 0.1,
    seed: int = 0,
    format: str = "npz",
    modes_per_chunk: int | None = None,
) -> list[Path]:
    """Write `n_chunks` chunks to `out` and return their paths (`chunk_00000.npz` or directories).

    separation: cosine between a token and its true direction, in (0, 1); lower is harder.
    padding_fraction: mean fraction of masked padding positions per sequence.
    format: "npz" (seed format, labels inside) or "dir" (chunk directory + labels_<chunk>.npy).
    modes_per_chunk: a sorted stream, as a corpus kept in topic order gives: chunk c holds only the
        components c*m .. c*m+m-1 (mod n_clusters); default: every chunk holds all of them.
    """
    if not 0 < separation < 1:
        raise ValueError(f"separation must be in (0, 1), got {separation!r}")
    if format not in ("npz", "dir"):
        raise ValueError(f"format must be 'npz' or 'dir', got {format!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    directions = mixture_directions(n_clusters, dim, seed)
    np.save(out / "directions.npy", directions)
    paths = []
    for c in range(n_chunks):
        rng = np.random.default_rng([seed, 1, c])
        modes = None if modes_per_chunk is None else (c * modes_per_chunk + np.arange(modes_per_chunk)) % n_clusters
        arrays = synthetic_chunk(directions, n_sequences, seq_len, separation, padding_fraction, rng, modes)
        name = f"chunk_{c:05d}"
        if format == "npz":
            path = save_npz(out / f"{name}.npz", arrays)
        else:
            labels = arrays.pop("labels")
            path = write_chunk(out / name, **arrays, meta={"synthetic": True, "separation": separation})
            np.save(out / f"labels_{name}.npy", labels)
        paths.append(path)
    return paths


def read_labels(chunk_path: str | Path) -> np.ndarray:
    """True labels [n_seq, seq_len] of a synthetic chunk (-1 where masked)."""
    chunk_path = Path(chunk_path)
    if chunk_path.suffix == ".npz":
        with np.load(chunk_path, allow_pickle=False) as npz:
            return npz["labels"]
    return np.load(chunk_path.parent / f"labels_{chunk_path.name}.npy")


def labelled_tokens(chunk_paths: list) -> tuple[np.ndarray, np.ndarray]:
    """(rows [n, d] float32, true labels [n]) of every attended token of synthetic NPZ chunks;
    loads them all, so for quality checks on small data only."""
    from latent_atlas.data.seed_chunks import load_npz_chunk

    rows, labels = [], []
    for path in chunk_paths:
        chunk = load_npz_chunk(path)
        rows.append(chunk.activations[chunk.attention_mask].astype(np.float32))
        labels.append(read_labels(path)[chunk.attention_mask])
    return np.concatenate(rows), np.concatenate(labels)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="latent-atlas synthetic", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--chunks", type=int, default=4)
    parser.add_argument("--sequences", type=int, default=256, help="sequences per chunk")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--dim", type=int, default=2304)
    parser.add_argument("--clusters", type=int, default=64)
    parser.add_argument("--separation", type=float, default=0.3, help="token-to-direction cosine, in (0, 1)")
    parser.add_argument("--padding", type=float, default=0.1, help="mean masked fraction per sequence")
    parser.add_argument("--format", choices=("npz", "dir"), default="npz")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    paths = write_synthetic_chunks(
        args.out, args.chunks, args.sequences, args.seq_len, args.dim, args.clusters,
        args.separation, args.padding, args.seed, args.format,
    )
    print(f"wrote {len(paths)} chunks to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
