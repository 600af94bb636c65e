"""The reading API of a finished atlas: `clusters.ClusterAnalyzer` (a cluster's statistics, exemplars,
vectors, label and steering) and `sentences.SentenceAnalyzer` (any sentence, token by token). May import
every room below it, labels included; only `report` is above it.
"""
