"""Label scores on planted truth (issue 27, item 2b): a corpus whose clusters are known -- a
single-token detector ('in'), a full stop after numbers and one after names (the same token in two
contexts), a context cluster of sport words, a comma -- scored with right, wrong and neighbouring
labels over several seeds, and the permutation null of keyword labels against shifted ones.

    python benchmarks/label_truth.py [--seeds 8]

The corpus is tests/test_label_scores.py's `planted` (held-out windows from 24 documents, random
negatives mostly tokens of no cluster); prints per label the median over seeds of confidence and
specificity with the median interval, and the null summary.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from latent_atlas.labels.cache import LabelCache  # noqa: E402
from latent_atlas.labels.keywords import KeywordLabeler  # noqa: E402
from latent_atlas.labels.pipeline import label_clusters  # noqa: E402
from latent_atlas.labels.records import Draft, LabelRequest  # noqa: E402
from latent_atlas.labels.scorers import ScorerConfig, headline, score_label  # noqa: E402
from tests.test_label_scores import PLANTED, planted  # noqa: E402

CASES = [  # (what, cluster, label, explanation)
    ("right: single-token detector", 0, "in", "Fires on 'in'."),
    ("wrong: another token", 0, "','", "Fires on ','."),
    ("neighbour's: '.' on the '.'-after-numbers cluster", 1, "'.'", "Fires on '.'."),
    ("right, partial: 3 of 4 sport words", 3, "goal / match / team", "Fires on 'goal', 'match', 'team'."),
    ("wrong: sport words on the comma cluster", 4, "goal / match", "Fires on 'goal', 'match'."),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=8)
    args = parser.parse_args()
    config = ScorerConfig(embedding=False, n_bootstrap=400)
    rows = {what: [] for what, *_ in CASES}
    nulls = {"right": [], "shifted": []}
    for seed in range(args.seeds):
        shown, heldout = planted(seed)
        for what, cluster, label, explanation in CASES:
            rows[what].append(headline(score_label(Draft(label, explanation), heldout[cluster], config)[0]))
        requests = [LabelRequest(c, shown[c]) for c in PLANTED]
        with tempfile.TemporaryDirectory() as tmp:
            right, _ = label_clusters(requests, heldout, KeywordLabeler(), LabelCache(Path(tmp) / "r"), config)
            drafts = [Draft(right[(i + 1) % len(right)].label, right[(i + 1) % len(right)].explanation)
                      for i in range(len(right))]

            class Shifted:
                name, model, prompt_version = "shifted", "", "1"

                def label(self, reqs):
                    return [drafts[r.centroid_id] for r in reqs]

            shifted, _ = label_clusters(requests, heldout, Shifted(), LabelCache(Path(tmp) / "s"), config)
        nulls["right"] += [r.scores["null"] for r in right]
        nulls["shifted"] += [r.scores["null"] for r in shifted]
    print(f"planted truth over {args.seeds} seeds (median; intervals: median bounds, resampling documents)")
    print("| label | confidence [95%] | specificity [95%] |\n|---|---|---|")
    for what, results in rows.items():
        med = lambda key: float(np.median([r[key] for r in results]))  # noqa: E731
        lo = lambda key, i: float(np.median([r[f"{key}_interval"][i] for r in results]))  # noqa: E731
        print(f"| {what} | {med('confidence'):.2f} [{lo('confidence', 0):.2f}, {lo('confidence', 1):.2f}] | "
              f"{med('specificity'):.2f} [{lo('specificity', 0):.2f}, {lo('specificity', 1):.2f}] |")
    for name, values in nulls.items():
        flagged = np.mean([v["indistinguishable_from_null"] for v in values])
        print(f"keyword labels {name}: {len(values)} labels, median null p {np.median([v['p'] for v in values]):.2f}, "
              f"share indistinguishable from the null {flagged:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
