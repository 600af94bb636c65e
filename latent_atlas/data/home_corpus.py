"""One corpus per ATLAS_HOME. The global fits (whitening, centroids) read every chunk partition of the
home, so the chunks of a second corpus (another folder, another model's tokens, NPZ beside text) would
be whitened and clustered with the first as if they were one. The home's corpus is read off its chunk
manifests (each names its corpus, kind and, for text, model): no second record to fall out of step."""

from __future__ import annotations

from dataclasses import dataclass

from latent_atlas.data.corpus import NpzPlan
from latent_atlas.data.errors import CorpusMismatchError
from latent_atlas.data.manifests import all_manifests


@dataclass(frozen=True)
class CorpusIdentity:
    """What makes two sources one corpus: its name (the key prefix), its kind, and for text the model
    whose tokenizer planned its chunks (another model's activations are another space)."""

    name: str
    kind: str  # 'npz' or 'text'
    model: str = ""  # text only

    def describe(self) -> str:
        what = "NPZ chunks" if self.kind == "npz" else f"text, model {self.model or '?'}"
        return f"{self.name!r} ({what})"

    def same_as(self, other: "CorpusIdentity") -> bool:
        # a manifest written before manifests named their model says nothing against any model
        models_agree = not self.model or not other.model or self.model == other.model
        return self.name == other.name and self.kind == other.kind and models_agree


def home_corpora() -> list[CorpusIdentity]:
    """The corpora whose chunks this ATLAS_HOME holds (one, or none before the first registration;
    more only in a home mixed before homes were checked)."""
    found = set()
    for key, plan in all_manifests().items():
        name = plan.corpus or key.rsplit("-", 1)[0]  # manifests before `corpus` was recorded
        npz = isinstance(plan, NpzPlan)
        found.add(CorpusIdentity(name, "npz" if npz else "text", "" if npz else plan.model))
    return sorted(found, key=lambda c: (c.name, c.kind, c.model))


def check_home_corpus(wanted: CorpusIdentity) -> None:
    """CorpusMismatchError naming the home's corpus and `wanted` when the home holds another corpus."""
    held = home_corpora()
    if not held or any(wanted.same_as(c) for c in held):
        return
    raise CorpusMismatchError(
        f"this ATLAS_HOME holds corpus {', '.join(c.describe() for c in held)}; corpus {wanted.describe()} is "
        f"refused and nothing of it registered: one corpus per home, as the global fits read every chunk "
        f"(use another --home, or the home's corpus name and model)")
