"""The asset graph materialized in process on a persistent Dagster instance, on real data."""

import numpy as np
import pyarrow.parquet as pq

from latent_atlas.data.chunks import read_chunk
from latent_atlas.data.whitening import Whitening, covariance_error
from resources import CorpusResource, ModelResource
from tests.conftest import SMALL_CORPUS_MAX_DEAD, check_metadata, check_results, materialized, write_seed_npz


def test_text_corpus_end_to_end_with_minilm(atlas_home):
    corpus = CorpusResource(documents_per_category=2, sequences_per_chunk=12)
    # the foundation and clustering; analysis and hierarchy have end-to-end tests of their own
    with materialized(atlas_home, corpus, ["memberships"]) as (defs, instance, keys, report):
        assert len(keys) >= 2 and keys[0] == "bbc-00000"
        assert report.failed == {}
        assert (atlas_home / "tables" / "memberships" / f"{keys[0]}.parquet").exists()

        tables = [pq.read_table(atlas_home / "tables" / "token_chunks" / f"{k}.parquet") for k in keys]
        assert sum(t.num_rows for t in tables) > 0
        assert set(tables[0].column("category").to_pylist()) <= {"business", "entertainment", "politics", "sports", "tech"}

        chunk = read_chunk(atlas_home / "tensors" / "activations" / keys[0])
        assert chunk.activations.shape[1:] == (128, 384) and chunk.meta["layer"] == 3
        # analysis mask excludes [CLS]/[SEP]/padding
        cls_id = ModelResource(name="minilm-l6").tokenizer().cls_token_id
        assert not chunk.attention_mask[chunk.token_ids == cls_id].any()

        whitening = Whitening.load(atlas_home / "tensors" / "whitening.npz")
        assert whitening.method == "zca" and whitening.dim == 384
        whitened = [read_chunk(atlas_home / "tensors" / "whitened_activations" / k) for k in keys]
        vectors = np.concatenate([w.activations[w.attention_mask] for w in whitened]).astype(np.float32)
        assert abs(covariance_error(vectors)["mean_diag"] - 1) < 0.05

        checks = check_results(instance)
        # the gate reads the share it reports: clusters dead now or moved in the last epoch, of k=64
        [churn] = check_metadata(instance, "few_dead_clusters")
        assert churn["share"] == (churn["dead_now"] + churn["moved_in_last_epoch"]) / 64 <= SMALL_CORPUS_MAX_DEAD
        # every run is a named stage job the UI can re-execute, never Dagster's ephemeral job
        jobs = {r.job_name for r in instance.get_runs()}
        assert jobs == {"token_chunks_stage", "whitening_stage", "whitened_activations_stage",
                        "centroids_stage_adhoc", "memberships_stage_adhoc"}  # the last two: subsets of a stage
    assert checks == dict.fromkeys({"whitened_covariance_is_identity", "finite_and_shaped", "mask_token_alignment",
                                    "centroids_unit_norm_and_finite", "few_dead_clusters", "memberships_valid"}, True)


def test_bad_npz_chunk_fails_alone_and_leaves_nothing(atlas_home, tmp_path):
    folder = tmp_path / "npz"
    folder.mkdir()
    for i in range(2):
        write_seed_npz(folder / f"good{i}.npz", seed=i)
    acts = np.zeros((6, 16, 32), np.float16)
    acts[1, 2, 3] = np.inf
    write_seed_npz(folder / "bad.npz", activations=acts)
    corpus = CorpusResource(source="npz", path=str(folder), already_whitened=True, expected_dim=32)
    with materialized(atlas_home, corpus, ["memberships"]) as (_, _, keys, report):
        assert keys == ["npz-bad", "npz-good0", "npz-good1"]
    assert list(report.failed) == ["npz-bad"]
    assert "bad.npz" in report.failed["npz-bad"] and "NaN/Inf" in report.failed["npz-bad"]
    # outputs are named by partition key (temp files too); run ids under dagster/ may contain "bad"
    leftovers = [p for p in atlas_home.rglob("*npz-bad*") if p.parent.name != "manifests"]
    assert leftovers == []
    whitening = Whitening.load(atlas_home / "tensors" / "whitening.npz")
    assert whitening.method == "identity"
    good = read_chunk(atlas_home / "tensors" / "whitened_activations" / "npz-good0")
    np.testing.assert_array_equal(good.activations[good.attention_mask],
                                  read_chunk(atlas_home / "tensors" / "activations" / "npz-good0").activations[good.attention_mask])
