"""The context of every page: plain dicts of numbers and strings, built from `AtlasContents`.
No markup here: the templates turn these into HTML and escape every string on the way."""

from __future__ import annotations

import math

import numpy as np

from latent_atlas.hierarchy.tree import ROOT, ClusterTree
from latent_atlas.reading.clusters import FLAGS, cluster_flags
from latent_atlas.report.charts import bars, branch_colors, center_map, scale_points, shade
from latent_atlas.report.contents import (AtlasContents, branch_of, cluster_tree_paths, document_node_outcomes,
                                          outcome_by_depth)

KINDS = (("top_k", "Top exemplars"), ("random_k", "Random exemplars"), ("quantile", "Exemplars by membership quantile"))


def finite(value) -> float | None:
    """A number or None (NaN, inf and missing values print as '-')."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def cluster_rows(contents: AtlasContents, tree_paths: list[str]) -> list[dict]:
    """One row per cluster for the index table and the links between pages."""
    a = contents.analyzer
    labels = a.labels()
    rows = []
    for c in range(a.n_clusters):
        stats, iv, record = a.stats_[c], a.intervention_[c], labels.get(c)
        rows.append({
            "id": c, "label": record.label if record else "", "confidence": finite(record.confidence) if record else None,
            "specificity": finite(record.specificity) if record else None, "scorer": record.scorer if record else "",
            "usage": finite(stats.get("usage_fraction")), "density": finite(stats.get("density")),
            "auroc": finite(iv.get("auroc")), "auroc_hard": finite(iv.get("auroc_hard")),
            "auroc_hard_null_high": finite(iv.get("auroc_hard_null_high")),
            "auroc_hard_margin": finite(iv.get("auroc_hard_margin")),
            "stability": finite(stats.get("stability")), "tree_path": tree_paths[c], "branch": branch_of(tree_paths[c]),
            "top_tokens": [t.replace("\n", "\u23ce") for t in list(stats.get("top_tokens") or [])[:5]],
            "flags": cluster_flags(stats, record, tree_paths[c]),
        })
    return rows


def map_points(contents: AtlasContents, rows: list[dict], method: str, seed: int,
               width: float = 640, height: float = 440) -> tuple[list[dict], str]:
    """The centers' 2D map: one point per cluster (position, radius, colour, id, label)."""
    centers = contents.centers()
    if centers is None or not len(centers):
        return [], ""
    xy, used = center_map(centers, method, seed)
    colors = branch_colors([r["branch"] for r in rows])
    points = scale_points(xy, [r["usage"] or 0 for r in rows], width, height)
    for point, row in zip(points, rows):
        point.update(id=row["id"], label=row["label"], color=colors[row["branch"]], branch=row["branch"])
    # Small circles last, so a big one never hides a small one's link.
    return sorted(points, key=lambda p: -p["r"]), used


def exemplar_view(row: dict, labels: dict[int, str]) -> dict:
    """One exemplar window: every token with its shade and tooltip, the exemplar token marked."""
    centre = row["position"] - row["context_start"]
    others = [(int(c), float(v)) for c, v in zip(row["active_clusters"], row["active_values"]) if c != row["cluster"]]
    also = ", ".join(f"{c} {labels.get(c, '')} ({v:.2f})".replace("  ", " ") for c, v in others)
    tokens = []
    for i, (text, m) in enumerate(zip(row["context_tokens"], row["context_memberships"])):
        # Short markup per token (a page holds ~60 windows of 21 tokens): value in the tooltip,
        # shade only where the membership is non-zero.
        tip = f"{m:.3f}" + (f" {text!r}; also active: {also or 'none'}" if i == centre else "")
        tokens.append({"text": text.replace("\n", "\u23ce"), "shade": shade(m) if m > 0 else "", "tip": tip,
                       "centre": i == centre})
    return {"tokens": tokens, "membership": float(row["membership"]), "chunk_id": row["chunk_id"],
            "sequence": int(row["sequence"]), "position": int(row["position"]), "band": int(row["band"]),
            "band_low": finite(row.get("band_low")), "band_high": finite(row.get("band_high")),
            "others": [{"id": c, "value": v, "label": labels.get(c, "")} for c, v in others]}


def vector_stats(contents: AtlasContents, c: int) -> dict:
    """How the intervention vector relates to the center and the difference of means."""
    arrays, iv = contents.analyzer.arrays_, contents.analyzer.intervention_[c]
    v = arrays["vectors"][c].astype(np.float64)
    cosine = lambda a, b: float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))  # noqa: E731
    out = {"dim": int(v.size), "norm": float(np.linalg.norm(v)),
           "cos_diff_means": cosine(v, arrays["diff_means"][c].astype(np.float64))}
    if "centers" in arrays:
        out["cos_center"] = cosine(v, arrays["centers"][c].astype(np.float64))
    top = np.argsort(-np.abs(v), kind="stable")[:8]
    out["top_components"] = [{"index": int(i), "value": float(v[i])} for i in top]
    scores = {}
    for name in ("auroc", "auroc_hard", "diff_means_auroc", "diff_means_auroc_hard"):
        scores[name] = {"value": finite(iv.get(name)), "low": finite(iv.get(f"{name}_low")),
                        "high": finite(iv.get(f"{name}_high"))}
    out["scores"] = scores
    out["null"] = {key: finite(iv.get(key)) for key in ("auroc_null", "auroc_hard_null", "auroc_hard_null_high",
                                                         "auroc_hard_margin", "auroc_hard_p")}
    for key in ("d_prime", "within_variance", "positive_weight", "positive_tokens", "negative_weight",
                "hard_negative_weight", "hard_negative_tokens"):
        out[key] = finite(iv.get(key))
    return out


def links(ids, values, labels: dict[int, str]) -> list[dict]:
    return [{"id": int(i), "value": finite(v), "label": labels.get(int(i), "")} for i, v in zip(ids or [], values or [])]


def cluster_page(contents: AtlasContents, c: int, rows: list[dict], label_text: dict[int, str]) -> dict:
    """Everything on cluster c's page."""
    a = contents.analyzer
    stats, iv, record = a.stats_[c], a.intervention_[c], a.label(c)
    label = None
    if record is not None:
        null = record.scores.get("null", {})
        label = {"label": record.label, "explanation": record.explanation, "confidence": finite(record.confidence),
                 "interval": [finite(x) for x in record.confidence_interval], "scorer": record.scorer,
                 "specificity": finite(record.specificity),
                 "specificity_interval": [finite(x) for x in record.specificity_interval],
                 "null": {k: (finite(v) if not isinstance(v, (str, bool)) else v) for k, v in null.items()},
                 "labeler": record.metadata.get("labeler", ""), "model": record.metadata.get("model", ""),
                 "components": [{"scorer": name, "measure": measure, **{k: (finite(v) if not isinstance(v, str) else v)
                                                                      for k, v in part.items()}}
                                for name, score in sorted(record.scores.items()) if isinstance(score, dict)
                                for measure, part in score.items() if isinstance(part, dict)],
                 "shown": list(record.top_k_examples)}
    exemplars = [{"kind": kind, "title": title, "rows": [exemplar_view(r, label_text) for r in a.exemplars(c, kind)]}
                 for kind, title in KINDS]
    top_tokens = list(zip(stats.get("top_tokens") or [], stats.get("top_token_counts") or []))
    peak = max([n for _, n in top_tokens] or [1]) or 1
    return {
        "row": rows[c], "label": label, "stats": {k: stats.get(k) for k in stats if not isinstance(stats.get(k), list)},
        "exemplars": exemplars,
        "positions": bars(stats.get("position_distribution") or [], 360, 80),
        "histogram": bars(np.log1p(np.asarray(stats.get("membership_histogram") or [], np.float64)), 360, 80),
        "histogram_counts": list(stats.get("membership_histogram") or []),
        "top_tokens": [{"text": t.replace("\n", "\u23ce"), "count": float(n), "width": round(240 * n / peak, 1)}
                       for t, n in top_tokens],
        "vector": vector_stats(contents, c),
        "stability": {k: finite(stats.get(k)) for k in ("stability", "stability_min", "assignment_agreement",
                                                        "assignment_jaccard", "stability_tokens")},
        "coactivating": links(stats.get("coactivating_clusters"), stats.get("coactivating_values"), label_text),
        "similar": links(stats.get("similar_clusters"), stats.get("similar_values"), label_text),
        "correlated": links(iv.get("correlated_clusters"), iv.get("correlation_values"), label_text),
        "hard_negatives": links(iv.get("hard_negative_clusters"), [None] * len(iv.get("hard_negative_clusters") or []),
                                label_text),
        "near_duplicates": links(stats.get("near_duplicate_partners"),
                                 [None] * len(stats.get("near_duplicate_partners") or []), label_text),
        "summary": a.get_cluster_summary(c),
    }


def tree_nodes(tree: ClusterTree, describe, node_labels: dict[str, dict]) -> dict:
    """The tree as nested dicts from the root: id, depth, size, silhouette, noise, label, children.
    A node label from node_labels (with its confidence) is shown beside the derived summary."""
    colors = branch_colors([n.id.split(".")[0] for n in tree.nodes.values() if n.depth >= 1])

    def visit(node_id: str) -> dict:
        n = tree.nodes[node_id]
        named = node_labels.get(n.id, {})
        return {"id": n.id, "depth": n.depth, "size": n.size, "silhouette": finite(n.silhouette),
                "noise": n.noise_count, "color": colors.get(n.id.split(".")[0], colors[""]) if n.depth else "",
                "node_label": named.get("label", ""), "node_confidence": finite(named.get("confidence")),
                **describe(n), "children": [visit(k) for k in n.children]}

    return visit(ROOT)


def _named(contents: AtlasContents, tree: str) -> dict[str, dict]:
    return {node: value for (name, node), value in contents.node_labels.items() if name == tree}


def token_tree_page(tree: ClusterTree, contents: AtlasContents, label_text: dict[int, str]) -> dict:
    """Token tree: each node's label is that of the atlas cluster it holds most of (ties, common
    near the root where a node holds all of many clusters, go to the most used cluster)."""
    usage = {r["cluster"]: r.get("total_usage") or 0 for r in contents.analyzer.stats_}

    def describe(node) -> dict:
        held = sorted(node.soft_clusters.items(), key=lambda kv: (-round(kv[1], 2), -usage.get(kv[0], 0)))
        clusters = [{"id": c, "share": f, "label": label_text.get(c, "")} for c, f in held[:8]]
        label = next((x["label"] for x in clusters if x["label"]), "") if node.depth else ""
        return {"label": label, "clusters": clusters, "n_clusters": len(held)}
    return tree_nodes(tree, describe, _named(contents, "cluster_tree"))


def document_tree_page(tree: ClusterTree, contents: AtlasContents, label_text: dict[int, str]) -> dict:
    """Document tree: each node's label is the outcome category most of its documents have."""
    outcomes = document_node_outcomes(contents.document_paths)

    def describe(node) -> dict:
        counts = outcomes.get(node.id)
        label = ""
        if counts:
            category, n = counts.most_common(1)[0]
            label = f"{category} {100 * n / sum(counts.values()):.0f}%"
        held = sorted(node.soft_clusters.items(), key=lambda kv: -kv[1])
        # The tree's size counts the documents it was fit on; all documents are placed by assign_paths.
        return {"label": label, "outcomes": dict(counts.most_common()) if counts else {},
                "placed": sum(counts.values()) if counts else 0,
                "clusters": [{"id": c, "share": f, "label": label_text.get(c, "")} for c, f in held[:8]],
                "n_clusters": len(held)}
    return tree_nodes(tree, describe, _named(contents, "document_tree"))


def outcome_page(contents: AtlasContents) -> dict:
    """Cramér's V per depth and the over- and under-represented cells, each node named by its label."""
    depths = outcome_by_depth(contents.outcome_rows)
    named = _named(contents, "document_tree")
    for depth in depths:
        for cells in depth["categories"].values():
            for cell in (*cells["over"], *cells["under"]):
                cell["label"] = named.get(cell["node"], {}).get("label", "")
    return {"depths": depths, "v_bars": bars([d["cramers_v"] or 0 for d in depths], 60 * max(len(depths), 1), 80, gap=12),
            "documents": len(contents.document_paths)}


def site_pages(contents: AtlasContents, map_method: str, seed: int) -> dict:
    """Contexts of the index, the trees and the outcome page (cluster pages are built one at a time)."""
    paths = cluster_tree_paths(contents.token_tree, contents.n_clusters)
    rows = cluster_rows(contents, paths)
    points, used = map_points(contents, rows, map_method, seed)
    label_text = {r["id"]: r["label"] for r in rows}
    colors = branch_colors([r["branch"] for r in rows])
    return {"rows": rows, "label_text": label_text, "points": points, "map_method": used,
            "legend": [{"branch": b or "unmapped", "color": col} for b, col in colors.items()
                       if any(r["branch"] == b for r in rows)],
            "token_tree": token_tree_page(contents.token_tree, contents, label_text) if contents.token_tree else None,
            "document_tree": (document_tree_page(contents.document_tree, contents, label_text)
                              if contents.document_tree else None),
            "outcome": outcome_page(contents)}
