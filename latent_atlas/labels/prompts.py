"""How examples are shown to an LLM, and how its free-text answers are read back.

Two tasks (after delphi): *explain* (name a cluster from its top windows, the activating tokens
marked `<<token>>(0.93)` with their membership) and *detect* (given an explanation, say which
windows' marked token fits it; the answer scores the explanation). Both prompts are few-shot: a
135M-parameter model copies the format of a worked example far more reliably than it follows an
instruction. The parsers never raise: small models add markdown, drop prefixes or ramble, and a
garbled answer must become a usable label (or `None` for detection) rather than a crash.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Sequence

from latent_atlas.labels.records import Example, LabelRequest

PROMPT_VERSION = "explain-v3+detect-v1"  # change it whenever a prompt or parser changes: it is in every cache key
# The document-tree prompt's own version, in the cache key of document requests only (so that
# changing it relabels document nodes and leaves clusters' labels cached).
DOCUMENT_PROMPT_VERSION = "documents-v2"

MARK_THRESHOLD = 0.25  # tokens of a window at or above this membership are marked (the example's own token always is)

_SYSTEM = (
    "You name features of a language model. A feature is active on some tokens of a text. "
    "In each example the tokens where it is active are marked <<like this>>, followed by the "
    "strength of the activation from 0 to 1. Say what the marked tokens have in common. Answer in "
    "exactly two lines:\nLabel: <2-5 words>\nExplanation: <one or two sentences>"
)


def _shown(token: str) -> str:
    return token.replace("\n", "\\n").replace("\r", "\\r").replace("\t", " ")


def format_window(example: Example, strengths: bool = True, threshold: float = MARK_THRESHOLD) -> str:
    """The window as text with its activating tokens marked: `<<tok>>(0.93)`, or `<<tok>>` without
    strengths. A token's leading space stays outside the marks so the words still read normally."""
    parts = []
    for i, token in enumerate(example.tokens):
        value = float(example.memberships[i]) if i < len(example.memberships) else 0.0
        marked = i == example.position if not strengths else (i == example.position or value >= threshold)
        text = _shown(token)
        if marked:
            core = text.lstrip(" ")
            text = f"{text[:len(text) - len(core)]}<<{core}>>" + (f"({value:.2f})" if strengths else "")
        parts.append(text)
    return "".join(parts).strip()


def marked_token_counts(examples: Sequence[Example], most: int = 5) -> str:
    """The examples' own tokens, most frequent first (`"," x10, "for" x2`): a small model names a
    cluster from this summary far more often than from the windows alone."""
    counts = Counter(_shown(e.tokens[e.position]).strip() or _shown(e.tokens[e.position]) for e in examples)
    return ", ".join(f'"{token}" x{n}' for token, n in counts.most_common(most))


def _explain_user(examples: Sequence[Example], parent_label: str) -> str:
    lines = ["Examples:"]
    lines += [f"{i}. {format_window(e)}" for i, e in enumerate(examples, 1)]
    if parent_label:
        lines.append(f'This feature is a narrower part of the parent feature "{parent_label}": '
                     "name what is specific to it.")
    # Last, next to the answer: a small model attends to what is nearest.
    lines.append(f"Marked tokens: {marked_token_counts(examples)}. Name the feature from them.")
    return "\n".join(lines)


def _example(words: list[str], marks: dict[int, float], position: int) -> Example:
    memberships = [marks.get(i, 0.0) for i in range(len(words))]
    return Example(tokens=words, memberships=memberships, position=position, cluster=-1)


# Worked examples in the format the demo's windows have (leading-space tokens, 0-1 memberships).
# Three different kinds (content words, punctuation, a node with a parent) so that the model copies
# the format, not one answer; LLMLabeler rejects an answer that repeats a worked example's label.
_FEW_SHOT: list[tuple[list[Example], str, str]] = [
    (
        [
            _example(["Sales", " rose", " in", " March", " after", " a", " weak", " winter"], {3: 0.97}, 3),
            _example(["The", " law", " takes", " effect", " on", " 1", " January", " next", " year"], {6: 0.91}, 6),
            _example(["Results", " are", " due", " in", " late", " October", ",", " the", " firm", " said"],
                     {5: 0.88}, 5),
        ],
        "",
        "Label: Month names in dates\nExplanation: The month names March, January and October in dates.",
    ),
    (
        [
            _example(["He", " left", " the", " club", ".", " The", " fans", " were", " angry"], {4: 0.99}, 4),
            _example(["Shares", " fell", " 3", "%.", " Analysts", " blamed", " oil"], {3: 0.86, 4: 0.31}, 3),
            _example(["It", " opens", " in", " May", ".", " Tickets", " cost", " more"], {4: 0.93}, 4),
        ],
        "",
        "Label: Full stop ending sentences\nExplanation: The full stop token \".\" at the end of a sentence.",
    ),
    (
        [
            _example(["\"", "We", " will", " win", ",\"", " the", " coach", " said", " on", " Friday"], {7: 0.95}, 7),
            _example(["\"", "It", " is", " over", ",\"", " she", " told", " reporters", "."], {6: 0.83}, 6),
            _example(["Prices", " will", " fall", ",", " analysts", " said", " in", " a", " note"], {5: 0.79}, 5),
        ],
        "Reported speech",
        "Label: Said and told after quotes\nExplanation: The tokens said and told after a quote, naming who spoke.",
    ),
]

def _marked_words(examples: Sequence[Example]) -> set[str]:
    return {e.tokens[e.position].strip().lower() for e in examples}


_FEW_SHOT_WORDS = {answer.splitlines()[0].removeprefix("Label: ").lower(): _marked_words(examples)
                   for examples, _, answer in _FEW_SHOT}


_INSTRUCTION_ECHOES = ("name the", "name what", "document", "examples", "marked tokens", "label", "the topic")


def echoes_instruction(label: str) -> bool:
    """True when `label` repeats the prompt's own words ('Name the topic these documents', 'Document 1',
    '<2-3>') instead of naming anything: a small model's frequent answer, no label at all."""
    cleaned = _clean(label).lower()
    # No letter at all ('1. <2-3>'): the answer format's placeholder, not a name.
    return cleaned.startswith(_INSTRUCTION_ECHOES) or not any(ch.isalpha() for ch in cleaned)


def copies_worked_example(label: str, request: LabelRequest) -> bool:
    """True when `label` is a worked example's label although the request's marked tokens share
    none with that example's: a small model echoing the prompt, not naming the cluster."""
    words = _FEW_SHOT_WORDS.get(label.lower())
    return words is not None and not words & _marked_words(request.examples)


_DOCUMENT_SYSTEM = (
    "You name groups of documents. You get the openings of some documents of one group. Say what "
    "topic they share. Answer in exactly two lines:\nLabel: <2-5 words>\nExplanation: <one or two sentences>"
)

_DOCUMENT_FEW_SHOT = (
    [Example(tokens=[text], memberships=[1.0], position=0, cluster=-1, excerpt=True) for text in (
        "Rain delays harvest across the Midwest. Farmers say the wet spring has cut the corn crop",
        "Wheat prices hit a five-year high as drought in Australia shrinks the expected yield",
        "A new tractor that steers itself by satellite went on sale to farms in Iowa this week",
    )],
    "Label: Farming and crops\nExplanation: News about agriculture: harvests, crop prices and farm machinery.",
)


def _documents_user(examples: Sequence[Example], parent_label: str) -> str:
    lines = ["Documents:"] + [f"{i}. {format_window(e)}" for i, e in enumerate(examples, 1)]
    if parent_label:
        lines.append(f'This group is a narrower part of the group "{parent_label}": name what is specific to it.')
    lines.append("Name the topic these documents share.")
    return "\n".join(lines)


def explain_messages(request: LabelRequest, few_shot: bool = True) -> list[dict]:
    """Chat messages asking for a label of `request`'s cluster (or tree node): system, the worked
    examples as user/assistant turns, then the request, its parent's label included for a node.
    A document-tree node (`unit == 'document'`) is asked for the topic of its documents' openings."""
    if request.unit == "document":
        messages = [{"role": "system", "content": _DOCUMENT_SYSTEM}]
        if few_shot:
            messages += [{"role": "user", "content": _documents_user(_DOCUMENT_FEW_SHOT[0], "")},
                         {"role": "assistant", "content": _DOCUMENT_FEW_SHOT[1]}]
        return messages + [{"role": "user", "content": _documents_user(request.examples, request.parent_label)}]
    messages = [{"role": "system", "content": _SYSTEM}]
    if few_shot:
        # The worked example with a parent only for a node with one: a small model otherwise copies
        # that parent's name into labels of clusters that have none.
        for examples, parent, answer in _FEW_SHOT:
            if parent and not request.parent_label:
                continue
            messages.append({"role": "user", "content": _explain_user(examples, parent)})
            messages.append({"role": "assistant", "content": answer})
    messages.append({"role": "user", "content": _explain_user(request.examples, request.parent_label)})
    return messages


_DECORATION = " \t\"'`*_#<>[]()."
_TRAILING_FILLER = {"and", "or", "of", "the", "a", "an", "in", "on", "to", "for", "with", "that"}
_FIELD = re.compile(r"^[\s*_#>-]*(label|name|feature|explanation|description)\s*[*_]*\s*[:\-–]\s*[*_]*\s*(.*)$",
                    re.IGNORECASE)


def _clean(text: str) -> str:
    text = re.sub(r"\(\d?\.\d+\)|\bx\d+\b", "", text)  # echoed strengths '(0.93)' and counts 'x8'
    text = text.replace("<<", "").replace(">>", "").replace('"', "")
    return re.sub(r"\s+", " ", text).strip(_DECORATION + "\n")


def _label_words(text: str) -> str:
    words = _clean(text).split()[:5]
    while len(words) > 2 and words[-1].lower().strip(",;:") in _TRAILING_FILLER:
        words.pop()
    words = [w.strip(",;:") for w in words if w.strip(",;:")]
    if len(words) == 1:
        words.append("tokens")  # a bare word names what the tokens are; keep the 2-word minimum
    return " ".join(words)


def _sentences(text: str, most: int = 2) -> str:
    found = re.findall(r"[^.!?]+[.!?]+|[^.!?]+$", _clean(text))
    kept = " ".join(s.strip() for s in found[:most] if s.strip())
    return kept if not kept or kept[-1] in ".!?" else kept + "."


def parse_explanation(text: str) -> tuple[str, str]:
    """(label of 2-5 words, explanation of one or two sentences) from an LLM's answer.

    Reads `Label:` / `Explanation:` lines in any case, with markdown or dashes around them;
    without a `Label:` line the first line is the label; without an explanation the rest of the
    text is. An empty answer gives ('', '')."""
    fields: dict[str, list[str]] = {}
    current = None
    loose: list[str] = []
    for line in re.sub(r"\s+/\s+(?=explanation\s*:)", "\n", text.strip(), flags=re.IGNORECASE).splitlines():
        match = _FIELD.match(line)
        if match:
            kind = match.group(1).lower()
            current = "label" if kind in ("label", "name", "feature") else "explanation"
            fields.setdefault(current, []).append(match.group(2))
        elif current == "explanation":
            fields[current].append(line)  # an explanation that wraps onto further lines
        elif line.strip():
            loose.append(line)
    label_text = fields.get("label", [""])[0] if fields.get("label") else ""
    if not _clean(label_text):
        label_text = loose.pop(0) if loose else ""
    explanation_text = " ".join(fields.get("explanation", [])) or " ".join(loose)
    label = _label_words(label_text) if _clean(label_text) else ""
    if not label and explanation_text:
        label = _label_words(explanation_text)
    return label, _sentences(explanation_text)


# --- detection: does each window's marked token fit the explanation? ---

_DETECT_SYSTEM = (
    "You check explanations of language model features. You get an explanation and numbered text "
    "windows, each with one token marked <<like this>>. For every window decide if the marked token "
    "fits the explanation. Answer with one line: Fits: [list of 1 or 0, one per window, in order]"
)

_DETECT_FEW_SHOT = (
    "Names of calendar months, mostly in dates.",
    [
        _example(["Talks", " resume", " in", " June", " in", " Paris"], {3: 1.0}, 3),
        _example(["The", " bank", " raised", " rates", " again"], {1: 1.0}, 1),
        _example(["By", " 5", " December", " the", " deal", " was", " done"], {2: 1.0}, 2),
        _example(["Shares", " fell", " sharply", " on", " Monday"], {2: 1.0}, 2),
    ],
    "Fits: [1, 0, 1, 0]",
)


_DETECT_DOCUMENTS_SYSTEM = (
    "You check explanations of groups of documents. You get an explanation and numbered document openings. "
    "For every document decide if it fits the explanation. Answer with one line: "
    "Fits: [list of 1 or 0, one per document, in order]"
)


def _detect_user(explanation: str, examples: Sequence[Example]) -> str:
    lines = [f"Explanation: {explanation}", "Windows:"]
    lines += [f"{i}. {format_window(e, strengths=False)}" for i, e in enumerate(examples, 1)]
    lines.append(f"Answer for all {len(examples)} windows: Fits: [..]")
    return "\n".join(lines)


def detection_messages(explanation: str, examples: Sequence[Example], few_shot: bool = True) -> list[dict]:
    """Chat messages asking which windows' marked token fits `explanation` (memberships hidden);
    for document excerpts, which documents fit."""
    if examples and all(e.excerpt for e in examples):
        return [{"role": "system", "content": _DETECT_DOCUMENTS_SYSTEM},
                {"role": "user", "content": _detect_user(explanation, examples)}]
    messages = [{"role": "system", "content": _DETECT_SYSTEM}]
    if few_shot:
        shot_explanation, shot_examples, answer = _DETECT_FEW_SHOT
        messages.append({"role": "user", "content": _detect_user(shot_explanation, shot_examples)})
        messages.append({"role": "assistant", "content": answer})
    messages.append({"role": "user", "content": _detect_user(explanation, examples)})
    return messages


_YES = {"1", "yes", "y", "true", "fits", "fit"}
_NO = {"0", "no", "n", "false"}


def parse_detection(text: str, n: int) -> list[bool] | None:
    """One yes/no per window from a detection answer, or None when it cannot be read.

    Accepts a 0/1 (or yes/no) list of exactly n entries (`Fits: [1, 0, 1]`), per-window lines
    (`2: yes`), or a list of the 1-based numbers of the windows that fit (`Fits: 2, 5`)."""
    bracket = re.search(r"\[([^\]]*)\]", text)
    if bracket:
        first = bracket.group(1)
    else:
        fits = re.search(r"fits\s*[*_]*\s*:(.*)", text, re.IGNORECASE)
        body = (fits.group(1) if fits else text).strip()
        first = body.splitlines()[0] if body else ""
    tokens = re.findall(r"[A-Za-z]+|\d+", first.lower())
    if len(tokens) == n and all(t in _YES or t in _NO for t in tokens):
        return [t in _YES for t in tokens]
    per_line = re.findall(r"^\s*(\d+)\s*[.:)\-]\s*(yes|no|1|0|true|false)\b", text, re.IGNORECASE | re.MULTILINE)
    if per_line:
        answers = {int(i): v.lower() in _YES for i, v in per_line if 1 <= int(i) <= n}
        if len(answers) == n:
            return [answers[i] for i in range(1, n + 1)]
    numbers = [int(t) for t in tokens if t.isdigit()]
    if "none" in tokens and not numbers:
        return [False] * n
    if numbers and all(1 <= k <= n for k in numbers) and len(set(numbers)) == len(numbers):
        chosen = set(numbers)
        return [i in chosen for i in range(1, n + 1)]
    return None
