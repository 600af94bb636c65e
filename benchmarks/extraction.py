"""Extraction throughput (tokens/s) as ratios to the bare model forward pass, in the same run.

    HF_HUB_OFFLINE=1 ATLAS_HOME=/tmp/atlas-bench python benchmarks/extraction.py \
        [--model smollm2-135m|minilm-l6] [--sequences 64] [--batch-size 16] [--repeats 3] [--threads N]

Input: BBC News (bbc_documents, per_category grown until there are `--sequences` windows),
tokenized into windows of `--seq-len` (128) tokens. Every variant runs the same batches with the
same call, `model(input_ids=..., attention_mask=...)` under torch.inference_mode:

    (a) full forward        all n_layers blocks (+ final norm), output discarded
    (b) truncated forward   the block list temporarily replaced by its first `layer` blocks
    (c0) extract only       latent_atlas.data.models.extract_activations at `layer` (hook, stop, fp16)
    (c) extract + store     (c0) then latent_atlas.data.chunks.write_chunk to a temp dir (the asset's work)

Interleaved per batch (each batch runs (a), (b), (c0) back to back, rotating order) `--repeats`
times (default 3); a variant's time is the sum over batches of its best; write_chunk of the whole
chunk is timed once per repeat and its best added to (c0) to give (c). One untimed warm-up first.
Tokens/s counts every position of every window (padding included: the model computes it too).
The model cache (dequantized GGUF) goes under ATLAS_HOME (default here /tmp/atlas-bench).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ATLAS_HOME", "/tmp/atlas-bench")

import argparse
import contextlib
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from latent_atlas.compute.cpu import describe  # noqa: E402
from latent_atlas.data.chunks import read_chunk, write_chunk  # noqa: E402
from latent_atlas.data.corpus import tokenize_documents  # noqa: E402
from latent_atlas.data.documents import bbc_documents  # noqa: E402
from latent_atlas.data.models import layer_modules, extract_activations, load_model  # noqa: E402
from latent_atlas.data.paths import model_cache_dir  # noqa: E402


def bbc_windows(tokenizer, n_sequences: int, seq_len: int):
    """The first `n_sequences` windows of BBC News, taking more documents per category if needed."""
    per_category = 4
    while True:
        tokens = tokenize_documents(bbc_documents(per_category=per_category), tokenizer, seq_len)
        if len(tokens.token_ids) >= n_sequences or per_category > 500:
            break
        per_category *= 2
    n = min(n_sequences, len(tokens.token_ids))
    return tokens.token_ids[:n], tokens.model_mask[:n], tokens.analysis_mask[:n], per_category


@contextlib.contextmanager
def truncated(model: torch.nn.Module, n_layers: int, keep: int):
    """Temporarily replace the model's list of `n_layers` blocks by its first `keep` blocks."""
    blocks = layer_modules(model, n_layers)
    name = next(n for n, m in model.named_modules() if m is blocks)
    parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
    attr = name.rpartition(".")[2]
    setattr(parent, attr, torch.nn.ModuleList(list(blocks)[:keep]))
    try:
        yield
    finally:
        setattr(parent, attr, blocks)


@torch.inference_mode()
def forward(loaded, token_ids: np.ndarray, model_mask: np.ndarray, batch_size: int) -> None:
    """The bare pass, called exactly as extract_activations calls the model."""
    for start in range(0, len(token_ids), batch_size):
        stop = min(start + batch_size, len(token_ids))
        ids = torch.as_tensor(token_ids[start:stop], dtype=torch.long, device=loaded.device)
        mask = torch.as_tensor(model_mask[start:stop], dtype=torch.long, device=loaded.device)
        loaded.model(input_ids=ids, attention_mask=mask)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m", help="smollm2-135m (default) or minilm-l6")
    parser.add_argument("--sequences", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--layer", type=int, default=None, help="default: the model's middle layer")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats; the best is kept")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"[machine] {describe()}")  # the CPU and kernels every figure below was measured with

    t0 = time.perf_counter()
    loaded = load_model(args.model, model_cache_dir(), torch.device("cpu"))
    load_s = time.perf_counter() - t0
    layer = args.layer or loaded.default_layer
    token_ids, model_mask, analysis_mask, per_category = bbc_windows(loaded.tokenizer, args.sequences, args.seq_len)
    n_tokens = token_ids.size
    out_root = Path(tempfile.mkdtemp(prefix="atlas-extraction-bench-", dir="/tmp"))
    print(f"model {args.model}: {loaded.n_layers} layers, d={loaded.hidden_size}, loaded in {load_s:.1f} s; "
          f"layer {layer}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"input: {len(token_ids)} BBC windows x {args.seq_len} tokens = {n_tokens} positions "
          f"({int(model_mask.sum())} real tokens; per_category={per_category}); batch size {args.batch_size}; "
          f"repeats={args.repeats}, interleaved, best kept")

    batches = [slice(b, min(b + args.batch_size, len(token_ids))) for b in range(0, len(token_ids), args.batch_size)]
    acts = np.empty((*token_ids.shape, loaded.hidden_size), np.float16)
    written = {}

    def run_full(sl):
        forward(loaded, token_ids[sl], model_mask[sl], args.batch_size)

    def run_truncated(sl):
        with truncated(loaded.model, loaded.n_layers, layer):
            forward(loaded, token_ids[sl], model_mask[sl], args.batch_size)

    def run_extract(sl):
        acts[sl] = extract_activations(loaded, token_ids[sl], model_mask[sl], layer, args.batch_size)

    def run_store():
        written["path"] = write_chunk(
            out_root / "chunk", acts, analysis_mask, token_ids,
            {"model": args.model, "layer": layer, "benchmark": True},
        )

    variants = [
        ("(a) full forward", run_full),
        (f"(b) forward truncated to layer {layer}", run_truncated),
        ("(c0) extract_activations only", run_extract),
    ]
    # Interleaved per batch: every variant runs on the same batch back to back (rotating order),
    # so they see the same machine load; a variant's time is the sum over batches of its best.
    per_batch = {label: np.full((args.repeats, len(batches)), np.inf) for label, _ in variants}
    store = []
    try:
        for _, fn in variants:  # warm-up on the first batch, untimed
            fn(batches[0])
        for rep in range(args.repeats):
            for i, sl in enumerate(batches):
                k = (rep + i) % len(variants)
                for label, fn in variants[k:] + variants[:k]:
                    start = time.perf_counter()
                    fn(sl)
                    per_batch[label][rep, i] = time.perf_counter() - start
            start = time.perf_counter()
            run_store()
            store.append(time.perf_counter() - start)

        # Sanity: the stored chunk equals the block-`layer` output of an un-hooked full pass.
        chunk = read_chunk(written["path"])
        with torch.inference_mode():
            n = min(args.batch_size, len(token_ids))
            out = loaded.model(
                input_ids=torch.as_tensor(token_ids[:n], dtype=torch.long),
                attention_mask=torch.as_tensor(model_mask[:n], dtype=torch.long),
                output_hidden_states=True,
            )
        ref = out.hidden_states[layer].float().numpy()
        got = np.asarray(chunk.activations[:n], dtype=np.float32)
        real = model_mask[:n]
        err = float(np.abs(got - ref)[real].max() / np.abs(ref[real]).max())
        chunk_mb = sum(f.stat().st_size for f in written["path"].iterdir()) / 1e6
    finally:
        shutil.rmtree(out_root, ignore_errors=True)

    best = {label: float(t.min(0).sum()) for label, t in per_batch.items()}
    median = {label: float(np.median(t.sum(1))) for label, t in per_batch.items()}
    label_c = "(c) extract + write_chunk"
    best[label_c] = best["(c0) extract_activations only"] + min(store)
    median[label_c] = median["(c0) extract_activations only"] + float(np.median(store))
    t_full, t_trunc, t_c = best["(a) full forward"], best[variants[1][0]], best[label_c]
    print(f"{'variant':<36} {'best s':>8} {'median s':>9} {'tokens/s':>10} {'vs (a) full':>12} {'vs (b) trunc':>13}")
    print("-" * 93)
    for label in best:
        t = best[label]
        print(f"{label:<36} {t:>8.3f} {median[label]:>9.3f} {n_tokens / t:>10.0f} "
              f"{t_full / t:>12.3f} {t_trunc / t:>13.3f}")
    print(f"write_chunk alone: best {min(store):.3f} s, median {float(np.median(store)):.3f} s")
    print("best = sum over batches of the per-batch best (median: of the per-repeat sums); (c) = (c0) + "
          "write_chunk; tokens/s and ratios from best times; ratio = reference time / variant time (>1 faster)")
    print(f"overhead of hook + fp16 + storage, (c)/(b): {t_trunc / t_c:.3f}; "
          f"speed of extraction vs a full forward, (c)/(a): {t_full / t_c:.3f}")
    print(f"check: stored chunk ({chunk_mb:.1f} MB on disk) vs hidden_states[{layer}] of a full pass, "
          f"max |diff| / max |ref| over real tokens = {err:.2e} (fp16 rounding ~1e-3)")


if __name__ == "__main__":
    main()
