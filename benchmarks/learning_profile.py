"""Where one learning pass spends its time, op by op (torch.profiler, self CPU time).

`python benchmarks/learning_profile.py [float32|bfloat16|auto]`: 2 synthetic fp16 chunk dirs
(~117k attended vectors, d=2304, 512 directions), k=512, 1 epoch, all points; prints the pass's
wall time (after a warm-up pass) and the 20 ops with the most self CPU time in a profiled pass.
"""

import sys
import tempfile
import time
from pathlib import Path

from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from latent_atlas.clustering.model import SequentialSoftClustering  # noqa: E402
from latent_atlas.compute.cpu import describe  # noqa: E402
from latent_atlas.data.synthetic import write_synthetic_chunks  # noqa: E402


def main() -> None:
    precision = sys.argv[1] if len(sys.argv) > 1 else "auto"
    print(describe())
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_synthetic_chunks(Path(tmp), n_chunks=2, n_sequences=512, seq_len=128, dim=2304,
                                       n_clusters=512, seed=0, format="dir")
        params = dict(n_clusters=512, n_epochs=1, max_points=100_000, seed=0, learn_precision=precision)
        SequentialSoftClustering(**params).fit_chunks(paths)  # warm-up: kernels, buffers, page cache
        start = time.perf_counter()
        SequentialSoftClustering(**params).fit_chunks(paths)
        print(f"learn_precision={precision}: one pass {time.perf_counter() - start:.3f} s")
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            SequentialSoftClustering(**params).fit_chunks(paths)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))


if __name__ == "__main__":
    main()
