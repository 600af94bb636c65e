"""How many of the tests' tiny-corpus clusters die or move in the last epoch (the few_dead_clusters gate).

`python benchmarks/tiny_corpus_churn.py K [EPOCHS]`: materializes `centroids` on the tests' corpus
(20 BBC documents, MiniLM, tests.conftest.materialized) in a fresh home and prints the check's
verdict at the default gate (max_dead_fraction 0.05), its metadata, and the learning GEMM that ran.
Run it again with torch's AVX2 caps set from outside for the AVX2 path's figure.
"""

import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
HOME = Path(tempfile.mkdtemp())
os.environ["ATLAS_HOME"], os.environ["DAGSTER_HOME"] = str(HOME), str(HOME / "dagster")
(HOME / "dagster").mkdir()

import dagster as dg  # noqa: E402

from resources import CorpusResource  # noqa: E402
from tests.conftest import check_metadata, check_results, materialized  # noqa: E402


def main() -> None:
    config = {"n_clusters": int(sys.argv[1])}
    if len(sys.argv) > 2:
        config["n_epochs"] = int(sys.argv[2])
    corpus = CorpusResource(documents_per_category=2, sequences_per_chunk=12)
    with materialized(HOME, corpus, ["centroids"], asset_config={"centroids": config}) as (_, instance, _, _):
        [churn] = check_metadata(instance, "few_dead_clusters")
        fit = instance.fetch_materializations(dg.AssetKey("centroids"), limit=1).records[0]
        metadata = fit.event_log_entry.asset_materialization.metadata
        print(config, "few_dead_clusters passed:", check_results(instance)["few_dead_clusters"], churn)
        print({"steps": metadata["steps"].value, "learning_gemm": metadata["learning_gemm"].value})


if __name__ == "__main__":
    main()
