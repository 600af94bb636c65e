"""Does the bf16 learning GEMM learn what the fp32 one does? One planted chunk (512 sequences x 128
tokens, d=2304, 512 planted directions, fp16), k=512, 3 epochs, fit with learn_precision float32 and
bfloat16 in one process: time, ARI of predict() against the planted labels, dead or moved clusters.

    python benchmarks/learning_precision.py
"""

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import adjusted_rand_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from latent_atlas.clustering.estep import effective_precision  # noqa: E402
from latent_atlas.clustering.model import SequentialSoftClustering  # noqa: E402
from latent_atlas.compute.cpu import describe  # noqa: E402
from latent_atlas.data.chunks import read_chunk  # noqa: E402
from latent_atlas.data.synthetic import write_synthetic_chunks  # noqa: E402


def main() -> None:
    print(f"[machine] {describe()}")
    with tempfile.TemporaryDirectory() as tmp:
        (path,) = write_synthetic_chunks(Path(tmp), n_chunks=1, n_sequences=512, seq_len=128, dim=2304,
                                         n_clusters=512, seed=0, format="dir")
        chunk = read_chunk(path)
        mask = np.asarray(chunk.attention_mask)
        labels = np.load(Path(tmp) / f"labels_{Path(path).name}.npy")
        labels = labels[mask] if labels.shape == mask.shape else labels
        x = chunk.activations[mask].astype(np.float32)
        print(f"data: {len(x):,} vectors, d=2304, 512 planted directions; k=512, 3 epochs")
        for precision in ("float32", "bfloat16"):
            start = time.perf_counter()
            model = SequentialSoftClustering(n_clusters=512, n_epochs=3, seed=0, learn_precision=precision)
            model.fit_chunks([path])
            seconds = time.perf_counter() - start
            print(f"  {precision:8s} ({effective_precision(precision, 'cpu')}): {seconds:5.1f} s  "
                  f"ARI vs planted {adjusted_rand_score(labels, model.predict(x)):.4f}  churn {model.churn()}")


if __name__ == "__main__":
    main()
