"""Token claims: a label that names tokens ("in", "'.'", "fires on 'said'") is a predicate over tokens.

A label claims the tokens it quotes ('.' or "said"); the keyword labeler's explanation quotes every
term it names ("Fires on 'in', 'at' ..."). The claim holds for an example when the example's own
token, stripped of surrounding whitespace as the keyword labeler counts it (`term_of`), is one of
them. Case counts: "In" at a sentence start is another claim than "in", and the keyword labeler
names whichever case the cluster fires on. A label that quotes nothing makes no token claim and is
scored by the other scorers.
"""

from __future__ import annotations

import re

from latent_atlas.labels.keywords import term_of
from latent_atlas.labels.records import Example

# A quoted token: after the start, a space or an opening bracket/comma; a short text on one line;
# the same quote closing it, followed by punctuation, a space or the end. The text may hold the
# other quote or an apostrophe ('"', ''s', 'don't'); "it's" opens no quote, since a letter precedes it.
_QUOTED = re.compile(r"""(?:^|(?<=[\s(\[,:;/]))(?:'(.{1,24}?)'|"(.{1,24}?)"|“(.{1,24}?)”|‘(.{1,24}?)’)(?=[\s,.;:)\]/!?]|$)""")
_NONE_CLAIMED = "no active tokens"


def claimed_tokens(label: str, explanation: str) -> frozenset[str]:
    """The tokens a label claims (as `term_of` writes them): the quoted texts of its label and
    explanation; empty when it quotes none."""
    if label == _NONE_CLAIMED:
        return frozenset()
    found = ("".join(groups) for groups in _QUOTED.findall(f"{label}\n{explanation}"))
    return frozenset(text.strip() or text for text in found)


def claim_holds(claims: frozenset[str], example: Example) -> bool:
    """Does the example's own token satisfy the claim?"""
    return term_of(example.tokens[example.position]) in claims
