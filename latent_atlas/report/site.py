"""Build the static atlas site: Jinja2 templates (autoescape on) rendered into a directory that
opens from file:// with no network. One stylesheet and one script ship once per site under
static/; links are relative; nothing is fetched from a CDN.

    index.html               cluster table (sort, filter, search) and the map of the centers
    clusters/<id>.html       one page per cluster
    vectors/cluster_<id>.npy the cluster's intervention vector (float32 [d])
    trees/token.html, trees/document.html, outcome.html

The site is built in a temp directory beside `out` and renamed onto it (a reader never sees half a
site). Every string from the corpus or a labeler goes through autoescape; JSON embedded in a page
goes through `safe_json`, which escapes <, > and & so no string can close the <script> element.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import jinja2
import numpy as np
from markupsafe import Markup

from latent_atlas.data.atomic import atomic_dir
from latent_atlas.reading.clusters import FLAGS
from latent_atlas.report.contents import load_contents
from latent_atlas.report.pages import cluster_page, site_pages


@dataclass
class ReportConfig:
    """How the atlas site is built."""

    map_method: str = "umap"
    """2D map of the centers: 'umap' (cosine, seeded; PCA below 8 clusters) or 'pca'."""
    seed: int = 0
    """random_state of the map's UMAP."""
    title: str = "latent-atlas"
    """Title shown on every page."""


@dataclass
class SiteSummary:
    """What a build produced (the atlas_report asset's metadata)."""

    path: str
    total_bytes: int
    pages: int
    largest_page: str
    largest_page_bytes: int
    clusters: int
    build_seconds: float
    map_method: str
    missing: list[str]  # optional artifacts the site was built without


def _plain(value):
    """JSON-able copy: numpy scalars and arrays to Python, NaN and inf to None (JSON has neither)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def safe_json(value) -> Markup:
    """JSON for a <script type="application/json"> element: <, >, & and the JS line separators
    escaped as \\u sequences, so a corpus string such as "</script>" cannot end the element."""
    text = json.dumps(_plain(value), ensure_ascii=False, sort_keys=True)
    for char, code in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(char, code)
    return Markup(text)


def number(value, digits: int = 3) -> str:
    """A number for a cell; '-' for a missing or non-finite one."""
    if value is None or isinstance(value, str):
        return "-" if value in (None, "") else value
    x = float(value)
    return f"{x:.{digits}f}" if math.isfinite(x) else "-"


def environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("latent_atlas.report", "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = number
    env.filters["pct"] = lambda v, digits=2: "-" if v is None else f"{100 * float(v):.{digits}f}%"
    env.filters["safe_json"] = safe_json
    env.filters["sortkey"] = lambda v: "" if v is None else v
    return env


def _copy_static(out: Path) -> None:
    static = resources.files("latent_atlas.report") / "static"
    (out / "static").mkdir()
    for item in static.iterdir():
        if item.is_file():
            (out / "static" / item.name).write_bytes(item.read_bytes())


def build_site(home: str | Path, out: str | Path | None = None, config: ReportConfig | None = None,
               failed_checks: list[str] | None = None) -> SiteSummary:
    """Render the atlas of `home` (an ATLAS_HOME with a results directory) into `out`
    (default home/report), replacing any previous site atomically; `failed_checks` ('check (asset):
    why' lines, from the orchestrator) are listed on the index."""
    config = config or ReportConfig()
    start = time.perf_counter()
    home = Path(home)
    out = Path(out) if out is not None else home / "report"
    contents = load_contents(home)
    env = environment()
    site = site_pages(contents, config.map_method, config.seed)
    common = {"title": config.title, "home": str(home), "n_clusters": contents.n_clusters,
              "missing": contents.missing, "has_token_tree": site["token_tree"] is not None,
              "has_document_tree": site["document_tree"] is not None}
    with atomic_dir(out) as tmp:
        _copy_static(tmp)
        for folder in ("clusters", "vectors", "trees"):
            (tmp / folder).mkdir()

        def write(name: str, template: str, **context) -> None:
            depth = name.count("/")
            html = env.get_template(template).render(root="../" * depth, **common, **context)
            (tmp / name).write_text(html, encoding="utf-8")

        write("index.html", "index.html", rows=site["rows"], points=site["points"], legend=site["legend"],
              map_method=site["map_method"], summary=contents.analyzer.summary_, flag_help=FLAGS,
              failed_checks=failed_checks or [])
        for c in range(contents.n_clusters):
            np.save(tmp / "vectors" / f"cluster_{c}.npy", contents.analyzer.vector(c).astype(np.float32))
            write(f"clusters/{c}.html", "cluster.html", page=cluster_page(contents, c, site["rows"], site["label_text"]))
        for kind in ("token", "document"):
            write(f"trees/{kind}.html", "tree.html", kind=kind, tree=site[f"{kind}_tree"])
        write("outcome.html", "outcome.html", outcome=site["outcome"])
    pages = sorted(out.rglob("*.html"))
    largest = max(pages, key=lambda p: p.stat().st_size)
    return SiteSummary(path=str(out), total_bytes=sum(p.stat().st_size for p in out.rglob("*") if p.is_file()),
                       pages=len(pages), largest_page=str(largest.relative_to(out)),
                       largest_page_bytes=largest.stat().st_size, clusters=contents.n_clusters,
                       build_seconds=time.perf_counter() - start, map_method=site["map_method"],
                       missing=contents.missing)

