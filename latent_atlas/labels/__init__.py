"""Labels for clusters and tree nodes, with a confidence measured on held-out examples.

One home per stage (after EleutherAI's delphi): `records` (what a label is), `prompts` (how
examples are shown), labelers (`keywords` offline c-TF-IDF, `llm` through a `ChatClient`: the
local SmolLM2-Instruct or any OpenAI-compatible endpoint), `scorers` (confidence from held-out
examples the labeler never saw), `cache` (one JSON file per cluster, keyed by what was shown).
"""
