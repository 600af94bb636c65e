"""The atlas viewer: a static HTML site of the finished atlas under ATLAS_HOME/report, readable from
file:// with no network (latent_atlas.report). It reads what the upstream assets wrote under
ATLAS_HOME (results, labels, trees, outcome tables); optional ones that are missing show as such."""

import dagster as dg

from assets.configs import config_class, library_config
from assets.metadata import failed_check_lines
from latent_atlas.data.paths import atlas_home
from latent_atlas.report import ReportConfig, build_site


AtlasReportConfig = config_class(ReportConfig, name="AtlasReportConfig")


def _check_keys() -> set[dg.AssetCheckKey]:
    """Every asset check of the project (a stage's run knows only its own assets' checks)."""
    import assets

    return {key for definition in dg.load_assets_from_package_module(assets) for key in definition.check_keys}


@dg.asset(
    group_name="report",
    # Read from disk, not passed in: the site is rebuilt from whatever the home holds.
    deps=["cluster_summaries", "cluster_tree", "document_tree", "outcome_association", "cluster_labels", "node_labels",
          "ensemble"],  # after the ensemble: its stability and its check are on the index
    kinds={"html"},
)
def atlas_report(context: dg.AssetExecutionContext, config: AtlasReportConfig) -> dg.MaterializeResult:
    """Static HTML atlas (ATLAS_HOME/report/index.html): a sortable, filterable table of the clusters
    and a map of their centers, a page per cluster (label and confidence, exemplars shaded by
    membership, statistics, intervention vector download, stability, related clusters), the token
    and document trees and the outcome association. Built in a temp directory, then renamed."""
    home = atlas_home()
    failed = failed_check_lines(_check_keys(), context.instance)
    summary = build_site(home, home / "report", library_config(config), failed_checks=failed)
    return dg.MaterializeResult(metadata={
        "path": dg.MetadataValue.path(f"{summary.path}/index.html"),
        "url": dg.MetadataValue.url(f"file://{summary.path}/index.html"),
        "size_mb": round(summary.total_bytes / 1e6, 3),
        "pages": summary.pages,
        "largest_page": f"{summary.largest_page} ({summary.largest_page_bytes / 1e3:.0f} kB)",
        "clusters": summary.clusters,
        "build_seconds": round(summary.build_seconds, 2),
        "map": summary.map_method,
        "failed_checks": dg.MetadataValue.md("\n".join(f"- {line}" for line in failed) or "none"),
        "missing_inputs": dg.MetadataValue.md("\n".join(f"- `{m}`" for m in summary.missing) or "none"),
    })
