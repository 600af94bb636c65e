"""Token-level analysis of a sentence against a small real atlas (MiniLM on BBC News)."""

import json
import math
from dataclasses import dataclass

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from latent_atlas.clustering.model import SequentialSoftClustering
from latent_atlas.data.models import extract_activations
from latent_atlas.data.whitening import Whitening
from latent_atlas.labels.records import CentroidExplanation
from latent_atlas.reading.sentences import (SentenceAnalyzer, TokenAnalysis, deterministic_summary, display_token,
                                            table, to_json)
from orchestration.cli import main
from resources import CorpusResource
from tests.conftest import materialized

SENTENCE = "The quick brown fox jumps over the lazy dog."


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """An ATLAS_HOME with whitening, centroids and exemplars, built once for the module."""
    home = tmp_path_factory.mktemp("analyze") / "atlas"
    (home / "dagster").mkdir(parents=True)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("ATLAS_HOME", str(home))
        env.setenv("DAGSTER_HOME", str(home / "dagster"))
        corpus = CorpusResource(documents_per_category=2, sequences_per_chunk=12)
        with materialized(home, corpus, ["centroids", "exemplars"]) as (_, _, _, report):
            assert report.failed == {}
        yield home


@pytest.fixture(scope="module")
def analyzer(home):
    return SentenceAnalyzer(home, top=3)


def test_one_row_per_token_with_the_tokenizers_strings(analyzer):
    rows = analyzer.analyze_sentence(SENTENCE)
    tokenizer = analyzer.model.tokenizer
    ids = tokenizer(SENTENCE, add_special_tokens=False)["input_ids"]
    assert [r.token_id for r in rows] == ids
    assert [r.token for r in rows] == [tokenizer.decode([i]) for i in ids]
    assert [r.token for r in rows][:3] == ["the", "quick", "brown"]  # MiniLM lower-cases; its [CLS] comes first
    # positions count the [CLS] the model read, and none is skipped (the corpus skips its first 4)
    assert [r.position for r in rows] == list(range(1, len(ids) + 1))
    for r in rows:
        assert 1 <= len(r.clusters) <= 3 and len(set(r.clusters)) == len(r.clusters)
        assert all(0 < v <= 1 + 1e-6 for v in r.memberships) and r.memberships == sorted(r.memberships, reverse=True)
        assert r.label == "" and math.isnan(r.confidence)  # no label files in this home


def test_top_cluster_is_the_prediction_for_the_whitened_vector(analyzer, home):
    rows = analyzer.analyze_sentence(SENTENCE)
    loaded = analyzer.model
    encoded = loaded.tokenizer(SENTENCE, return_tensors="np")
    acts = extract_activations(loaded, encoded["input_ids"], encoded["attention_mask"], analyzer.layer, 1)
    whitened = Whitening.load(home / "tensors" / "whitening.npz").transform(acts[0, 1:-1]).astype(np.float16)
    centroids = SequentialSoftClustering.load(home / "tensors" / "centroids.npz")
    clusters, values = centroids.soft_memberships(whitened)
    predicted = centroids.predict(whitened)
    # the same vectors by another path: near-ties may flip on rounding, anything clear-cut must agree
    clear = values[:, 0] - values[:, 1] > 1e-3
    assert clear.mean() > 0.5
    assert [r.clusters[0] for r, c in zip(rows, clear) if c] == predicted[clear].tolist()
    np.testing.assert_allclose([r.memberships[0] for r in rows], values[:, 0], atol=2e-3)


def test_a_labeled_cluster_shows_its_label_on_its_tokens(home):
    plain = SentenceAnalyzer(home).analyze_sentence(SENTENCE)
    cluster = plain[1].clusters[0]
    record = CentroidExplanation(
        centroid_id=cluster, label="adjectives of speed", explanation="Fires on adjectives describing motion.",
        confidence=0.72, confidence_interval=(0.61, 0.8), scores={"embedding_auroc": {"value": 0.86, "n": 40}},
        top_k_examples=["a quick win"], timestamp="2024-01-01T12:00:00", metadata={"labeler": "test"},
    )
    path = home / "labels" / "clusters" / f"centroid_{cluster}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(record.to_json())
    try:
        rows = SentenceAnalyzer(home).analyze_sentence(SENTENCE)
    finally:
        path.unlink()
    assert [r.clusters for r in rows] == [r.clusters for r in plain]
    for row in rows:
        if row.clusters[0] == cluster:
            assert (row.label, row.confidence, row.confidence_low, row.confidence_high) == ("adjectives of speed", 0.72, 0.61, 0.8)
            assert row.explanation == record.explanation
        else:
            assert row.label == "" and math.isnan(row.confidence) and math.isnan(row.confidence_low)
    assert "adjectives of speed" in table(rows).splitlines()[3]  # header, rule, 'the', 'quick'
    summary = deterministic_summary(rows)
    assert "not an LLM" in summary and f"cluster {cluster} 'adjectives of speed' (confidence 0.72" in summary


def test_cli_json_gives_the_same_rows(home, analyzer, capsys):
    assert main(["analyze", SENTENCE, "--home", str(home), "--json", "--top", "3"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(to_json(analyzer.analyze_sentence(SENTENCE)))
    assert printed[0]["confidence"] is None  # NaN is not JSON


def test_cli_meta_and_a_home_without_an_atlas(home, tmp_path, capsys):
    assert main(["analyze", SENTENCE, "--home", str(home), "--meta"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Pos") and "deterministic, not an LLM's interpretation" in out
    assert main(["analyze", SENTENCE, "--home", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert "whitening.npz: not found" in err and "run `latent-atlas demo` first" in err


def test_tokens_near_uniform_membership_get_no_cluster(analyzer, monkeypatch):
    """A token whose largest membership is under min_over_uniform / k is in no cluster and gets no
    label: with the floor at 1 no token of the sentence is claimed by a cluster; with 0 all are."""
    monkeypatch.setattr(analyzer, "min_over_uniform", float(analyzer.n_clusters))
    rows = analyzer.analyze_sentence(SENTENCE)
    assert not any(r.assigned or r.label for r in rows) and all(math.isnan(r.confidence) for r in rows)
    assert all("(no cluster" in line for line in table(rows).splitlines()[2:])
    assert "In no cluster" in deterministic_summary(rows) and "fall into 0 clusters" in deterministic_summary(rows)
    monkeypatch.setattr(analyzer, "min_over_uniform", 0.0)
    assert all(r.assigned for r in analyzer.analyze_sentence(SENTENCE))


def test_table_layout(analyzer):
    rows = analyzer.analyze_sentence(SENTENCE)
    newline = TokenAnalysis(len(rows) + 1, "\n", 0, [3], [0.5], "", math.nan, math.nan, math.nan, "")
    lines = table([*rows, newline]).splitlines()
    assert lines[0].split() == ["Pos", "Token", "C-ID", "Conf", "Spec", "Act", "Explanation"]
    assert len(lines) == 2 + len(rows) + 1 and set(lines[1]) == {"-"}
    at = lines[0].index("C-ID")
    for line, row in zip(lines[2:], rows):  # columns aligned: each row's cluster id sits under C-ID
        assert line[at:].split()[0] == (str(row.clusters[0]) if row.assigned else "-")
        assert line.split()[0] == str(row.position) and row.token in line
        assert ("(no cluster" in line) == (not row.assigned)
    assert "'\\n'" in lines[-1] and "\n" not in lines[-1]
    assert display_token(" ") == "' '" and display_token(" fox") == " fox" and display_token("a\tb") == "a\\tb"


def test_validation_examples_are_the_top_exemplars_by_activation(analyzer, home):
    exemplars = pq.read_table(home / "tables" / "exemplars.parquet")
    top = exemplars.filter(pc.equal(exemplars["kind"], "top_k"))
    cluster = int(pc.mode(top["cluster"])[0]["mode"].as_py())
    available = top.filter(pc.equal(top["cluster"], cluster))
    k = min(5, available.num_rows)
    examples = analyzer.get_top_k_validation_examples(cluster, k)
    assert len(examples) == k
    activations = [e.activation for e in examples]
    assert activations == sorted(activations, reverse=True)
    assert activations[0] == pytest.approx(pc.max(available["membership"]).as_py())
    for e in examples:
        assert e.text == "".join(e.token_strings) and len(e.tokens) == len(e.token_strings)
        assert e.token_strings[e.token_position] == analyzer.model.tokenizer.decode([e.tokens[e.token_position]])
    assert len(analyzer.get_top_k_validation_examples(cluster, 10_000)) == available.num_rows
    with pytest.raises(ValueError, match="centroid_id must be in 0.."):
        analyzer.get_top_k_validation_examples(analyzer.n_clusters, 3)


@dataclass
class Reply:
    text: str
    error: str = ""


class RecordingClient:
    """A chat client of the labels.llm interface that answers with a fixed text and keeps the prompts."""

    def __init__(self, reply: Reply):
        self.reply, self.prompts = reply, []

    def complete_many(self, prompts, max_tokens):
        self.prompts += prompts
        return [self.reply for _ in prompts]


def test_meta_interpretation_through_a_client_is_grounded_in_the_table(analyzer):
    rows = analyzer.analyze_sentence(SENTENCE)
    client = RecordingClient(Reply("  The model groups the adjectives together.  "))
    assert analyzer.interpret_with_meta_model(SENTENCE, client, rows) == "The model groups the adjectives together."
    (messages,) = client.prompts
    prompt = messages[-1]["content"]
    assert messages[-1]["role"] == "user" and SENTENCE in prompt
    # every token the table assigns is listed under its cluster; a near-uniform one is named as such
    lines = prompt.splitlines()
    assert any(r.assigned for r in rows)
    for r in rows:
        if r.assigned:
            (line,) = [line for line in lines if line.startswith(f"- cluster {r.clusters[0]} ")]
            assert repr(r.token) in line
        else:
            assert "(no cluster: membership near uniform)" in prompt
    with pytest.raises(RuntimeError, match="HTTP 500"):
        analyzer.interpret_with_meta_model(SENTENCE, RecordingClient(Reply("", "HTTP 500")), rows)
