"""Soft spherical clustering learned by streaming over chunks: the estimator (`model`:
`SequentialSoftClustering`), its config, the E-step kernels and their GEMMs, initialization,
reseeding, checkpoints and the sparse memberships it writes. May import `compute` and `data`.
"""
