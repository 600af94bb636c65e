"""LLM labeling through the real `openai` SDK against a real HTTP server on 127.0.0.1 (faults,
retries, fallback, secrecy of the API key, concurrency), the prompts and parsers, and one label
from the embedded SmolLM2-135M-Instruct."""

from __future__ import annotations

import json
import logging
import secrets
from collections import Counter

import pytest

from latent_atlas.labels.llm import (Completion, LabelingFailed, LLMLabeler, LocalChatClient,
                                     OpenAIChatClient, detection_score)
from latent_atlas.labels.prompts import (PROMPT_VERSION, explain_messages, format_window, parse_detection,
                                         parse_explanation)
from latent_atlas.labels.records import Draft, Example, LabelRequest
from tests.openai_server import OpenAITestServer

WORDS = ["Alpha", "Beta", "Gamma", "Delta", "Epsilon", "Zeta", "Eta", "Theta"]


def window(word: str, cluster: int, strength: float = 0.9, offset: int = 0) -> Example:
    tokens = [" the", " report", " on", f" {word}", " said", " that", " prices"]
    memberships = [0.0, 0.05, 0.0, strength, 0.3, 0.0, 0.0]
    return Example(tokens, memberships, 3, cluster, chunk_id="c0", sequence=cluster, token_position=10 + offset)


def request(cluster: int, parent: str = "") -> LabelRequest:
    word = WORDS[cluster % len(WORDS)]
    return LabelRequest(cluster, [window(word, cluster, 0.9 - 0.1 * i, i) for i in range(3)], parent_label=parent)


class CommonTokenLabeler:
    """A fallback labeler for tests: the most frequent activating token (a real Labeler, no model)."""

    name = "common-token"
    model = ""
    prompt_version = "test"

    def __init__(self):
        self.seen: list[int] = []

    def label(self, requests):
        self.seen += [r.centroid_id for r in requests]
        drafts = []
        for r in requests:
            token = Counter(e.tokens[e.position].strip() for e in r.examples).most_common(1)[0][0]
            drafts.append(Draft(f"{token} tokens", f"The token {token}.", {"requests": 0}))
        return drafts


class _FixedAnswerClient:
    """A chat client that always gives one answer: a small model echoing the few-shot example."""

    name, model = "fixed", "fixed"

    def __init__(self, text):
        self.text = text

    def complete_many(self, prompts, max_tokens):
        return [Completion(self.text, 10, 5) for _ in prompts]


@pytest.fixture()
def server():
    with OpenAITestServer() as running:
        yield running


def client_for(server, api_key="test-key", **options) -> OpenAIChatClient:
    # 1 s: half the 'slow' fault's delay, and room for a reply while another pytest worker holds the cores
    defaults = dict(timeout=1.0, max_retries=3, backoff=0.01)
    return OpenAIChatClient(server.base_url, "test-model", api_key, **{**defaults, **options})


def test_every_fault_is_retried_until_the_answer_comes(server):
    server.state.faults = ["500", "429", "slow", "malformed", "empty"]
    client = client_for(server, max_retries=5)
    [completion] = client.complete_many([explain_messages(request(2))], max_tokens=32)
    assert completion.error is None
    assert parse_explanation(completion.text)[0] == "Gamma words"
    assert completion.attempts == 6 and server.state.count == 6
    assert completion.prompt_tokens > 0 and completion.completion_tokens > 0
    # Retry-After: 0.1 on the 429 was honoured, although our own backoff is 0.01 s.
    assert server.state.requests[2].time - server.state.requests[1].time >= 0.1
    # The SDK's own retries are off: every attempt is ours, and each sent the same request.
    assert all(r.body == server.state.requests[0].body for r in server.state.requests)
    assert server.state.requests[0].body["model"] == "test-model"
    assert server.state.requests[0].body["max_tokens"] == 32


def test_a_request_that_keeps_failing_gives_an_error_and_the_others_are_kept(server):
    server.state.fail_matching = {"<<Zeta>>": "500"}
    client = client_for(server, max_retries=2)
    completions = client.complete_many([explain_messages(request(c)) for c in range(8)], max_tokens=32)
    failed = [i for i, c in enumerate(completions) if c.error]
    assert failed == [5]
    assert "500" in completions[5].error and completions[5].attempts == 3
    labels = [parse_explanation(c.text)[0] for c in completions if not c.error]
    assert labels == [f"{w} words" for i, w in enumerate(WORDS) if i != 5]
    assert server.state.count == 7 + 3


def test_non_retryable_errors_fail_at_once(server):
    server.state.faults = ["401"]
    [completion] = client_for(server).complete_many([explain_messages(request(0))], max_tokens=32)
    assert completion.error and "401" in completion.error and completion.attempts == 1
    assert server.state.count == 1


def test_labeler_sends_failed_clusters_to_the_fallback(server):
    server.state.fail_matching = {"<<Delta>>": "500", "<<Eta>>": "429"}
    fallback = CommonTokenLabeler()
    labeler = LLMLabeler(client_for(server, max_retries=1), name="openai", fallback=fallback)
    assert (labeler.model, labeler.prompt_version) == ("test-model", PROMPT_VERSION)
    drafts = labeler.label([request(c) for c in range(8)])
    assert fallback.seen == [3, 6]
    assert [d.label for d in drafts] == [f"{w} tokens" if i in (3, 6) else f"{w} words" for i, w in enumerate(WORDS)]
    assert [d.usage.get("fallback", 0) for d in drafts] == [int(i in (3, 6)) for i in range(8)]
    assert all(d.usage["requests"] == 1 for i, d in enumerate(drafts) if i not in (3, 6))
    assert drafts[3].usage["requests"] == 2  # both LLM attempts are counted for the fallback's draft
    assert all(d.usage["prompt_tokens"] > 0 for i, d in enumerate(drafts) if i not in (3, 6))
    assert all(d.explanation.endswith(".") for d in drafts)


def test_an_answer_that_copies_a_worked_example_is_not_a_label():
    copied = "Label: Month names in dates\nExplanation: The names March, January and October, mostly in dates."
    labeler = LLMLabeler(_FixedAnswerClient(copied), name="local-llm", fallback=CommonTokenLabeler())
    [draft] = labeler.label([request(1)])
    assert draft.label == "Beta tokens" and draft.usage["fallback"] == 1
    # The same answer for a cluster of month tokens is a real label, not a copy.
    months = LabelRequest(9, [window(m, 9) for m in ["March", "April", "June"]])
    [draft] = labeler.label([months])
    assert draft.label == "Month names in dates" and "fallback" not in draft.usage


def test_an_answer_that_echoes_the_prompt_is_not_a_label():
    echoed = "Label: Name the topic these documents\nExplanation: Name the topic these documents share."
    labeler = LLMLabeler(_FixedAnswerClient(echoed), name="local-llm", fallback=CommonTokenLabeler())
    [draft] = labeler.label([request(1)])
    assert draft.label == "Beta tokens" and draft.usage["fallback"] == 1
    placeholder = LLMLabeler(_FixedAnswerClient("Label: 1. <2-3>\nExplanation: 4."), name="local-llm",
                             fallback=CommonTokenLabeler())
    assert placeholder.label([request(1)])[0].usage["fallback"] == 1


def test_the_parent_worked_example_is_shown_only_to_nodes_with_a_parent():
    plain = "\n".join(m["content"] for m in explain_messages(request(1)))
    child = "\n".join(m["content"] for m in explain_messages(
        LabelRequest(1, request(1).examples, parent_label="Greek letters", node_id="0.1")))
    assert "Reported speech" not in plain and "Reported speech" in child and "Greek letters" in child


def test_labeler_without_fallback_names_the_failed_cluster_and_keeps_the_rest(server):
    server.state.fail_matching = {"<<Theta>>": "500"}
    labeler = LLMLabeler(client_for(server, max_retries=1), name="openai")
    requests = [request(c) for c in range(8)]
    requests[7] = LabelRequest(7, requests[7].examples, parent_label="Greek letters", node_id="0.3")
    with pytest.raises(LabelingFailed, match=r"1 of 8 labels failed.*node 0\.3: HTTP 500") as raised:
        labeler.label(requests)
    assert raised.value.failed.keys() == {7}
    assert [d.label for d in raised.value.drafts[:7]] == [f"{w} words" for w in WORDS[:7]]
    assert raised.value.drafts[7] is None


def test_the_api_key_never_leaves_the_request_header(server, caplog, tmp_path):
    key = "sk-" + secrets.token_hex(16)
    caplog.set_level(logging.DEBUG)  # the SDK's and httpx's debug logs too
    server.state.faults = ["500", "401"]
    server.state.fail_matching = {"<<Beta>>": "500"}
    client = client_for(server, api_key=key, max_retries=2)
    completions = client.complete_many([explain_messages(request(c)) for c in range(3)], max_tokens=32)
    assert any(c.error for c in completions) and any(not c.error for c in completions)
    labeler = LLMLabeler(client, name="openai")
    with pytest.raises(LabelingFailed) as raised:
        labeler.label([request(c) for c in range(3)])
    drafts = LLMLabeler(client, name="openai", fallback=CommonTokenLabeler()).label([request(c) for c in range(3)])
    (tmp_path / "labels.json").write_text(json.dumps([d.__dict__ for d in drafts] + [c.__dict__ for c in completions]))
    (tmp_path / "log.txt").write_text(caplog.text)
    # The key was sent, as a bearer token, and appears nowhere else.
    assert server.state.requests[0].headers["authorization"] == f"Bearer {key}"
    assert all(key not in json.dumps(r.body) for r in server.state.requests)
    for text in [repr(client), str(client.__dict__), repr(labeler), str(raised.value), repr(raised.value.failed),
                 repr(completions), repr(drafts), caplog.text]:
        assert key not in text
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and key.encode() in p.read_bytes()]
    assert "500" in str(raised.value)  # the failure is still explained


def test_no_more_requests_in_flight_than_the_concurrency_limit(server):
    server.state.answer_delay = 0.2
    client = client_for(server, concurrency=3, timeout=5.0)
    completions = client.complete_many([explain_messages(request(c)) for c in range(12)], max_tokens=32)
    assert all(c.error is None for c in completions)
    assert 2 <= server.state.max_in_flight <= 3


def test_detection_score_through_the_endpoint(server):
    members = [window(w, 0, offset=i) for i, w in enumerate(["March", "June", "May", "July", "April", "Monday"])]
    others = [window(w, 1, offset=i) for i, w in enumerate(["bank", "rate", "cup", "goal", "film", "vote", "tax"])]
    client = client_for(server)
    score = detection_score(client, "Capitalized words.", members + others, [True] * 6 + [False] * 7,
                            seed=3, batch_size=5)
    assert score["value"] == 1.0 and score["n"] == 13 and score["requests"] == 3
    assert 0.5 < score["low"] < 1.0 and score["high"] == 1.0
    # Members and non-members were shuffled together and shown without their memberships.
    prompts = [r.body["messages"][-1]["content"] for r in server.state.requests]
    assert any("<<M" in p or "<<J" in p for p in prompts[:2]) and all("(0." not in p for p in prompts)
    # A labeler whose explanation fits nothing scores chance, with an interval that covers it.
    server.state.requests.clear()
    server.state.fail_matching = {}
    lowered = [window(w.lower(), 0, offset=i) for i, w in enumerate(["March", "June", "May", "July"])]
    chance = detection_score(client, "Capitalized words.", lowered + others[:4], [True] * 4 + [False] * 4)
    assert chance["value"] == 0.5 and chance["low"] < 0.5 < chance["high"]


def test_prompt_marks_activating_tokens_with_strengths_and_names_the_parent():
    node = request(4, parent="Greek letters")
    messages = explain_messages(node)
    assert messages[0]["role"] == "system" and messages[-1]["role"] == "user"
    assert [m["role"] for m in messages[1:-1]] == ["user", "assistant"] * (len(messages[1:-1]) // 2)
    last = messages[-1]["content"]
    assert "report on <<Epsilon>>(0.90) <<said>>(0.30) that" in last  # marked with strength, spacing kept
    assert "<<Epsilon>>(0.70)" in last and "<<report>>" not in last  # 0.05 is below the marking threshold
    assert 'Marked tokens: "Epsilon" x3' in last
    assert '"Greek letters"' in last
    assert "Greek letters" not in explain_messages(request(4))[-1]["content"]
    assert len(explain_messages(node, few_shot=False)) == 2
    assert format_window(Example(["a", "\n", "b"], [0.0, 0.8, 0.0], 1, 0), strengths=False) == "a<<\\n>>b"


@pytest.mark.parametrize("text, label, explanation", [
    ("Label: Month names\nExplanation: Names of months. Used in dates. Extra.", "Month names",
     "Names of months. Used in dates."),
    ("**Label:** \"Sports teams\"\n**Explanation:** Names of football\nclubs", "Sports teams",
     "Names of football clubs."),
    ("Sure! Here it is.\nlabel - Money amounts in pounds sterling and euros\nexplanation: Sums of money.",
     "Money amounts in pounds sterling", "Sums of money."),
    ("Commas in lists\nThe commas that separate items.", "Commas in lists", "The commas that separate items."),
    ("Label: Numbers", "Numbers tokens", ""),
    ("Label: <<said>> after quotes", "said after quotes", ""),
    ('Label: for" x8\nExplanation: The word "for"(0.93).', "for tokens", "The word for."),
    ("", "", ""),
])
def test_parse_explanation_reads_noisy_answers(text, label, explanation):
    assert parse_explanation(text) == (label, explanation)


def test_parse_detection_reads_lists_indices_and_yes_no():
    assert parse_detection("Fits: [1, 0, 1]", 3) == [True, False, True]
    assert parse_detection("Fits: [1, 0, 1] (the second does not)", 3) == [True, False, True]
    assert parse_detection("**Fits**: 1, 3", 4) == [True, False, True, False]
    assert parse_detection("1: yes\n2. no\n3) yes", 3) == [True, False, True]
    assert parse_detection("Fits: none", 2) == [False, False]
    assert parse_detection("Fits: [1, 0]", 3) is None  # too few answers: unreadable, not guessed
    assert parse_detection("I am not sure.", 3) is None


def test_local_smollm2_labels_a_demo_like_cluster(tmp_path_factory):
    """The embedded default, one batched greedy generation of two answers on CPU: few-shot makes it
    answer in the Label/Explanation format, and each answer parses to a 2-5 word label."""
    client = LocalChatClient(cache_dir=tmp_path_factory.mktemp("models"), max_new_tokens=40)
    assert (client.name, client.model) == ("local-llm", "SmolLM2-135M-Instruct")
    money = LabelRequest(0, [Example([" profits", " rose", " to", " \u00a3", f"{n}", "m", " last", " year"],
                                     [0.0, 0.0, 0.02, 0.95, 0.4, 0.1, 0.0, 0.0], 3, 0) for n in ["5", "12", "300"]])
    sport = LabelRequest(1, [Example([" the", f" {w}", " won", " the", " match"], [0.0, 0.9, 0.1, 0.0, 0.0], 1, 1)
                             for w in ["Chelsea", "Arsenal", "Liverpool"]], parent_label="Sport")
    completions = client.complete_many([explain_messages(money), explain_messages(sport)], max_tokens=40)
    assert all(c.error is None for c in completions), completions
    assert any("label:" in c.text.lower() for c in completions), completions
    for completion in completions:
        label, explanation = parse_explanation(completion.text)
        assert 2 <= len(label.split()) <= 5, completion
        assert completion.prompt_tokens > 100 and 0 < completion.completion_tokens <= 40


def test_the_judge_scores_confidence_specificity_and_fuzzing_through_the_endpoint(server):
    """The server's judge accepts a window when its marked token is capitalized. Members (months) vs
    lower-case random tokens: confidence 1; vs a neighbour of capitalized weekdays: specificity 0
    (the label cannot tell them apart); the members' windows marked at a wrong (lower-case) token:
    fuzzing 1 -- the judge picks the right token out of its context."""
    from latent_atlas.labels.examples import HeldoutExamples
    from latent_atlas.labels.records import Draft
    from latent_atlas.labels.scorers import ScorerConfig, judge_scores

    months = [window(w, 0, offset=i) for i, w in enumerate(["March", "June", "May", "July", "April", "August"])]
    others = [window(w, 1, offset=i) for i, w in enumerate(["bank", "rate", "cup", "goal", "film", "vote"])]
    weekdays = [window(w, 2, offset=i) for i, w in enumerate(["Monday", "Friday", "Sunday", "Tuesday"])]
    scores, usage = judge_scores(client_for(server), Draft("Capitalized words", "Names of months."),
                                 HeldoutExamples(months, others, weekdays), ScorerConfig(n_bootstrap=200))
    detection, fuzzing = scores["detection"], scores["fuzzing"]
    assert detection["confidence"]["value"] == 1.0 and detection["confidence"]["n_pos"] == 6
    assert detection["specificity"]["value"] == 0.0 and detection["specificity"]["n_neg"] == 4
    assert fuzzing["confidence"]["value"] == 1.0 and fuzzing["confidence"]["n_neg"] == 6
    assert detection["unreadable"] == 0 and usage["requests"] == server.state.count >= 3
    # the wrong marks fall on tokens outside the cluster (membership under the marking threshold)
    prompts = "\n".join(r.body["messages"][-1]["content"] for r in server.state.requests)
    assert "<<said>>" not in prompts and ("<<the>>" in prompts or "<<report>>" in prompts or "<<prices>>" in prompts)
