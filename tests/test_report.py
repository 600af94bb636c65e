"""The atlas site built by the atlas_report asset on a small real home: every page renders, an
injected script token is shown as text everywhere (pages and tooltips), no page is over 2 MB,
nothing is fetched from the network, and the site degrades when optional artifacts are missing."""

import html
import json
import re
import shutil
from html.parser import HTMLParser

import numpy as np
import pytest

from latent_atlas.report import ReportConfig, build_site, safe_json
from tests.report_home import SCRIPT, inject_script_token

MAX_PAGE_BYTES = 2_000_000


@pytest.fixture(scope="module")
def home(finished_home):
    home = finished_home
    assert (home / "report" / "index.html").exists()  # the asset built a site
    return home


class Elements(HTMLParser):
    """Every start tag with its attributes, and the text of every <script> element."""

    def __init__(self):
        super().__init__()
        self.tags, self.scripts, self._in_script = [], [], False

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag):
        self._in_script = False

    def handle_data(self, data):
        if self._in_script:
            self.scripts.append(data)


def parse(path):
    parser = Elements()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def test_every_page_escapes_an_injected_script_token_and_stays_offline_and_small(home, tmp_path):
    site_home = tmp_path / "atlas"
    shutil.copytree(home, site_home, ignore=shutil.ignore_patterns("report", "dagster"))
    cluster = inject_script_token(site_home)
    failed = [f"tree_has_structure (cluster_tree): root split {SCRIPT}"]  # a check's text reaches the index escaped
    summary = build_site(site_home, config=ReportConfig(map_method="pca"), failed_checks=failed)
    site = site_home / "report"
    pages = sorted(site.rglob("*.html"))
    index = (site / "index.html").read_text(encoding="utf-8")
    assert 'id="failed-checks"' in index and f"tree_has_structure (cluster_tree): root split {html.escape(SCRIPT)}" in index
    k = summary.clusters
    assert summary.pages == len(pages) == k + 4  # index, a page per cluster, two trees, outcome
    assert summary.missing == []

    shown_on = set()
    for page in pages:
        text = page.read_text(encoding="utf-8")
        assert page.stat().st_size < MAX_PAGE_BYTES, page
        assert SCRIPT not in text, page  # never raw, on any page
        if html.escape(SCRIPT) in text or "\\u003cscript\\u003e" in text:
            shown_on.add(page.relative_to(site).as_posix())
        elements = parse(page)
        scripts = [a for t, a in elements.tags if t == "script"]
        assert [a.get("src") for a in scripts if "src" in a] == ["../" * page.relative_to(site).as_posix().count("/")
                                                                  + "static/atlas.js"]
        assert all(a.get("type") == "application/json" for a in scripts if "src" not in a)
        for data in elements.scripts:  # embedded JSON parses and still holds the token, as data
            json.loads(data)
        for tag, attrs in elements.tags:  # no resource from the network
            for name in ("src", "href"):
                assert not re.match(r"(https?:)?//", attrs.get(name) or ""), (page, tag, attrs)
        # an injected tag would show up as a real element
        assert all(tag != "script" or "src" in attrs or attrs.get("type") == "application/json"
                   for tag, attrs in elements.tags)
    # the token is shown (escaped) where it belongs: the index (top tokens, label), its cluster page
    assert {"index.html", f"clusters/{cluster}.html", "trees/token.html"} <= shown_on, shown_on
    # and in the tooltips of its exemplar tokens (title attributes, unescaped by the parser: the text itself)
    page = parse(site / "clusters" / f"{cluster}.html")
    tips = [a["title"] for t, a in page.tags if t == "span" and "title" in a]
    assert any(SCRIPT in tip for tip in tips)
    css = (site / "static" / "atlas.css").read_text() + (site / "static" / "atlas.js").read_text()
    assert "http://" not in css and "https://" not in css and "@import" not in css


def test_cluster_pages_carry_their_data(home):
    site = home / "report"
    from latent_atlas.reading.clusters import ClusterAnalyzer

    atlas = ClusterAnalyzer(home / "results")
    index = (site / "index.html").read_text()
    assert index.count('class="cluster-row"') == atlas.n_clusters
    assert index.count('class="map-point"') == atlas.n_clusters
    # the evidence shown is auroc_hard's margin over the null, and the filter knows who clears it
    margins = [atlas.intervention_[c]["auroc_hard_margin"] for c in range(atlas.n_clusters)]
    assert np.isfinite(margins).all() and ">margin</th>" in index
    assert index.count('data-above-null="1"') == sum(m > 0 for m in margins)
    for c in range(atlas.n_clusters):
        page = parse(site / "clusters" / f"{c}.html")
        # the downloadable vector is the cluster's intervention vector
        np.testing.assert_array_equal(np.load(site / "vectors" / f"cluster_{c}.npy"), atlas.vector(c).astype(np.float32))
        summary = json.loads(page.scripts[-1])
        assert summary["cluster_id"] == c and summary["statistics"]["cluster"] == c
        assert summary["intervention_stats"]["null"]["auroc_hard_margin"] == margins[c]
        assert "margin over the null" in (site / "clusters" / f"{c}.html").read_text()
        # every exemplar token shaded by its membership; the exemplar itself marked
        exemplars = sum(len(atlas.exemplars(c, kind)) for kind in ("top_k", "random_k", "quantile"))
        centres = [a for t, a in page.tags if t == "span" and a.get("class") == "c"]
        assert len(centres) == exemplars
        assert all("background:rgba(230,85,13," in a.get("style", "") for a in centres)
        links = {a["href"] for t, a in page.tags if t == "a" and "href" in a}
        similar = atlas.stats_[c]["similar_clusters"]
        assert {f"../clusters/{s}.html" for s in similar} <= links


def test_site_degrades_without_optional_artifacts(home, tmp_path):
    bare = tmp_path / "atlas"
    shutil.copytree(home / "results", bare / "results")  # no labels, trees, outcome tables
    summary = build_site(bare, config=ReportConfig(map_method="pca"))
    assert set(summary.missing) >= {"labels/clusters", "tensors/cluster_tree.npz", "tables/outcome_association.parquet"}
    site = bare / "report"
    assert "has not been materialized" in (site / "trees" / "token.html").read_text()
    assert "has not been materialized" in (site / "outcome.html").read_text()
    assert "Not labeled yet" in (site / "clusters" / "0.html").read_text()
    # a rebuild replaces the site whole, leaving no temp directories behind
    build_site(bare, config=ReportConfig(map_method="pca"))
    assert sorted(p.name for p in bare.iterdir()) == ["report", "results"]


def test_safe_json_cannot_close_a_script_element():
    text = safe_json({"token": SCRIPT, "amp": "a & b", "nan": float("nan"), "sep": "\u2028"})
    assert "<" not in text and ">" not in text and "&" not in text and "\u2028" not in text
    assert json.loads(text) == {"token": SCRIPT, "amp": "a & b", "nan": None, "sep": "\u2028"}
