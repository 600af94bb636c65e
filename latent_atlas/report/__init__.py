"""The atlas viewer: a static HTML site of a finished ATLAS_HOME that opens from file://.

    from latent_atlas.report import build_site
    summary = build_site(".atlas")          # writes .atlas/report/index.html and the pages beside it
"""

from latent_atlas.report.site import ReportConfig, SiteSummary, build_site, safe_json

__all__ = ["ReportConfig", "SiteSummary", "build_site", "safe_json"]
