"""What a person reads on an asset's page in the Dagster UI: small markdown tables and plots embedded
as PNG images (markdown `![title](data:image/png;base64,...)`, which the UI renders inline). One home
for both, so every asset's page looks alike and no figure leaks an open pyplot window."""

import base64
import io
import math
from collections.abc import Iterable, Mapping, Sequence

import dagster as dg
import numpy as np
import torch

DPI = 80  # a 3 x 2.6 inch panel at 80 dpi is ~10-20 kB: plots stay far below the event log's comfort


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend (assets run without a display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png_markdown(png: bytes, title: str) -> dg.MetadataValue:
    """A PNG as a markdown image the Dagster UI shows inline."""
    return dg.MetadataValue.md(f"![{title}](data:image/png;base64,{base64.b64encode(png).decode()})")


def figure_markdown(fig, title: str) -> dg.MetadataValue:
    """A matplotlib figure as an inline image; the figure is closed."""
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=DPI)
    pyplot().close(fig)
    return png_markdown(buffer.getvalue(), title)


def histogram_markdown(series: Mapping[str, np.ndarray] | np.ndarray, title: str, xlabel: str, bins: int = 30,
                       reference: float | None = None) -> dg.MetadataValue:
    """Histograms of one array or of named arrays (overlaid, shared bins; NaNs dropped) as an inline
    image; `reference` draws a dashed line (chance, a floor) a reader compares the mass against."""
    plt = pyplot()
    named = dict(series) if isinstance(series, Mapping) else {"": series}
    named = {name: np.asarray(v, np.float64)[np.isfinite(np.asarray(v, np.float64))] for name, v in named.items()}
    every = np.concatenate([v for v in named.values()] + [np.zeros(0)])
    edges = np.histogram_bin_edges(every if every.size else np.zeros(1), bins=bins)
    fig, ax = plt.subplots(figsize=(4.2, 2.6))
    for name, values in named.items():
        ax.hist(values, bins=edges, alpha=0.6 if len(named) > 1 else 1.0, label=f"{name} (n={values.size})" if name else None)
    if reference is not None:
        ax.axvline(reference, color="black", linestyle="--", linewidth=1)
    ax.set_title(title if len(named) > 1 else f"{title} (n={every.size})", fontsize=9)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.tick_params(labelsize=7)
    if len(named) > 1:
        ax.legend(fontsize=7)
    return figure_markdown(fig, title)


def _cell(value, digits: int) -> str:
    if isinstance(value, (float, np.floating)):
        if math.isnan(value):
            return "–"
        plain = value == 0 or 1e-3 <= abs(value) < 1e4  # else 0.000 or a long row of digits
        return f"{value:.{digits}f}" if plain else f"{value:.{digits}g}"
    if isinstance(value, (list, tuple, np.ndarray)):
        return ", ".join(_cell(v, digits) for v in value)
    # a table cell holds one line; a pipe would end the cell, markdown would eat backticks/stars, and a
    # corpus token such as <script> is text, not HTML
    text = str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").replace("`", "\\`").replace("*", "\\*")


def markdown_table(rows: Iterable[Mapping], columns: Sequence[str] | None = None, digits: int = 3) -> dg.MetadataValue:
    """Rows (dicts) as a markdown table, columns in the given order (default: the first row's keys);
    floats to `digits` decimals, NaN as '–', lists joined, text escaped so a token cannot break the table."""
    rows = list(rows)
    if not rows:
        return dg.MetadataValue.md("(no rows)")
    columns = list(columns or rows[0].keys())
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c, ""), digits) for c in columns) + " |" for row in rows]
    return dg.MetadataValue.md("\n".join(lines))


def top_clusters(usage: np.ndarray, n: int = 10) -> np.ndarray:
    """The n most used clusters, most used first (ties by cluster id)."""
    return np.argsort(-np.asarray(usage, np.float64), kind="stable")[:n]


def top_rows(table, columns: Sequence[str], n: int = 10, by: str = "usage_fraction") -> dg.MetadataValue:
    """The n rows of a per-cluster Arrow table with the largest `by`, with `columns` (those present);
    token lists cut to their first 5, each repr'd so spaces and newlines stay visible."""
    present = [c for c in columns if c in table.column_names]
    rows = table.select(present).to_pylist()
    picked = [rows[i] for i in top_clusters(table.column(by).to_numpy(zero_copy_only=False), n)]
    for row in picked:
        if "top_tokens" in row:
            row["top_tokens"] = [repr(t) for t in (row["top_tokens"] or [])[:5]]
    return markdown_table(picked, present)


def crosstab_markdown(rows: Sequence[str], columns: Sequence[str], row_name: str, max_columns: int = 12) -> dg.MetadataValue:
    """Counts of (row value, column value) pairs, one table row per row value with its total."""
    names = sorted(set(columns))[:max_columns]
    counts: dict[str, dict[str, int]] = {}
    for r, c in zip(rows, columns):
        counts.setdefault(r, {}).setdefault(c, 0)
        counts[r][c] += 1
    return markdown_table(({row_name: r, "total": sum(counts[r].values()), **{c: counts[r].get(c, 0) for c in names}}
                           for r in sorted(counts)), [row_name, "total", *names])


def marked_window(words: Sequence[str], at: int, window: int) -> str:
    """Decoded tokens `window` each side of `at` as text, the token at `at` in ⟦ ⟧. Byte-level BPE tokens
    carry their own spaces; WordPiece ones (none starts with a space) are space-separated, '##' glued back."""
    words = list(words)
    words[at] = f"⟦{words[at]}⟧"
    words = words[max(0, at - window):at + 1 + window]
    if any(w[:1].isspace() for w in words):
        return "".join(words)
    return " ".join(words).replace(" ##", "").replace("⟦##", "⟦")


def usage_curve_markdown(usage: np.ndarray) -> dg.MetadataValue:
    """Usage fraction of every cluster, most used first, on a log axis: a few clusters taking most of
    the mass, or a tail of near-dead ones, shows at a glance."""
    fig, ax = pyplot().subplots(figsize=(4.2, 2.6))
    ax.bar(np.arange(len(usage)), np.sort(np.asarray(usage, np.float64))[::-1], width=1.0, color="#4c72b0")
    ax.set_yscale("log")
    ax.set_xlabel("cluster rank by usage", fontsize=8)
    ax.set_ylabel("usage fraction", fontsize=8)
    ax.set_title(f"usage of {len(usage)} clusters", fontsize=9)
    ax.tick_params(labelsize=7)
    return figure_markdown(fig, "usage by rank")


def attended_norms(values: np.ndarray, mask: np.ndarray, block_sequences: int = 64) -> np.ndarray:
    """float32 norms of the attended tokens (values [n_seq, seq_len, d], mask [n_seq, seq_len]) in the mask's
    order, a block of sequences at a time: one pass that also tells a NaN/Inf (a non-finite norm) and an
    all-zero vector (a zero norm), so the activations' page and both of their checks share it."""
    # attended rows first, then torch's norm in float32 of the float16 rows (numpy's float16 cast of whole
    # blocks took ~2 s of a 117k-token chunk)
    mask = np.asarray(mask, bool)
    return np.concatenate([torch.linalg.vector_norm(torch.from_numpy(np.ascontiguousarray(
        values[s:s + block_sequences][mask[s:s + block_sequences]])).float(), dim=-1).numpy()
        for s in range(0, values.shape[0], block_sequences)] + [np.zeros(0, np.float32)])


def token_norms_table(norms: np.ndarray, dim: int) -> dg.MetadataValue:
    """Quantiles of the attended tokens' vector norms (`attended_norms`): a few tokens far above the
    median (massive activations, a broken chunk) or a median far from sqrt(d) after whitening show here."""
    if not norms.size:
        return markdown_table([])
    p50 = float(np.median(norms))
    return markdown_table([{"tokens": int(norms.size), "min": float(norms.min()), "median": p50,
                            "p99": float(np.quantile(norms, 0.99)), "max": float(norms.max()),
                            "sqrt_d": math.sqrt(dim), "share_over_10x_median": float(np.mean(norms > 10 * p50))}])


def spectrum_markdown(eigenvalues: np.ndarray, rank: int, title: str = "covariance spectrum") -> dg.MetadataValue:
    """Eigenvalues in descending order on a log axis, the spanned rank marked: how many directions
    the data use and how steep the whitening's gains are."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.2, 2.6))
    values = np.asarray(eigenvalues, np.float64)
    ax.plot(np.arange(1, values.size + 1), np.maximum(values, np.finfo(float).tiny))
    ax.axvline(rank, color="black", linestyle="--", linewidth=1)
    ax.set_yscale("log")
    ax.set_xlabel(f"component (dashed: spanned rank {rank})", fontsize=8)
    ax.set_ylabel("eigenvalue", fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.tick_params(labelsize=7)
    return figure_markdown(fig, title)


def short_metadata(metadata: dict) -> str:
    """Numbers and short strings only: paths, plots and tables stay in the UI."""
    shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in metadata.items()
             if isinstance(v, (int, float, str)) and k != "path" and not k.startswith("dagster/") and len(str(v)) <= 80}
    return ", ".join(f"{k}={v}" for k, v in shown.items())


def failed_check_lines(check_keys: Iterable[dg.AssetCheckKey], instance: dg.DagsterInstance) -> list[str]:
    """'check (asset): why' for every asset check whose latest evaluation (per partition) failed:
    the demo's summary and the atlas index both show them."""
    failed = []
    for check_key in sorted(check_keys, key=lambda k: (k.asset_key.to_user_string(), k.name)):
        latest: dict = {}
        for record in instance.event_log_storage.get_asset_check_execution_history(check_key, limit=1000):
            latest.setdefault(record.partition, record)  # newest first
        bad = [r for r in latest.values() if r.status.value == "FAILED"]
        if bad:
            evaluation = bad[0].event.dagster_event.event_specific_data
            why = evaluation.description or short_metadata({k: v.value for k, v in evaluation.metadata.items()})
            where = f", {len(bad)} partitions" if bad[0].partition is not None else ""
            failed.append(f"{check_key.name} ({check_key.asset_key.to_user_string()}{where}): {why[:150]}")
    return failed
