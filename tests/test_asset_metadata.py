"""Every asset's page in the Dagster UI is worth opening: a description that says what the artifact is
for, and on its latest materialization at least one table or plot a person reads (markdown, a
TableMetadataValue or a PNG embedded in markdown), kept small.

`assert_readable_pages` is called by the asset tests that already materialize the graph
(test_labels_asset, test_hierarchy_assets, test_node_labels), so this costs no pipeline run of its own."""

import base64
import re

import dagster as dg
import numpy as np

from assets.metadata import figure_markdown, histogram_markdown, markdown_table, pyplot

PNG = re.compile(r"!\[[^\]]*\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)")
MAX_PNG_BYTES = 100_000  # the UI loads every entry of the page at once
MIN_DESCRIPTION_WORDS = 10  # more than a name: what it holds and what it is for


def readable_entries(metadata: dict) -> dict[str, dg.MetadataValue]:
    return {k: v for k, v in metadata.items() if isinstance(v, (dg.MarkdownMetadataValue, dg.TableMetadataValue))}


def assert_readable_pages(defs: dg.Definitions, instance: dg.DagsterInstance) -> list[str]:
    """Every asset of `defs` materialized in `instance` has a description and, on its latest
    materialization, a table or plot; every embedded PNG is a real image under MAX_PNG_BYTES.
    Returns the assets checked (so a caller can assert which ones it covered)."""
    graph = defs.resolve_asset_graph()
    checked, problems = [], {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        event = instance.get_latest_materialization_event(key)
        if event is None:
            continue
        name = key.to_user_string()
        checked.append(name)
        description = graph.get(key).description or ""
        if len(description.split()) < MIN_DESCRIPTION_WORDS:
            problems[name] = f"description too short: {description!r}"
            continue
        readable = readable_entries(event.asset_materialization.metadata)
        if not readable:
            problems[name] = f"no table or plot among {sorted(event.asset_materialization.metadata)}"
        for label, value in readable.items():
            text = value.value if isinstance(value, dg.MarkdownMetadataValue) else ""
            for encoded in PNG.findall(text):
                png = base64.b64decode(encoded)
                if png[:8] != b"\x89PNG\r\n\x1a\n" or not 2_000 < len(png) < MAX_PNG_BYTES:
                    problems[f"{name}.{label}"] = f"embedded image of {len(png)} bytes, not a PNG of 2-100 kB"
    assert not problems, problems
    return checked


def test_every_asset_says_what_it_is_for():
    from orchestration.definitions import defs

    graph = defs.resolve_asset_graph()
    short = {k.to_user_string(): graph.get(k).description for k in graph.get_all_asset_keys()
             if len((graph.get(k).description or "").split()) < MIN_DESCRIPTION_WORDS}
    assert not short, short


def test_markdown_table_keeps_one_row_per_record_whatever_the_tokens():
    tokens = ["a|b", "line\nbreak", "**bold**", "`code`", "<script>"]
    text = markdown_table([{"cluster": i, "token": t, "share": 1 / 3, "missing": float("nan"), "tiny": 1e-7}
                           for i, t in enumerate(tokens)]).value
    lines = text.splitlines()
    assert len(lines) == 2 + len(tokens)  # header, rule, one line per row: no token broke out of its cell
    for line in lines:  # five cells each: an unescaped pipe would add one
        assert len(re.findall(r"(?<!\\)\|", line)) == 6, line
    assert "0.333" in lines[2] and "–" in lines[2] and "1e-07" in lines[2]
    assert "<script>" not in text and "&lt;script&gt;" in text  # a corpus token is shown as text, not run as HTML
    assert markdown_table([]).value == "(no rows)"


def test_plots_are_real_small_pngs():
    rng = np.random.default_rng(0)
    histogram = histogram_markdown({"random": rng.uniform(0.4, 1, 64), "hard": np.r_[rng.uniform(0.3, 0.9, 63), np.nan]},
                                   "held-out AUROC", "AUROC", reference=0.5)
    fig, ax = pyplot().subplots()
    ax.plot(np.arange(10) ** 2)
    for value in (histogram, figure_markdown(fig, "curve")):
        [encoded] = PNG.findall(value.value)
        png = base64.b64decode(encoded)
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and 2_000 < len(png) < MAX_PNG_BYTES
    assert not pyplot().get_fignums()  # every figure was closed: no leak across materializations
