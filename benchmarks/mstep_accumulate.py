"""The M-step's sparse accumulate (sum of p_ic x_i over kept entries) three ways, on one E-step block.

`python benchmarks/mstep_accumulate.py`: b=2048 rows, d=2304, k=512, 3 kept entries a row; prints
each way's max difference to F.embedding_bag (what estep.weighted_cluster_sums uses) and its ms per
block, mean of 30.
"""

import time
import warnings

import torch
import torch.nn.functional as F

B, D, K, KEPT = 2048, 2304, 512, 3


def main() -> None:
    torch.manual_seed(0)
    x = torch.randn(B, D)
    rows = torch.arange(B).repeat_interleave(KEPT)
    clusters, weights = torch.randint(0, K, (B * KEPT,)), torch.rand(B * KEPT)

    def embedding_bag():
        order = torch.argsort(clusters, stable=True)
        offsets = torch.zeros(K, dtype=torch.int64)
        torch.cumsum(torch.bincount(clusters, minlength=K)[:-1], 0, out=offsets[1:])
        return F.embedding_bag(rows[order], x, offsets, mode="sum", per_sample_weights=weights[order])

    def sparse_csr():
        matrix = torch.sparse_coo_tensor(torch.stack([clusters, rows]), weights, (K, B)).to_sparse_csr()
        return torch.sparse.mm(matrix, x)

    def index_add():
        return torch.zeros(K, D).index_add_(0, clusters, x.index_select(0, rows) * weights[:, None])

    reference = embedding_bag()
    warnings.simplefilter("ignore", UserWarning)  # torch's sparse-CSR beta notices
    for fn in (embedding_bag, sparse_csr, index_add):
        difference = float((fn() - reference).abs().max())
        start = time.perf_counter()
        for _ in range(30):
            fn()
        print(f"{fn.__name__:14s} {(time.perf_counter() - start) / 30 * 1000:6.2f} ms  max diff {difference:.1e}")


if __name__ == "__main__":
    main()
