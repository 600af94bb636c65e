"""E-step kernels against their definitions: exact sparse softmax memberships, row loading, bf16 learning GEMM
and which CPUs get it by default."""

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import latent_atlas.clustering.estep as estep
from latent_atlas.clustering.estep import as_tensor, block_memberships, effective_precision, learning_dtype, load_rows
from latent_atlas.clustering.gemm import FP32_GEMMS, fp32_gemm, fp32_mm, use_fp32_gemm
from latent_atlas.clustering.model import SequentialSoftClustering
from latent_atlas.compute.cpu import avx512_kernels, bf16_unit, cpu_model, isa_flags
from latent_atlas.compute.memory import release_free_memory
from latent_atlas.data.chunks import DenseChunk
from latent_atlas.data.errors import ChunkError

REPO = Path(__file__).resolve().parents[1]


def dense_reference(x: torch.Tensor, centers: torch.Tensor, temperature: float, top_m: int, threshold: float,
                    library: str):
    """The definition, computed densely: p = softmax(cos / T); keep p >= threshold (the top always),
    at most top_m per row by decreasing p, ties to the lower cluster. Returns {(row, cluster): p}."""
    # the kernel's GEMM library and layout: identical similarities (a near-tie breaks the same way)
    centers_t = centers.T.contiguous()
    sims = torch.empty(x.shape[0], centers_t.shape[1])
    with use_fp32_gemm(library):
        fp32_mm(x, centers_t, sims)
    inv_norm = torch.linalg.vector_norm(x, dim=1).clamp_min(1e-12).reciprocal()
    top = sims.max(dim=1, keepdim=True).values
    e = ((sims - top) * (inv_norm[:, None] / temperature)).exp()
    p = e / e.sum(dim=1, keepdim=True)
    kept = {}
    for row in range(x.shape[0]):
        cut = min(float(e[row].sum()) * threshold, 1.0)
        ok = [c for c in range(centers.shape[0]) if float(e[row, c]) >= cut]
        ok.sort(key=lambda c: (-float(e[row, c]), c))
        kept.update({(row, c): float(p[row, c]) for c in ok[:top_m]})
    return kept


@pytest.mark.parametrize("library", FP32_GEMMS)  # every fp32 GEMM, whichever this CPU uses
@pytest.mark.parametrize("k, d, temperature, top_m, threshold", [
    (512, 64, 0.05, 8, 0.01),   # groups of 32
    (100, 32, 1.0, 8, 0.001),   # groups of 25, many kept entries cut to top_m
    (37, 16, 0.2, 40, 0.0),     # prime k: groups of 1; every cluster kept
    (7, 16, 0.5, 3, 0.0),       # threshold 0: exactly top_m per row
])
def test_block_memberships_match_the_dense_definition(k, d, temperature, top_m, threshold, library):
    gen = torch.Generator().manual_seed(k)
    x = torch.randn(300, d, generator=gen)
    centers = torch.nn.functional.normalize(torch.randn(k, d, generator=gen), dim=1)
    centers[1] = centers[0]  # an exact tie between two clusters in every row
    inv_norm = torch.linalg.vector_norm(x, dim=1).clamp_min(1e-12).reciprocal()
    with use_fp32_gemm(library):
        block = block_memberships(x.clone(), inv_norm, centers.T.contiguous(), temperature, top_m, threshold, {})

    got = {(int(r), int(c)): float(v) for r, c, v in zip(block.rows, block.clusters, block.values)}
    expected = dense_reference(x, centers, temperature, top_m, threshold, library)
    assert got.keys() == expected.keys()
    np.testing.assert_allclose([got[key] for key in expected], list(expected.values()), rtol=1e-6)
    order = block.rows * k + block.clusters
    assert torch.all(order[1:] > order[:-1])  # row-major, clusters ascending
    cos = torch.nn.functional.normalize(x.double(), dim=1) @ centers.double().T
    np.testing.assert_allclose(block.max_cosine, cos.max(dim=1).values, atol=1e-5)
    np.testing.assert_allclose(block.cosines, cos[block.rows, block.clusters], atol=1e-4)


def test_load_rows_by_runs_and_by_gather_agree():
    rng = np.random.default_rng(0)
    flat = rng.standard_normal((1000, 48)).astype(np.float16)
    runs = np.concatenate([np.arange(0, 100), np.arange(128, 250), np.arange(256, 300)])  # whole sequences
    scattered = np.sort(rng.choice(1000, 300, replace=False))
    for index in (runs, scattered, np.arange(5)):
        x, inv_norm = load_rows(flat, as_tensor(flat), index, {})
        expected = flat[index].astype(np.float32)
        assert np.array_equal(x.numpy(), expected)
        np.testing.assert_allclose(inv_norm.numpy(), 1 / np.linalg.norm(expected, axis=1), rtol=1e-6)


def test_bfloat16_learning_gemm_is_close_to_float32():
    gen = torch.Generator().manual_seed(0)
    centers = torch.nn.functional.normalize(torch.randn(64, 256, generator=gen), dim=1)
    labels = torch.randint(0, 64, (2000,), generator=gen)
    x = centers[labels] + 0.05 * torch.randn(2000, 256, generator=gen)
    inv_norm = torch.linalg.vector_norm(x, dim=1).reciprocal()
    exact = block_memberships(x.clone(), inv_norm, centers.T.contiguous(), 0.05, 8, 0.01, {})
    fast = block_memberships(x.clone(), inv_norm, centers.T.contiguous(), 0.05, 8, 0.01, {}, torch.bfloat16)
    assert torch.get_float32_matmul_precision() == "highest"  # the setting is restored
    error = (fast.max_cosine - exact.max_cosine).abs().max()
    assert error < 5e-3
    assert error > 0  # bf16 products did run, on any CPU (AMX, or operands rounded to bf16)

    def hard(block):
        dense = torch.zeros(2000, 64)
        dense[block.rows, block.clusters] = block.values
        return dense.argmax(dim=1)

    assert torch.equal(hard(fast), hard(exact)) and torch.equal(hard(exact), labels)
    assert effective_precision("float32", "cpu").startswith("float32")


def test_a_worker_without_bf16_gemm_multiplies_the_same_bf16_products(monkeypatch):
    # a Dask worker without AMX in a run the driver chose bf16 for: torch's GEMM would quietly stay fp32
    # there; operands rounded to bf16 give the products of the AMX bf16 GEMM (exact in fp32)
    gen = torch.Generator().manual_seed(1)
    centers = torch.nn.functional.normalize(torch.randn(64, 256, generator=gen), dim=1)
    x = centers[torch.randint(0, 64, (2000,), generator=gen)] + 0.05 * torch.randn(2000, 256, generator=gen)
    inv_norm = torch.linalg.vector_norm(x, dim=1).reciprocal()
    args = (inv_norm, centers.T.contiguous(), 0.05, 8, 0.01, {})
    exact = block_memberships(x.clone(), *args)
    here = block_memberships(x.clone(), *args, torch.bfloat16)  # bf16 GEMM where this CPU has one
    unit = estep._bf16_unit()
    monkeypatch.setattr(estep, "_bf16_unit", lambda: None)
    rows = x.clone()
    rounded = block_memberships(rows, *args, torch.bfloat16)
    bf16_error = (rounded.max_cosine - exact.max_cosine).abs().max()
    assert 0 < bf16_error < 5e-3  # bf16 products, not the exact ones
    gap = (rounded.max_cosine - here.max_cosine).abs()
    if unit == "AVX512-BF16":  # the same products, its output rounded to bf16 (8 bits of mantissa)
        assert (gap <= here.max_cosine.abs() * 2.0**-8 + 1e-6).all()
    else:  # AMX (fp32 output) or no unit: only the summation order differs
        assert gap.max() < bf16_error / 20
    assert torch.equal(rows, x)  # the caller's rows are left as they were (they feed the M-step)


@pytest.mark.parametrize("library", [None, *FP32_GEMMS])  # None: the one this CPU gets by default
def test_every_fp32_gemm_is_exact_fp32_on_this_cpu(library):
    # oneDNN where its fp32 GEMM is fp32 here (not bf16 products: those err ~1e-3), else MKL; 3000
    # rows = 46 x 64 + 56, so oneDNN's part and MKL's remainder are both checked
    gen = torch.Generator().manual_seed(2)
    x, centers_t = torch.randn(3000, 2304, generator=gen), torch.randn(2304, 512, generator=gen)
    out = torch.empty(3000, 512)
    with use_fp32_gemm(library) if library else contextlib.nullcontext():
        fp32_mm(x, centers_t, out)
    exact = x.double() @ centers_t.double()
    assert float((out.double() - exact).abs().max() / exact.abs().max()) < 1e-5
    assert fp32_gemm() in FP32_GEMMS and effective_precision("float32", "cpu").startswith("float32 (")


def test_inf_in_a_dense_chunk_is_refused():
    rng = np.random.default_rng(0)
    activations = rng.standard_normal((4, 16, 32)).astype(np.float32)
    model = SequentialSoftClustering(4, n_epochs=1).fit(activations.reshape(-1, 32))
    activations[2, 3, 5] = np.inf
    chunk = DenseChunk(activations, np.ones((4, 16), bool), np.zeros((4, 16), np.int32))
    with pytest.raises(ChunkError, match="NaN/Inf"):
        model.transform(chunk)


def resident_mb() -> float:
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmRSS:")) / 1024


@pytest.mark.parametrize("gemm_dtype", [torch.bfloat16, torch.float32])
def test_learning_gemm_memory_is_flat_over_many_block_sizes(gemm_dtype):
    # Every chunk ends on a different block size; oneDNN (the bf16 path, and fp32 where fp32_gemm picks
    # it) caches ~0.7 MB per distinct GEMM shape: without power-of-two pieces 150 sizes grew the
    # resident set by ~110 MB.
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2048, 2304, generator=gen)
    centers_t = torch.nn.functional.normalize(torch.randn(512, 2304, generator=gen), dim=1).T.contiguous()
    inv_norm = torch.linalg.vector_norm(x, dim=1).reciprocal()
    block_memberships(x[:2047], inv_norm[:2047], centers_t, 0.05, 8, 0.01, {}, gemm_dtype)  # warm-up
    release_free_memory()  # freed blocks back to the OS, so the measure is what stays allocated
    before = resident_mb()
    for rows in range(2040, 1000, -7):
        block_memberships(x[:rows], inv_norm[:rows], centers_t, 0.05, 8, 0.01, {}, gemm_dtype)
    release_free_memory()
    # the defect grew it by ~110 MB; a process that has run the rest of the suite drifts by up to ~30
    assert resident_mb() - before < 60


def cpuinfo(model: str, flags: str) -> str:
    """/proc/cpuinfo text of a 2-core CPU."""
    return "".join(f"processor\t: {i}\nmodel name\t: {model}\nflags\t\t: fpu sse2 {flags}\n\n" for i in range(2))


SAPPHIRE_RAPIDS = cpuinfo("Intel(R) Xeon(R) Platinum 8480+", "avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8")
ZEN4 = cpuinfo("AMD EPYC 9R14", "avx2 avx512f avx512_bf16")
ZEN3 = cpuinfo("AMD EPYC 7R13 Processor", "avx2 fma")
CASCADE_LAKE = cpuinfo("Intel(R) Xeon(R) Platinum 8259CL CPU", "avx2 avx512f avx512_vnni")  # emulated bf16 only


@pytest.mark.parametrize("text, capability, onednn_isa, unit", [
    (SAPPHIRE_RAPIDS, "AVX512", None, "AMX-BF16"),
    (SAPPHIRE_RAPIDS, "AVX512", "ALL", "AMX-BF16"),
    (SAPPHIRE_RAPIDS, "AVX512", "avx512_core_bf16", "AVX512-BF16"),  # AMX capped: bf16 tensors still multiply natively
    (SAPPHIRE_RAPIDS, "AVX512", "AVX512_CORE", None),
    (SAPPHIRE_RAPIDS, "AVX512", "AVX2", None),
    (SAPPHIRE_RAPIDS, "AVX2", None, None),  # ATEN_CPU_CAPABILITY=avx2
    (ZEN4, "AVX512", None, "AVX512-BF16"),  # no AMX: bf16 tensors on its dot-product instructions
    (ZEN4, "AVX512", "AVX512_CORE_VNNI", None),
    (ZEN4, "AVX2", None, None),  # the CI's AVX2 pass
    (ZEN3, "AVX2", None, None),
    (CASCADE_LAKE, "AVX512", None, None),  # torch's private mkldnn check says yes here
])
def test_native_bf16_unit_is_read_from_the_cpu_flags_and_caps(text, capability, onednn_isa, unit):
    assert isa_flags(text) <= {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}
    found, why = bf16_unit(isa_flags(text), capability, onednn_isa)
    assert found == unit
    assert bool(why) == (unit is None)  # a reason whenever there is no unit
    if unit is None and "bf16" in text:
        assert "capped" in why  # says which cap hides the unit


@pytest.mark.parametrize("text, capability, onednn_isa, avx512", [
    (ZEN4, "AVX512", None, True),  # the E-step's fp32 GEMM goes to oneDNN here
    (ZEN4, "AVX512", "AVX512_CORE", True),
    (ZEN4, "AVX512", "avx2", False),  # ONEDNN_MAX_CPU_ISA=AVX2: oneDNN's AVX2 kernels, MKL is used
    (ZEN4, "AVX2", None, False),  # ATEN_CPU_CAPABILITY=avx2 (the CI's AVX2 pass)
    (ZEN4, "AVX512", "NO_SUCH_ISA", True),  # a name oneDNN does not know is no cap
    (ZEN3, "AVX2", None, False),
    (CASCADE_LAKE, "AVX512", None, True),
])
def test_onednn_runs_avx512_only_where_the_cpu_and_caps_allow_it(text, capability, onednn_isa, avx512):
    assert avx512_kernels(isa_flags(text), capability, onednn_isa) == avx512


def test_cpu_model_and_flags_of_a_cpuinfo_text():
    assert cpu_model(ZEN3) == "AMD EPYC 7R13 Processor"
    assert isa_flags(ZEN3) == {"avx2"}
    assert isa_flags("") == set() and cpu_model("nothing here") != ""


@pytest.mark.parametrize("cap", [{"ATEN_CPU_CAPABILITY": "avx2"}, {"ONEDNN_MAX_CPU_ISA": "AVX2"}])
def test_auto_learning_precision_is_float32_under_an_avx2_cap(cap):
    # the cap is set from outside, for a child process only, as the CI's AVX2 pass does
    code = ("from latent_atlas.clustering.model import SequentialSoftClustering\n"
            "from latent_atlas.clustering.estep import effective_precision\n"
            "model = SequentialSoftClustering(4)\n"
            "print(model.learn_precision, '|', effective_precision(model.learn_precision, 'cpu'))\n")
    env = {**os.environ, **cap}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, check=True)
    chosen, ran = out.stdout.strip().split(" | ")
    assert chosen == "float32"
    assert ran.startswith("float32 (")


def test_auto_is_resolved_once_into_the_config():
    model = SequentialSoftClustering(4)
    assert model.learn_precision in ("float32", "bfloat16")  # concrete: workers and resumes use this one
    assert f'"learn_precision": "{model.learn_precision}"' in model.config.to_json()  # what checkpoints hold
    assert SequentialSoftClustering(4, learn_precision="float32").learn_precision == "float32"
    with pytest.raises(ValueError, match="not resolved"):
        learning_dtype("auto")  # a worker never picks a precision of its own
    with pytest.raises(ValueError, match="learn_precision"):
        SequentialSoftClustering(4, learn_precision="fp16")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_blocks_run_on_threads_give_the_sums_of_blocks_run_in_turn(seed):
    """chunk_estep_sums reduces its blocks in block order, whatever ran them (a thread pool here)."""
    from concurrent.futures import ThreadPoolExecutor

    from latent_atlas.clustering.config import ClusteringConfig
    from latent_atlas.clustering.estep_sums import chunk_estep_sums

    rng = np.random.default_rng(seed)
    directions = rng.standard_normal((6, 48))
    rows = (directions[rng.integers(0, 6, 700)] + 0.4 * rng.standard_normal((700, 48))).astype(np.float32)
    centers = rows[rng.choice(700, 8, replace=False)]
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    config = ClusteringConfig(n_clusters=8, block_size=64, reseed_candidates=16, learn_precision="float32", seed=seed)
    in_turn = chunk_estep_sums((rows, 0, 0), centers, config)
    with ThreadPoolExecutor(2) as pool:
        threaded = chunk_estep_sums((rows, 0, 0), centers, config, pool.map)
    assert in_turn.n_points == threaded.n_points == 700
    for field in ("sums", "mass", "removal_loss", "candidates", "candidate_scores"):
        assert np.array_equal(getattr(in_turn, field), getattr(threaded, field)), field
    assert (in_turn.max_cosine_sum, in_turn.weighted_cosine_sum) == (threaded.max_cosine_sum, threaded.weighted_cosine_sum)
    assert in_turn.mass.sum() > 0.9 * 700  # memberships were kept, not an empty reduction
