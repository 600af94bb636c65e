"""The Dagster run configs are derived from the library's dataclasses: same fields, defaults and docs."""

import dataclasses

import dagster as dg
import pytest

from assets.analysis import ChunkStatsConfig
from assets.clustering import CentroidsConfig
from assets.ensemble import MergeHierarchyConfig
from assets.hierarchy import ClusterTreeConfig, TreeBuildConfig
from assets.configs import attribute_docs, config_class, library_config
from assets.labels import ClusterLabelsConfig, NodeLabelsConfig
from assets.report import AtlasReportConfig
from assets.steering import SteeringEvalAssetConfig
from latent_atlas.analysis.statistics import StatisticsConfig
from latent_atlas.clustering.model import ClusteringConfig
from latent_atlas.hierarchy.mdl import MergeConfig
from latent_atlas.hierarchy.tree_config import TreeConfig
from latent_atlas.labels.examples import HeldoutConfig
from latent_atlas.labels.nodes import NodeExamplesConfig
from latent_atlas.labels.scorers import ScorerConfig
from latent_atlas.report import ReportConfig
from latent_atlas.steering.evaluation import SteeringEvalConfig

# (asset config, library dataclass, fields a resource supplies instead)
DERIVED = [
    (CentroidsConfig, ClusteringConfig, {"device", "npz_keys"}),
    (ChunkStatsConfig, StatisticsConfig, set()),
    (ClusterLabelsConfig, HeldoutConfig, set()),
    (ClusterLabelsConfig, ScorerConfig, {"detection_client"}),
    (NodeLabelsConfig, NodeExamplesConfig, set()),
    (NodeLabelsConfig, ScorerConfig, {"detection_client"}),
    (SteeringEvalAssetConfig, SteeringEvalConfig, set()),
    (AtlasReportConfig, ReportConfig, set()),
    (TreeBuildConfig, TreeConfig, set()),
    (ClusterTreeConfig, TreeConfig, set()),
    (MergeHierarchyConfig, MergeConfig, set()),
]


@pytest.mark.parametrize("config, library, supplied", DERIVED, ids=lambda x: getattr(x, "__name__", ""))
def test_every_library_field_is_exposed_with_its_default(config, library, supplied):
    exposed = set(config.model_fields)
    for f in dataclasses.fields(library):
        if f.name in supplied:
            assert f.name not in exposed
            continue
        assert f.name in exposed, f"{config.__name__} leaves out {library.__name__}.{f.name}"
    resolved = {name: getattr(library(), name) for name in supplied}
    assert library_config(config(), library, **resolved) == library()  # defaults cannot drift


def test_descriptions_come_from_the_attribute_docstrings():
    docs = attribute_docs(ClusteringConfig)
    assert CentroidsConfig.model_fields["temperature"].description == docs["temperature"]
    assert docs["temperature"].startswith("Softmax temperature")
    assert all(CentroidsConfig.model_fields[n].description for n in ("n_clusters", "learn_precision", "top_m"))


def test_overrides_reach_the_library_nested_and_as_tuples():
    stats = library_config(ChunkStatsConfig(heldout_fraction=0.2, exemplars={"top_k": 3, "seed": 7}))
    assert stats.heldout_fraction == 0.2 and stats.exemplars.top_k == 3 and stats.exemplars.seed == 7
    steering = library_config(SteeringEvalAssetConfig(alphas=[0.5, 2.0]))
    assert steering.alphas == (0.5, 2.0)  # the library's tuple, not the run config's list
    scorer = library_config(ClusterLabelsConfig(seed=3, score_window=None), ScorerConfig)
    assert scorer.seed == 3 and scorer.score_window is None
    assert library_config(ClusterLabelsConfig(seed=3), HeldoutConfig).seed == 3  # one seed for both


def test_a_run_config_is_validated_by_dagster_against_the_library_fields():
    seen = {}

    @dg.asset
    def probe(config: CentroidsConfig):
        seen["k"] = library_config(config, device="cpu").n_clusters

    assert dg.materialize([probe], run_config={"ops": {"probe": {"config": {"n_clusters": 7}}}}).success
    assert seen["k"] == 7
    with pytest.raises(dg.DagsterInvalidConfigError, match="not_a_field"):
        dg.materialize([probe], run_config={"ops": {"probe": {"config": {"not_a_field": 1}}}})


def test_libraries_that_disagree_on_a_shared_field_are_refused():
    @dataclasses.dataclass
    class A:
        seed: int = 0

    @dataclasses.dataclass
    class B:
        seed: int = 1

    with pytest.raises(TypeError, match="seed"):
        config_class(A, B)
