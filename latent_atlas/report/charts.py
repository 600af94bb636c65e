"""Geometry of the site's inline SVG charts: numbers only. The templates draw them (so every label
they carry is escaped by Jinja2), and the site needs no plotting library or script from a CDN."""

from __future__ import annotations

import numpy as np

# Branch colours of the map and the tree (Tableau 10); unmapped clusters are grey.
PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
           "#9c755f", "#bab0ac")
UNMAPPED = "#999999"


def branch_colors(branches: list[str]) -> dict[str, str]:
    """Colour per depth-1 branch id, in sorted order of the ids; "" (unmapped) is grey."""
    named = sorted({b for b in branches if b}, key=lambda b: (len(b), b))
    return {"": UNMAPPED, **{b: PALETTE[i % len(PALETTE)] for i, b in enumerate(named)}}


def center_map(centers: np.ndarray, method: str = "umap", seed: int = 0) -> tuple[np.ndarray, str]:
    """2D positions [k, 2] of the cluster centers [k, d] and the method that made them: UMAP
    (cosine, seeded) where there are enough centers for a neighbourhood graph, else PCA."""
    x = np.asarray(centers, np.float64)
    if method not in ("umap", "pca"):
        raise ValueError(f"map_method must be 'umap' or 'pca', got {method!r}")
    if method == "umap" and len(x) >= 8:
        import umap

        reducer = umap.UMAP(n_components=2, n_neighbors=min(15, len(x) - 1), metric="cosine", min_dist=0.3,
                            random_state=seed, n_jobs=1, init="random" if len(x) < 16 else "spectral")
        return reducer.fit_transform(x).astype(np.float64), "umap"
    x = x - x.mean(axis=0)
    if len(x) < 2:
        return np.zeros((len(x), 2)), "pca"
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    xy = u[:, :2] * s[:2]
    return np.pad(xy, ((0, 0), (0, 2 - xy.shape[1]))), "pca"


def scale_points(xy: np.ndarray, usage: np.ndarray, width: float, height: float, margin: float = 18,
                 r_min: float = 3, r_max: float = 16) -> list[dict]:
    """Points in SVG coordinates (x, y) with radius by sqrt of usage (area proportional to usage)."""
    xy = np.asarray(xy, np.float64)
    low, span = xy.min(axis=0), np.ptp(xy, axis=0)
    span[span == 0] = 1
    unit = (xy - low) / span
    usage = np.clip(np.nan_to_num(np.asarray(usage, np.float64)), 0, None)
    size = np.sqrt(usage / usage.max()) if usage.max() > 0 else np.zeros(len(usage))
    return [{"x": round(margin + u[0] * (width - 2 * margin), 1), "y": round(margin + (1 - u[1]) * (height - 2 * margin), 1),
             "r": round(r_min + s * (r_max - r_min), 1)} for u, s in zip(unit, size)]


def bars(values, width: float, height: float, gap: float = 1) -> list[dict]:
    """Vertical bars filling width x height, one per value (NaN as 0), heights relative to the max."""
    v = np.nan_to_num(np.asarray(values, np.float64))
    if not len(v):
        return []
    top = v.max() if v.max() > 0 else 1
    w = width / len(v)
    return [{"x": round(i * w, 2), "w": round(max(w - gap, 0.5), 2), "h": round(height * x / top, 2),
             "y": round(height - height * x / top, 2), "value": float(x)} for i, x in enumerate(v)]


def shade(membership: float) -> str:
    """Background of a token by its membership (0 transparent, 1 strong orange)."""
    m = float(np.clip(np.nan_to_num(membership), 0, 1))
    return f"rgba(230,85,13,{m:.2f})" if m > 0 else "transparent"
