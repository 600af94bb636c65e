"""The Dagster UI as a person opens it: `dagster-webserver` on 127.0.0.1 against the project's
workspace.yaml and a temporary home where `centroids` has been materialized (MiniLM, 15 BBC
articles); its GraphQL API must list every asset of the graph, and the centroids materialization
must carry its convergence plot (a PNG embedded in markdown)."""

import base64
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest


REPO = Path(__file__).resolve().parent.parent
WEBSERVER = Path(sys.executable).parent / "dagster-webserver"

ASSETS = "{ assetNodes { assetKey { path } } }"
CENTROIDS = """{ assetOrError(assetKey: {path: ["centroids"]}) { ... on Asset {
  assetMaterializations(limit: 1) { metadataEntries { label __typename ... on MarkdownMetadataEntry { mdStr } } } } } }"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def graphql(port: int, query: str) -> dict:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", data=json.dumps({"query": query}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        body = json.loads(response.read())
    assert "errors" not in body, body["errors"]
    return body["data"]


@pytest.fixture(scope="module")
def webserver(finished_home):
    home = finished_home
    port = free_port()
    env = {**os.environ, "ATLAS_HOME": str(home), "DAGSTER_HOME": str(home / "dagster"), "HF_HUB_OFFLINE": "1"}
    log = (home / "webserver.log").open("wb")
    process = subprocess.Popen([str(WEBSERVER), "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
                               cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while True:  # up once the code location has loaded and the asset graph answers
            if process.poll() is not None:
                raise RuntimeError(f"dagster-webserver exited ({process.returncode}): {(home / 'webserver.log').read_text()[-2000:]}")
            try:
                if graphql(port, ASSETS)["assetNodes"]:
                    break
            except (OSError, AssertionError, KeyError, TypeError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"dagster-webserver on port {port} did not answer: see {home / 'webserver.log'}")
            time.sleep(1)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def test_webserver_lists_every_asset_and_the_convergence_plot(webserver):
    from orchestration.definitions import defs

    expected = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    listed = {"/".join(node["assetKey"]["path"]) for node in graphql(webserver, ASSETS)["assetNodes"]}
    assert listed == expected and "atlas_report" in listed and "centroids" in listed

    asset = graphql(webserver, CENTROIDS)["assetOrError"]
    [materialization] = asset["assetMaterializations"]
    entries = {e["label"]: e for e in materialization["metadataEntries"]}
    assert entries["convergence"]["__typename"] == "MarkdownMetadataEntry"
    match = re.search(r"!\[[^\]]*\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", entries["convergence"]["mdStr"])
    assert match, entries["convergence"]["mdStr"][:200]
    png = base64.b64decode(match.group(1))
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 2000  # a real image, not an empty canvas
    assert {"final_objective", "steps", "learning_gemm"} <= set(entries)


PAGES = """{ assetNodes { assetKey { path } description
  assetMaterializations(limit: 1) { metadataEntries { label __typename } } } }"""


def test_every_asset_page_has_a_description_and_its_materialization_a_table_or_plot(webserver):
    nodes = {"/".join(n["assetKey"]["path"]): n for n in graphql(webserver, PAGES)["assetNodes"]}
    undescribed = [name for name, n in nodes.items() if len((n["description"] or "").split()) < 10]
    assert not undescribed
    readable = {"MarkdownMetadataEntry", "TableMetadataEntry"}
    materialized = {name: n["assetMaterializations"][0]["metadataEntries"] for name, n in nodes.items()
                    if n["assetMaterializations"]}
    # the home holds every asset up to the report
    assert {"token_chunks", "activations", "whitening", "whitened_activations", "centroids"} <= set(materialized)
    bare = {name: [e["label"] for e in entries] for name, entries in materialized.items()
            if not readable & {e["__typename"] for e in entries}}
    assert not bare, bare
