"""The atlas site of a finished demo home: size, pages, build time, and the index's load time in
headless Chromium; atlas_report's time against the whole demo's.

    python benchmarks/report.py [/tmp/demo-final] [--replicate 8] [--screenshots DIR] [--demo-seconds 285]

The home is copied (only what the site reads: results, labels, trees, outcome tables) to a temp
home, never written in place. --replicate N tiles the atlas's clusters N times (ids, exemplars,
vectors and labels copied under new ids; the copies are unmapped in the trees) to see the site at
k = N x 64 with the demo's 20 exemplars per kind.
"""

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from latent_atlas.compute.cpu import describe  # noqa: E402
from latent_atlas.report import ReportConfig, build_site  # noqa: E402

READ = ("results", "labels", "tensors/cluster_tree.npz", "tensors/cluster_tree.json", "tensors/document_tree.npz",
        "tensors/document_tree.json", "tables/document_paths.parquet", "tables/outcome_association.parquet")
ID_LISTS = {"cluster_stats.parquet": ("coactivating_clusters", "similar_clusters", "near_duplicate_partners"),
            "intervention_vectors.parquet": ("hard_negative_clusters", "correlated_clusters"),
            "exemplars.parquet": ("active_clusters",)}


def copy_home(source: Path, target: Path) -> None:
    for name in READ:
        if (source / name).is_dir():
            shutil.copytree(source / name, target / name)
        elif (source / name).exists():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / name, target / name)


def replicate(home: Path, n: int) -> int:
    """Tile the results directory's clusters n times in place; returns the new k."""
    results = home / "results"
    k = json.loads((results / "summary.json").read_text())["n_clusters"]
    for name, lists in ID_LISTS.items():
        table = pq.read_table(results / name)
        rows = table.to_pylist()
        out = []
        for copy in range(n):
            for r in rows:
                r = dict(r, cluster=r["cluster"] + copy * k)
                out.append({**r, **{col: [i + copy * k for i in r[col]] for col in lists}})
        pq.write_table(pa.Table.from_pylist(out, table.schema), results / name)
    with np.load(results / "intervention_vectors.npz", allow_pickle=False) as z:
        arrays = {key: z[key] for key in z.files}
    for key, value in arrays.items():
        arrays[key] = np.kron(np.eye(n), value) if value.shape == (k, k) else np.tile(value, (n, 1))
    np.savez(results / "intervention_vectors.npz", **arrays)
    summary = json.loads((results / "summary.json").read_text())
    (results / "summary.json").write_text(json.dumps({**summary, "n_clusters": k * n}))
    labels = home / "labels" / "clusters"
    for path in list(labels.glob("centroid_*.json")) if labels.is_dir() else []:
        record = json.loads(path.read_text())
        for copy in range(1, n):
            c = record["centroid_id"] + copy * k
            (labels / f"centroid_{c}.json").write_text(json.dumps({**record, "centroid_id": c}))
    return k * n


def index_load_ms(index: Path, screenshots: Path | None = None) -> float | None:
    """loadEventEnd - navigationStart of the index in headless Chromium (None without one); with
    `screenshots`, also saves the index, the most used cluster's page and the token tree there."""
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver_path):
        print("no system chromium/chromedriver: index load time not measured")
        return None
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        times = []
        for _ in range(3):
            driver.get(index.as_uri())
            times.append(driver.execute_script("return performance.timing.loadEventEnd - performance.timing.navigationStart"))
        if screenshots is not None:
            screenshots.mkdir(parents=True, exist_ok=True)
            driver.set_window_size(1300, 1000)
            driver.get(index.as_uri())
            driver.save_screenshot(str(screenshots / "index.png"))
            driver.execute_script("document.getElementById('cluster-table').scrollIntoView()")
            driver.save_screenshot(str(screenshots / "index-table.png"))
            usage = pq.read_table(index.parent.parent / "results" / "cluster_stats.parquet").column("total_usage")
            driver.get((index.parent / "clusters" / f"{int(np.argmax(usage.to_numpy()))}.html").as_uri())
            driver.save_screenshot(str(screenshots / "cluster.png"))
            driver.execute_script("document.getElementById('exemplars').scrollIntoView()")
            driver.save_screenshot(str(screenshots / "cluster-exemplars.png"))
            driver.get((index.parent / "trees" / "token.html").as_uri())
            driver.execute_script("document.querySelectorAll('details').forEach(function (d) { d.open = true; })")
            driver.save_screenshot(str(screenshots / "tree.png"))
            print(f"screenshots: {screenshots}")
        return float(np.median(times))
    finally:
        driver.quit()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("home", nargs="?", default="/tmp/demo-final")
    parser.add_argument("--replicate", type=int, default=1, help="tile the clusters N times (k = N x the demo's)")
    parser.add_argument("--map", default="umap", choices=("umap", "pca"))
    parser.add_argument("--screenshots", type=Path, help="save screenshots of the index, a cluster and the tree here")
    parser.add_argument("--demo-seconds", type=float, default=285.0, help="the whole demo's wall time to compare with")
    args = parser.parse_args()
    print(describe())
    with tempfile.TemporaryDirectory(prefix="report-bench-") as tmp:
        home = Path(tmp) / "atlas"
        copy_home(Path(args.home), home)
        k = replicate(home, args.replicate) if args.replicate > 1 else None
        start = time.perf_counter()
        summary = build_site(home, config=ReportConfig(map_method=args.map))
        seconds = time.perf_counter() - start
        load = index_load_ms(home / "report" / "index.html", args.screenshots)
        index_kb = (home / "report" / "index.html").stat().st_size / 1e3
    print(f"clusters {summary.clusters}{' (replicated)' if k else ''}; pages {summary.pages}; map {summary.map_method}")
    print(f"total size {summary.total_bytes / 1e6:.2f} MB; largest page {summary.largest_page} "
          f"{summary.largest_page_bytes / 1e3:.0f} kB; index {index_kb:.0f} kB")
    print(f"build {seconds:.1f} s = {seconds / args.demo_seconds:.1%} of the demo's {args.demo_seconds:.0f} s")
    if load is not None:
        print(f"index load in headless Chromium (file://, median of 3): {load:.0f} ms")
    print(f"missing inputs: {summary.missing or 'none'}")


if __name__ == "__main__":
    main()
