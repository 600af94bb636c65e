"""What the clusters hold: mergeable per-chunk statistics and the cluster_stats table, exemplars in
context, intervention vectors, and the standalone top-k collector. May import `compute`, `data` and
`clustering`.
"""
