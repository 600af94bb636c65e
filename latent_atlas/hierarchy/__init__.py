"""Structure above the clusters: the hierarchy sample, recursive UMAP + HDBSCAN trees, seeded ensembles
and their stability, MDL merge histories, and association with an outcome. May import `compute`,
`data` and `clustering`.
"""
