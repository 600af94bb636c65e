"""Steering: intervention directions in the model's own residual coordinates, added while it generates
(`vectors`), and their measured causal effect (`evaluation`). May import `compute`, `data` and
`clustering`.
"""
