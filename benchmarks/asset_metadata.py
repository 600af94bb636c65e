"""How much each asset's Dagster UI page carries: for the latest materialization of every asset in a
home, the readable entries (markdown / tables), the embedded PNGs and the metadata's total size.
With --rematerialize, the named global assets are materialized again with the current code first, and
each is printed beside its previous materialization (the baseline, measured in the same run).

    python benchmarks/asset_metadata.py --home /tmp/copy-of-a-home --rematerialize cluster_stats,exemplars

Writes into the home's Dagster instance: run it on a copy, never on a home you want to keep as it is.
"""

import argparse
import base64
import os
import re
import time
from pathlib import Path

PNG = re.compile(r"data:image/png;base64,([A-Za-z0-9+/=]+)")


def page_size(metadata: dict) -> dict:
    """Readable entries, PNG count and largest PNG (bytes), and all metadata as text (bytes)."""
    import dagster as dg

    readable = [k for k, v in metadata.items() if isinstance(v, (dg.MarkdownMetadataValue, dg.TableMetadataValue))]
    pngs = [len(base64.b64decode(m)) for v in metadata.values() if isinstance(v, dg.MarkdownMetadataValue)
            for m in PNG.findall(v.value)]
    return {"readable": len(readable), "pngs": len(pngs), "largest_png": max(pngs, default=0),
            "bytes": sum(len(str(getattr(v, "value", v))) for v in metadata.values())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", required=True, help="ATLAS_HOME whose instance is read (a copy, with --rematerialize)")
    parser.add_argument("--rematerialize", default="", help="Comma-separated global assets to materialize again first")
    args = parser.parse_args()
    home = Path(args.home).resolve()
    os.environ.update(ATLAS_HOME=str(home), DAGSTER_HOME=str(home / "dagster"), HF_HUB_OFFLINE="1")
    import dagster as dg

    from orchestration.definitions import defs

    keys = sorted(defs.resolve_asset_graph().get_all_asset_keys(), key=lambda k: k.to_user_string())
    names = [n for n in args.rematerialize.split(",") if n]
    with dg.DagsterInstance.get() as instance:
        latest = lambda key: instance.get_latest_materialization_event(key)  # noqa: E731
        before = {k: page_size(latest(k).asset_materialization.metadata) for k in keys if latest(k)}
        seconds = 0.0
        if names:
            start = time.perf_counter()
            result = dg.materialize(list(defs.assets), instance=instance, resources=defs.resources,
                                    selection=dg.AssetSelection.assets(*names))
            seconds = time.perf_counter() - start
            assert result.success, names
        print(f"{'asset':<22} {'readable':>8} {'pngs':>4} {'largest_png_kB':>14} {'metadata_kB':>11} {'baseline_kB':>11}")
        for key in keys:
            event = latest(key)
            if event is None:
                continue
            now, old = page_size(event.asset_materialization.metadata), before.get(key)
            baseline = f"{old['bytes'] / 1e3:11.1f}" if key.to_user_string() in names and old else f"{'':>11}"
            print(f"{key.to_user_string():<22} {now['readable']:>8} {now['pngs']:>4} {now['largest_png'] / 1e3:>14.1f} "
                  f"{now['bytes'] / 1e3:>11.1f} {baseline}")
        if names:
            print(f"rematerialized {len(names)} assets in {seconds:.1f} s")


if __name__ == "__main__":
    main()
