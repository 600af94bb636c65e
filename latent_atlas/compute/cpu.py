"""What this CPU offers the heavy kernels: its model, the ISA flags that matter, native bf16 matrix
units, and which BLAS kernels were loaded.

Fast paths are chosen by detecting the CPU, never by forcing a kernel (OPENBLAS_CORETYPE,
ONEDNN_MAX_CPU_ISA, ... are the environment's to set). Caps set from outside are respected: under
ATEN_CPU_CAPABILITY=avx2 or ONEDNN_MAX_CPU_ISA=AVX2 (the CI's AVX2 pass, which also sets
MKL_ENABLE_INSTRUCTIONS=AVX2 and NUMBA_CPU_NAME=haswell) the bf16 units count as absent, exactly as on
a CPU without them.

Native bf16 is read from /proc/cpuinfo (amx_bf16, avx512_bf16), not from torch's mkldnn bf16 check,
which also accepts AVX-512 CPUs without bf16 units (where a bf16 GEMM is emulated, slower than fp32).
"""

from __future__ import annotations

import os
import platform
from functools import lru_cache
from pathlib import Path

CAP_VARIABLES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "NUMBA_CPU_NAME",
                 "OPENBLAS_CORETYPE")
"""The variables through which each library's kernels are capped from outside (torch, oneDNN, MKL,
numba, OpenBLAS); named beside every benchmark figure, set by none of our code."""

ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
"""The /proc/cpuinfo flags that decide which kernels run fast."""

# oneDNN's ISA names (ONEDNN_MAX_CPU_ISA), lowest first; aliases share a rank.
_ONEDNN_RANK = {name: rank for rank, names in enumerate([
    ("SSE41",), ("AVX",), ("AVX2",), ("AVX2_VNNI",), ("AVX2_VNNI_2",), ("AVX512_CORE",), ("AVX512_CORE_VNNI",),
    ("AVX512_CORE_BF16",), ("AVX512_CORE_FP16", "AVX10_1_512"), ("AVX512_CORE_AMX", "AVX10_1_512_AMX"),
    ("AVX512_CORE_AMX_FP16", "AVX10_1_512_AMX_FP16"), ("AVX10_2_512",), ("AVX10_2_512_AMX_2",), ("ALL", "DEFAULT"),
]) for name in names}


@lru_cache(maxsize=1)
def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return ""


def cpu_model(cpuinfo: str | None = None) -> str:
    """The CPU's model name ('model name' in /proc/cpuinfo), else what the platform says."""
    for line in (_cpuinfo() if cpuinfo is None else cpuinfo).splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def isa_flags(cpuinfo: str | None = None) -> set[str]:
    """Which of ISA_FLAGS the CPU has (first 'flags' line of /proc/cpuinfo)."""
    text = _cpuinfo() if cpuinfo is None else cpuinfo
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split()) & set(ISA_FLAGS)
    return _torch_isa_flags() if cpuinfo is None and not text else set()


def _torch_isa_flags() -> set[str]:
    """No /proc/cpuinfo (not Linux): torch's cpuinfo-based hardware queries, which ignore emulation."""
    import torch

    queries = {"avx2": torch.cpu._is_avx2_supported, "avx512f": torch.cpu._is_avx512_supported,
               "avx512_bf16": torch.cpu._is_avx512_bf16_supported, "amx_tile": torch.cpu._is_amx_tile_supported}
    found = {flag for flag, query in queries.items() if query()}
    return found | ({"amx_bf16"} if "amx_tile" in found else set())  # every AMX CPU so far has both


def torch_capability() -> str:
    """torch's vector ISA ('AVX512', 'AVX2', 'DEFAULT'), after any ATEN_CPU_CAPABILITY cap."""
    import torch

    return torch.backends.cpu.get_cpu_capability()


def onednn_cap() -> str | None:
    """The oneDNN ISA cap set from outside (ONEDNN_MAX_CPU_ISA, or its old name DNNL_MAX_CPU_ISA)."""
    return os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or None


def bf16_unit(flags: set[str], capability: str, onednn_isa: str | None) -> tuple[str | None, str]:
    """(the bf16 matrix unit the learning GEMM can multiply on: 'AMX-BF16', 'AVX512-BF16' or None;
    and why None).

    The two units are used differently (latent_atlas.clustering.estep): on AMX, torch's fp32 GEMM takes bf16
    under matmul precision 'medium' (bf16 products, fp32 output); AVX512-BF16 alone ignores that hint
    (on an AMD EPYC it gave exact fp32 results at fp32 speed), but a GEMM of bf16 tensors runs on its
    dot-product instructions (bf16 output). A pure function of the CPU's flags, torch's capability and
    the oneDNN cap, so every CPU kind can be tested on any machine; an unknown oneDNN cap name is no
    cap (oneDNN ignores it too).
    """
    if not {"amx_bf16", "avx512_bf16"} & flags:
        return None, "no native bf16 on this CPU"
    if not capability.upper().startswith("AVX512"):
        return None, f"bf16 units capped: torch capability {capability}"
    rank = _onednn_rank(onednn_isa)
    if "amx_bf16" in flags and rank >= _ONEDNN_RANK["AVX512_CORE_AMX"]:
        return "AMX-BF16", ""
    if "avx512_bf16" in flags and rank >= _ONEDNN_RANK["AVX512_CORE_BF16"]:
        return "AVX512-BF16", ""
    return None, f"bf16 units capped: ONEDNN_MAX_CPU_ISA={onednn_isa}"


def _onednn_rank(onednn_isa: str | None) -> int:
    """The rank of a oneDNN cap name; no cap, or a name oneDNN does not know (it ignores those), is no cap."""
    return _ONEDNN_RANK.get((onednn_isa or "ALL").upper(), _ONEDNN_RANK["ALL"])


def avx512_kernels(flags: set[str], capability: str, onednn_isa: str | None) -> bool:
    """Whether oneDNN's kernels run AVX-512: the CPU has it and neither torch's capability nor a
    oneDNN cap holds it back. A pure function, like bf16_unit, so every CPU kind can be tested."""
    return "avx512f" in flags and capability.upper().startswith("AVX512") \
        and _onednn_rank(onednn_isa) >= _ONEDNN_RANK["AVX512_CORE"]


def onednn_avx512() -> bool:
    """avx512_kernels of this process's CPU, capability and caps."""
    return avx512_kernels(isa_flags(), torch_capability(), onednn_cap())


def native_bf16() -> tuple[str | None, str]:
    """bf16_unit of this process's CPU, capability and caps."""
    return bf16_unit(isa_flags(), torch_capability(), onednn_cap())


def default_learn_precision(device: str) -> str:
    """What learn_precision='auto' means here: 'bfloat16' where the bf16 GEMM keeps an fp32 output
    (CUDA, or a CPU with AMX-BF16), 'float32' elsewhere.

    Not on AVX512-BF16 alone: there the bf16 GEMM is 2x fp32 (benchmarks/clustering.py, docs) and
    learns planted clusters as well, but its output is rounded to bf16, and on the tests' tiny corpus
    (k=64 on ~3k tokens) more clusters were then judged dead or moved than few_dead_clusters allows.
    learn_precision='bfloat16' opts in."""
    import torch

    if torch.device(device).type == "cuda":
        return "bfloat16"
    return "bfloat16" if native_bf16()[0] == "AMX-BF16" else "float32"


def blas_kernels() -> list[str]:
    """Each loaded OpenBLAS/MKL/BLIS as 'owner library version kernel' (threadpoolctl); only the
    libraries already imported show up, so call this after importing faiss/numpy/torch."""
    from threadpoolctl import threadpool_info

    kernels = []
    for lib in threadpool_info():
        if lib.get("user_api") != "blas":
            continue
        owner = Path(lib["filepath"]).parent.name.removesuffix(".libs")  # faiss_cpu.libs -> faiss_cpu
        kernel = lib.get("architecture") or lib.get("threading_layer") or "?"
        kernels.append(f"{owner} {lib['internal_api']} {lib.get('version')} kernel={kernel}")
    return kernels


def describe() -> str:
    """One line for benchmark headers: CPU model, ISA flags, torch capability and caps, BLAS
    kernels loaded, and the learning GEMM learn_precision='auto' runs on this CPU."""
    flags = isa_flags()
    shown = " ".join(f if f in flags else f"-{f}" for f in ISA_FLAGS)
    unit, why = native_bf16()
    auto = default_learn_precision("cpu")
    gemm = f"bfloat16 ({unit})" if auto == "bfloat16" else f"float32 ({why or f'{unit}: opt in with bfloat16'})"
    caps = ", ".join(f"{k}={os.environ[k]}" for k in CAP_VARIABLES if k in os.environ)
    return (f"CPU: {cpu_model()} ({os.cpu_count()} cores) | ISA: {shown} | torch capability: {torch_capability()}"
            f"{f' (set from outside: {caps})' if caps else ''} | BLAS: {'; '.join(blas_kernels()) or 'none loaded'}"
            f" | learning GEMM (auto): {gemm}")
