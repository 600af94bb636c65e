"""The CUDA path end to end, in one short run: what a session lent a GPU runs first.

    python benchmarks/device_check.py [--device auto|cuda|cpu] [--small]

1. The device resource: `TorchDeviceResource(device="auto")` gives the device and the forward
   pass's dtype (bf16 on a GPU that has it, not fp16: fp16's 65504 is exceeded by some residual
   streams).
2. SmolLM2-135M to layer 15 on that device in that dtype: tokens/s, and the cosine of each token's
   activation to the fp32 CPU forward pass of the same sequences (the first 4).
3. The E-step at d=2304, k=512 on fp16 chunk directories: one learning pass (`fit_chunks`, 1 epoch,
   all points, learn_precision 'auto') and the membership pass (`transform`), in vectors/s, against a
   bare GEMM of the same shape on the same device (fp32 rows in device memory, fp32 and bf16).
4. A projection to the user's corpus (38.4M vectors, 300k sequences x 128 tokens): hours for the
   forward pass, one learning epoch and the membership pass at these rates.
`--small` shrinks every size so that the script itself can be checked on a CPU in about a minute.
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from latent_atlas.clustering.estep import effective_precision, resolve_precision  # noqa: E402
from latent_atlas.clustering.model import SequentialSoftClustering  # noqa: E402
from latent_atlas.compute.cpu import describe  # noqa: E402
from latent_atlas.data.chunks import read_chunk  # noqa: E402
from latent_atlas.data.models import SMOLLM2, extract_activations, load_model  # noqa: E402
from latent_atlas.data.paths import model_cache_dir  # noqa: E402
from latent_atlas.data.synthetic import write_synthetic_chunks  # noqa: E402
from resources.device import TorchDeviceResource  # noqa: E402

USER_VECTORS, DIM, K = 38_400_000, 2304, 512


def synchronized(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> float:
    synchronized(device)
    start = time.perf_counter()
    fn()
    synchronized(device)
    return time.perf_counter() - start


def forward(device: torch.device, dtype: torch.dtype, n_sequences: int, batch: int) -> float:
    """SmolLM2 tokens/s on the device; prints the cosine to the fp32 CPU pass."""
    ids = np.random.default_rng(0).integers(100, 40000, size=(n_sequences, 128))
    mask = np.ones_like(ids)
    model = load_model(SMOLLM2, model_cache_dir(), device, dtype)
    extract_activations(model, ids[:batch], mask[:batch], 15, batch)  # warm-up
    seconds = timed(lambda: extract_activations(model, ids, mask, 15, batch), device)
    here = extract_activations(model, ids[:4], mask[:4], 15, 4).astype(np.float32).reshape(-1, model.hidden_size)
    same = device.type == "cpu" and dtype == torch.float32  # the reference pass itself: no second load
    reference = model if same else load_model(SMOLLM2, model_cache_dir(), torch.device("cpu"), torch.float32)
    exact = extract_activations(reference, ids[:4], mask[:4], 15, 4).astype(np.float32).reshape(-1, model.hidden_size)
    cos = np.sum(here * exact, 1) / (np.linalg.norm(here, axis=1) * np.linalg.norm(exact, axis=1))
    print(f"[forward] SmolLM2-135M to layer 15, {dtype}, {n_sequences} x 128 tokens in batches of {batch}: "
          f"{ids.size / seconds:,.0f} tok/s; cosine to fp32 CPU per token: min {cos.min():.5f}, median {np.median(cos):.5f}")
    return ids.size / seconds


def estep(device: torch.device, n_chunks: int, n_sequences: int, k: int, reps: int = 5) -> tuple[float, float]:
    """(learning-pass vectors/s, membership-pass vectors/s) on the device; prints them against a bare GEMM."""
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_synthetic_chunks(Path(tmp), n_chunks=n_chunks, n_sequences=n_sequences, seq_len=128, dim=DIM,
                                       n_clusters=k, seed=0, format="dir")
        params = dict(n_clusters=k, n_epochs=1, max_points=10**9, seed=0, device=str(device), learn_precision="auto")
        SequentialSoftClustering(**params).fit_chunks(paths[:1])  # warm-up: kernels, buffers, page cache
        model = SequentialSoftClustering(**params)
        learn = timed(lambda: model.fit_chunks(paths), device)
        model.transform(paths[0])  # warm-up
        n = sum(read_chunk(p).n_tokens for p in paths)
        member = timed(lambda: [model.transform(p) for p in paths], device)
        rows = torch.randn(min(n, 65536), DIM, device=device)
        centers_t = torch.nn.functional.normalize(torch.randn(k, DIM, device=device), dim=1).T.contiguous()
        gemms = {}
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            a, b = rows.to(dtype), centers_t.to(dtype)
            a @ b  # warm-up
            gemms[name] = len(rows) / timed(lambda: [a @ b for _ in range(reps)], device) * reps
        precision = effective_precision(resolve_precision("auto", device), device)
    print(f"[E-step] N={n:,} vectors, d={DIM}, k={k}, on {device}; learning GEMM: {precision}")
    print(f"  bare GEMM, rows in device memory: fp32 {gemms['fp32']:,.0f} vec/s, bf16 {gemms['bf16']:,.0f} vec/s")
    print(f"  learning pass (fit_chunks, 1 epoch, all points): {n / learn:,.0f} vec/s = "
          f"{n / learn / gemms['fp32']:.2f} of the fp32 GEMM, {n / learn / gemms['bf16']:.2f} of the bf16 GEMM")
    print(f"  membership pass (transform, exact fp32): {n / member:,.0f} vec/s = {n / member / gemms['fp32']:.2f} of the fp32 GEMM")
    return n / learn, n / member


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="auto")
    parser.add_argument("--small", action="store_true", help="tiny sizes: check the script itself on a CPU")
    args = parser.parse_args()
    resource = TorchDeviceResource(device=args.device)
    device, dtype = resource.torch_device(), resource.torch_dtype()
    print(describe())
    if device.type == "cuda":
        print(f"GPU: {torch.cuda.get_device_name(device)}, {torch.cuda.get_device_properties(device).total_memory / 2**30:.0f} GiB")
    print(f"[device resource] TorchDeviceResource(device={args.device!r}): {device}, forward dtype {dtype}")
    tok_s = forward(device, dtype, 16 if args.small else 512, 8 if args.small else 64)
    learn, member = estep(device, 2 if args.small else 4, 32 if args.small else 512, 64 if args.small else K,
                          reps=1 if args.small else 5)
    print(f"[projection to {USER_VECTORS:,} vectors at these rates] forward pass {USER_VECTORS / tok_s / 3600:.2f} h, "
          f"one learning epoch {USER_VECTORS / learn / 3600:.2f} h, membership pass {USER_VECTORS / member / 3600:.2f} h "
          "(SmolLM2's d=576 forward; the E-step at d=2304; disk reads not included beyond the chunks here)")


if __name__ == "__main__":
    main()
