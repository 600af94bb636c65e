"""What a fresh 600 MB output costs on this machine, and how much of its write a GEMM beside it hides.

    python benchmarks/first_touch.py [--rounds 3]

Prints (1) the first touch of 600 MB just allocated (np.zeros, one write per 4 KB page) right after the
previous 600 MB was freed, and after 3 and 10 s idle (a VM that hands freed memory back to its host pays
page faults again), each against a rewrite of the same pages; (2) a 600 MB file written in 32 MB pieces
alone, 14 fp32 GEMMs of 8192 x 2304 x 2304 alone (one whitened chunk's worth of X @ W), and both at once
(the write from a second thread), as whitened_activations' streamed chunk overlaps them.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time

import numpy as np

VALUES = 300_000_000  # 600 MB of fp16 / uint16: one whitened chunk of 1024 x 128 x 2304


def first_touch(idle: float) -> tuple[float, float]:
    time.sleep(idle)
    start = time.perf_counter()
    a = np.zeros(VALUES, np.uint16)
    a[::2048] = 1  # one value per 4 KB page
    touch = time.perf_counter() - start
    start = time.perf_counter()
    a[:] = 2
    return touch, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    for idle in (0, 0, 3, 10):
        touch, rewrite = first_touch(idle)
        print(f"600 MB after {idle:>2} s idle: first touch {touch:.3f} s, rewrite {rewrite:.3f} s")

    rng = np.random.default_rng(0)
    x = rng.standard_normal((8192, 2304), dtype=np.float32)
    w = rng.standard_normal((2304, 2304), dtype=np.float32)
    data = np.ones(VALUES, np.uint16)

    def gemms() -> float:
        start = time.perf_counter()
        for _ in range(14):
            x @ w
        return time.perf_counter() - start

    def write(path: str) -> float:
        start = time.perf_counter()
        with open(path, "wb") as f:
            for i in range(0, VALUES, 16_000_000):
                f.write(data[i : i + 16_000_000])
        os.unlink(path)
        return time.perf_counter() - start

    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "out")
        for _ in range(args.rounds):
            alone_gemm = gemms()
            time.sleep(3)
            alone_write = write(path)
            time.sleep(3)
            result = {}
            writer = threading.Thread(target=lambda: result.setdefault("write", write(path)))
            start = time.perf_counter()
            writer.start()
            beside = gemms()
            writer.join()
            both = time.perf_counter() - start
            time.sleep(3)
            print(f"GEMMs alone {alone_gemm:.2f} s, write alone {alone_write:.2f} s, one after the other "
                  f"{alone_gemm + alone_write:.2f} s; at once {both:.2f} s (GEMMs {beside:.2f}, write "
                  f"{result['write']:.2f}): {alone_gemm + alone_write - both:+.2f} s hidden")


if __name__ == "__main__":
    main()
