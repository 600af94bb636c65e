"""Dense-tensor read throughput of chunk storage, as ratios to a raw `np.fromfile` in the same run.

    HF_HUB_OFFLINE=1 python benchmarks/storage.py [--gb 0.92] [--repeats 3] [--dim 2304]

Writes ~`--gb` GB of fp16 activations [n_seq, 128, dim] once as a chunk (latent_atlas.data.chunks.
write_chunk) and as the alternatives (uncompressed NPZ, Parquet FixedSizeList<fp16>, Arrow IPC /
Feather v2) into a temp directory under /tmp, then times, interleaved and `--repeats` times (best
kept), opening the file(s) (np.fromfile, read_chunk, np.load, pq.read_table ...) and then one of
two consumers, each the same for every format:

    touch  read every byte once where it lies: a wrapping uint64 sum over the bytes (memory-bound).
           Zero-copy formats (memmaps) are summed straight from the page cache.
    copy   end with one private, contiguous in-RAM ndarray: np.copyto into a preallocated buffer,
           or nothing more when the reader already returned one (np.fromfile, NPZ, readinto).

Warm = file fully in the page cache (checked with mincore before each timed read).
Cold = file dropped from the page cache with posix_fadvise(DONTNEED) before each timed read
(checked with mincore: residency printed). The VM's host may still cache the virtual disk, so
"cold" means cold for this kernel's page cache, not necessarily a physical disk read.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import mmap
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from latent_atlas.compute.cpu import describe  # noqa: E402
from latent_atlas.data.chunks import read_chunk, write_chunk  # noqa: E402

SEQ_LEN = 128
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]


# ---------------------------------------------------------------- page cache control
def residency(path: Path) -> float:
    """Fraction of the file's pages in the page cache (mincore on a fresh shared mapping)."""
    size = path.stat().st_size
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), "mmap failed")
        try:
            pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
            vec = (ctypes.c_ubyte * pages)()
            if _libc.mincore(addr, size, vec) != 0:
                raise OSError(ctypes.get_errno(), "mincore failed")
            return float(np.frombuffer(vec, np.uint8).__and__(1).mean())
        finally:
            _libc.munmap(addr, size)
    finally:
        os.close(fd)


def drop_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


# ---------------------------------------------------------------- the common consumer
def touch(a: np.ndarray) -> int:
    """Read every byte once: wrapping uint64 sum over a uint64 view (same work for every source)."""
    flat = a.reshape(-1).view(np.uint8)
    n8 = flat.size // 8 * 8
    return int(flat[:n8].view(np.uint64).sum(dtype=np.uint64)) + int(flat[n8:].sum())


def touch_blocks(blocks) -> int:
    return sum(touch(b) for b in blocks) & 0xFFFFFFFFFFFFFFFF


# ---------------------------------------------------------------- writers
def make_data(n_seq: int, dim: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    acts = np.empty((n_seq, SEQ_LEN, dim), np.float16)
    for start in range(0, n_seq, 64):
        stop = min(start + 64, n_seq)
        acts[start:stop] = rng.standard_normal((stop - start, SEQ_LEN, dim), np.float32)
    return acts


def fsl_array(flat_tokens: np.ndarray) -> pa.FixedSizeListArray:
    """[n_tokens, d] fp16 -> FixedSizeList<halffloat, d> (zero-copy over the numpy buffer)."""
    n, d = flat_tokens.shape
    return pa.FixedSizeListArray.from_arrays(pa.array(flat_tokens.reshape(-1), pa.float16()), d)


def write_all(root: Path, acts: np.ndarray) -> dict[str, Path]:
    n_seq, seq_len, dim = acts.shape
    mask = np.ones((n_seq, seq_len), bool)
    tokens = np.zeros((n_seq, seq_len), np.int32)
    files = {}
    chunk = write_chunk(root / "chunk", acts, mask, tokens, {"benchmark": True})
    files["npy"] = chunk / "activations.npy"
    files["npz"] = root / "chunk.npz"
    np.savez(files["npz"], activations=acts, attention_mask=mask, token_ids=tokens)
    tokens_2d = acts.reshape(-1, dim)
    schema = pa.schema([("activation", pa.list_(pa.float16(), dim))])
    files["parquet"] = root / "chunk.parquet"
    # Uncompressed, no dictionary: the most favourable Parquet settings for random fp16.
    with pq.ParquetWriter(files["parquet"], schema, compression="none", use_dictionary=False) as w:
        for start in range(0, len(tokens_2d), 64 * seq_len):
            w.write_table(pa.table([fsl_array(tokens_2d[start : start + 64 * seq_len])], schema=schema))
    files["arrow"] = root / "chunk.arrow"
    with pa.OSFile(str(files["arrow"]), "wb") as sink, pa.ipc.new_file(sink, schema) as w:
        for start in range(0, len(tokens_2d), 64 * seq_len):
            w.write_batch(pa.record_batch([fsl_array(tokens_2d[start : start + 64 * seq_len])], schema=schema))
    for f in files.values():
        drop_cache(f)  # fsync: a dirty page cannot be dropped later
    return files


# ---------------------------------------------------------------- readers
# Each reader opens its file(s) and returns (blocks, private): the activations as a list of
# ndarrays (zero-copy views where the format allows) and whether they already are one private,
# contiguous in-RAM array (np.fromfile, np.load of an NPZ, readinto) -- then "copy" has nothing to do.
def fsl_values(arr: pa.FixedSizeListArray) -> np.ndarray:
    return arr.flatten().to_numpy(zero_copy_only=True)


def npy_offset(path: Path) -> int:
    """Byte offset of the data in a .npy file (after its header)."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        reader(f)
        return f.tell()


def reader_fromfile(files, buffer):
    path = files["npy"]
    return [np.fromfile(path, dtype=np.float16, offset=npy_offset(path))], True


def reader_readinto(files, buffer):
    path = files["npy"]
    offset = npy_offset(path)
    view = memoryview(buffer.reshape(-1).view(np.uint8))
    with open(path, "rb", buffering=0) as f:
        f.seek(offset)
        got = 0
        while got < len(view):
            n = f.readinto(view[got:])
            if not n:
                break
            got += n
    return [buffer], True


def reader_chunk(files, buffer):
    return [read_chunk(files["npy"].parent).activations], False


def reader_npz(files, buffer):
    with np.load(files["npz"]) as npz:
        return [npz["activations"]], True


def reader_parquet(files, buffer):
    table = pq.read_table(files["parquet"])
    return [fsl_values(c) for c in table.column(0).chunks], False


def reader_arrow(files, buffer):
    source = pa.memory_map(str(files["arrow"]), "r")
    table = pa.ipc.open_file(source).read_all()
    return [fsl_values(c) for c in table.column(0).chunks], False


def copy_into(blocks, buffer) -> None:
    flat = buffer.reshape(-1)
    at = 0
    for b in blocks:
        b = b.reshape(-1)
        np.copyto(flat[at : at + b.size], b)
        at += b.size
    assert at == flat.size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gb", type=float, default=0.92, help="size of the fp16 activations (GB, 1e9 bytes)")
    parser.add_argument("--dim", type=int, default=2304)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats; the best is kept")
    parser.add_argument("--no-cold", action="store_true", help="skip the cold (page cache dropped) reads")
    parser.add_argument("--fresh-alloc", action="store_true",
                        help="leave glibc malloc as is: every large array is fresh mmap'd memory whose page "
                             "faults the readers that allocate (np.fromfile, NPZ) pay on every read")
    args = parser.parse_args()
    if not args.fresh_alloc:
        # The baseline at its best: large arrays come from the brk heap and freed memory is kept, so
        # np.fromfile (and NPZ) reuse already-faulted pages from one repeat to the next instead of
        # paying ~0.2 s/GB of zero-fill page faults that a long-running reader would not pay.
        _libc.mallopt(-4, 0)  # M_MMAP_MAX = 0
        _libc.mallopt(-1, 2**31 - 1)  # M_TRIM_THRESHOLD: never give freed memory back

    print(f"[machine] {describe()}")  # the CPU and kernels every figure below was measured with
    n_seq = max(1, round(args.gb * 1e9 / (SEQ_LEN * args.dim * 2)))
    nbytes = n_seq * SEQ_LEN * args.dim * 2
    root = Path(tempfile.mkdtemp(prefix="atlas-storage-bench-", dir="/tmp"))
    buffer = np.empty((n_seq, SEQ_LEN, args.dim), np.float16)
    buffer.fill(0)  # fault the destination in once, outside any timing
    try:
        t0 = time.perf_counter()
        acts = make_data(n_seq, args.dim)
        expected = touch(acts)
        files = write_all(root, acts)  # acts stays in RAM: the no-I/O ceiling row
        print(f"data: fp16 [{n_seq}, {SEQ_LEN}, {args.dim}] = {nbytes / 1e9:.3f} GB in {root} "
              f"(written in {time.perf_counter() - t0:.1f} s); repeats={args.repeats}, best kept; "
              f"allocator: {'fresh mmap per array' if args.fresh_alloc else 'freed memory reused (mallopt)'}")

        def reader_ram(files, buffer):
            return [acts], False

        methods = [  # (label, file key, reader)
            ("np.fromfile (baseline)", "npy", reader_fromfile),
            ("readinto(preallocated)", "npy", reader_readinto),
            (".npy memmap: read_chunk", "npy", reader_chunk),
            ("NPZ uncompressed np.load", "npz", reader_npz),
            ("Parquet FSL<fp16> (none)", "parquet", reader_parquet),
            ("Arrow IPC / Feather v2 mmap", "arrow", reader_arrow),
            ("in-RAM ndarray (no I/O: ceiling)", None, reader_ram),
        ]
        temps = ["warm"] if args.no_cold else ["cold", "warm"]
        consumers = ["touch", "copy"]
        best = {}
        residency_seen = {"warm": 1.0, "cold": 0.0}

        def run(label, key, reader, temp, consumer):
            path = files.get(key)
            if path is None:
                pass
            elif temp == "cold":
                drop_cache(path)
                residency_seen["cold"] = max(residency_seen["cold"], residency(path))
            else:
                if residency(path) < 1.0:
                    touch_blocks(reader(files, buffer)[0])  # warm it up, untimed
                    gc.collect()
                residency_seen["warm"] = min(residency_seen["warm"], residency(path))
            if consumer == "copy":
                buffer[:1].fill(0)  # poison: the check below must see this run's copy
                buffer[-1:].fill(0)
            start = time.perf_counter()
            blocks, private = reader(files, buffer)
            opened = time.perf_counter()
            if consumer == "touch":
                total = touch_blocks(blocks)
            elif not private:
                copy_into(blocks, buffer)
            end = time.perf_counter()
            if consumer == "copy":  # check, untimed
                total = touch_blocks(blocks) if private else touch(buffer)
            if total != expected:
                raise AssertionError(f"{label} {consumer}: checksum {total} != {expected}")
            del blocks
            gc.collect()  # drop mappings before the next drop_cache (mapped pages cannot be dropped)
            o, t = best.get((label, temp, consumer), (float("inf"), float("inf")))
            best[(label, temp, consumer)] = (min(o, opened - start), min(t, end - start))

        for rep in range(args.repeats):
            order = methods if rep % 2 == 0 else methods[::-1]  # interleave, alternate the order
            for consumer in consumers:
                for temp in temps:
                    for label, key, reader in order:
                        if key is not None or temp == "warm":  # the ceiling has no file to make cold
                            run(label, key, reader, temp, consumer)

        print(f"page cache residency checked with mincore: warm runs >= {residency_seen['warm']:.1%}, "
              f"cold runs <= {residency_seen['cold']:.1%} after posix_fadvise(DONTNEED)")
        titles = {
            "touch": "consumer = touch: read every byte once in place (uint64 sum; zero-copy formats skip the copy)",
            "copy": "consumer = copy: end with one private contiguous ndarray (np.copyto into a preallocated "
                    "buffer unless the reader already returns one)",
        }
        for consumer in consumers:
            base = {temp: best[(methods[0][0], temp, consumer)][1] for temp in temps}
            print()
            print(titles[consumer])
            header = f"{'method':<32} {'file GB':>7}"
            for temp in temps:
                header += f" | {temp + ' open s':>11} {temp + ' GB/s':>9} {'ratio':>6}"
            print(header)
            print("-" * len(header))
            for label, key, _ in methods:
                size = f"{files[key].stat().st_size / 1e9:>7.3f}" if key else f"{'-':>7}"
                line = f"{label:<32} {size}"
                for temp in temps:
                    if (label, temp, consumer) not in best:
                        line += f" | {'-':>11} {'-':>9} {'-':>6}"
                        continue
                    o, t = best[(label, temp, consumer)]
                    line += f" | {o:>11.4f} {nbytes / t / 1e9:>9.2f} {base[temp] / t:>6.2f}"
                print(line)
        print()
        print("GB/s = activation bytes / (open + consume); ratio = np.fromfile time / method time, same "
              "consumer and cache state (>1: faster than the baseline). Best of the repeats.")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
