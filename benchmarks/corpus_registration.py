"""Registering a text corpus, and tokenizing its chunks, with the corpus code before and after reading
each file once and tokenizing each document once; both in the same process, outputs compared.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/corpus_registration.py [--documents 2000] [--files 1 20]
        [--repeats 3] [--baseline fbf51f5]

Corpus: `--documents` synthetic documents (50 to 400 words drawn, seeded, from BBC News articles;
the first one ~40k tokens, longer than a chunk, so it is split into pieces), written as JSONL and as
Parquet, in one file and in `--files` files. MiniLM-L6's tokenizer, 128-token sequences, 256 per chunk,
registered as CorpusResource(source="files") does (deduplicating files by content).

    old: corpus.py and manifests.py as of `--baseline` (`git show`, loaded as modules; then at the top of
         latent_atlas/, before the library was grouped into packages):
         the files are parsed to list the documents, the planner reads each document's text again
         (a 4-file cache, so a shuffled corpus of more files parses a file per document), and every
         chunk's documents are tokenized again when it is materialized.
    new: this checkout: one streaming read per file, one tokenization per document (a batch of texts
         per call), ids stored beside the manifest and used by the chunk.

`registration` times register_text into an empty ATLAS_HOME; `chunks` times tokenize_documents for
every chunk as the token_chunks asset calls it (its own process: no parsed file cached). Best of
`--repeats`. Each run checks that both write byte-identical manifests and identical chunks (token
ids, masks, doc ids, windows) and refuse the same files.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from latent_atlas.data import corpus as new_corpus  # noqa: E402
from latent_atlas.data import documents as new_documents  # noqa: E402
from latent_atlas.data import errors, paths  # noqa: E402
from latent_atlas.data import manifests as new_manifests  # noqa: E402

SEQUENCE_LENGTH, SEQUENCES_PER_CHUNK, SKIP_FIRST, MODEL = 128, 256, 4, "minilm-l6"
# The baseline's files (the library was flat then), and this checkout's modules that stand in for the
# unchanged siblings they import.
BASELINE_CORPUS, BASELINE_MANIFESTS = "latent_atlas/corpus.py", "latent_atlas/manifests.py"
BASELINE_SIBLINGS = {"latent_atlas/errors.py": errors, "latent_atlas/paths.py": paths}


def module_name(path: str) -> str:
    """The name a file of the baseline was imported by: its path with dots, without .py."""
    return path.removesuffix(".py").replace("/", ".")


def load_baseline(rev: str) -> tuple[types.ModuleType, types.ModuleType]:
    """corpus.py and manifests.py of `rev` as modules; the old manifests imports the old corpus."""
    def module(name: str, path: str) -> types.ModuleType:
        source = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=REPO, check=True, capture_output=True,
                                text=True).stdout
        mod = types.ModuleType(name)
        mod.__file__ = f"{rev}:{path}"
        sys.modules[name] = mod  # dataclasses look their module up here
        exec(compile(source, mod.__file__, "exec"), mod.__dict__)
        return mod

    # Only while the baseline loads: no module of this checkout has these names.
    names = {module_name(path): sibling for path, sibling in BASELINE_SIBLINGS.items()}
    sys.modules.update(names)
    try:
        old_corpus = module("baseline_corpus", BASELINE_CORPUS)
        names[module_name(BASELINE_CORPUS)] = sys.modules[module_name(BASELINE_CORPUS)] = old_corpus
        old_manifests = module("baseline_manifests", BASELINE_MANIFESTS)
    finally:
        for name in names:
            del sys.modules[name]
    return old_corpus, old_manifests


def synthetic_texts(n: int) -> list[str]:
    words = " ".join(new_documents.read_text(d) for d in new_documents.bbc_documents(per_category=10)).split()
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(words, 24_000))]  # longer than a chunk (256 x 126 tokens)
    texts += [" ".join(rng.choice(words, int(rng.integers(50, 400)))) for _ in range(n - 1)]
    return texts


def write_corpus(folder: Path, texts: list[str], n_files: int, kind: str) -> None:
    folder.mkdir(parents=True)
    categories = ["business", "politics", "tech", "sport"]
    for f, part in enumerate(np.array_split(np.arange(len(texts)), n_files)):
        rows = [{"id": f"doc{i}", "text": texts[i], "category": categories[i % 4]} for i in part]
        if kind == "jsonl":
            (folder / f"part{f:03d}.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
        else:
            pq.write_table(pa.Table.from_pylist(rows), folder / f"part{f:03d}.parquet")


def register(manifests, corpus_module, folder: Path, tokenizer, home: Path):
    os.environ["ATLAS_HOME"] = str(home)
    report = manifests.Registration()
    if hasattr(manifests, "corpus_source"):
        docs = manifests.corpus_source("files", str(folder))
    else:
        docs = manifests.corpus_documents("files", str(folder), None, report.refused)
    manifests.register_text(docs, tokenizer, folder.name, SEQUENCE_LENGTH, SEQUENCES_PER_CHUNK, MODEL, 0, report,
                            deduplicate=True)
    return report


def tokenize_chunks(manifests, corpus_module, tokenizer, home: Path) -> list:
    os.environ["ATLAS_HOME"] = str(home)
    out = []
    for plan in manifests.all_manifests().values():
        stored = manifests.stored_token_ids(plan, MODEL, tokenizer) if hasattr(manifests, "stored_token_ids") else None
        args = (plan.documents, tokenizer, plan.sequence_length, SKIP_FIRST)
        out.append(corpus_module.tokenize_documents(*args, stored) if stored is not None
                   else corpus_module.tokenize_documents(*args))
    return out


def timed(fn, repeats: int, clear) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        clear()
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def run_case(root: Path, label: str, texts, n_files: int, kind: str, tokenizer, baseline, repeats: int) -> dict:
    old_corpus, old_manifests = baseline
    folder = root / label
    write_corpus(folder, texts, n_files, kind)
    clear = lambda: (old_corpus._row_texts.cache_clear(), new_documents._row_texts.cache_clear())  # noqa: E731
    homes = {"old": root / f"{label}-home-old", "new": root / f"{label}-home-new"}
    counter = iter(range(10**6))

    def fresh_home(side: str) -> Path:
        return homes[side].with_name(f"{homes[side].name}-{next(counter)}")

    times, results = {}, {}
    for side, manifests, corpus_module in (("old", old_manifests, old_corpus), ("new", new_manifests, new_corpus)):
        homes_used = []

        def registration():
            homes_used.append(fresh_home(side))
            return register(manifests, corpus_module, folder, tokenizer, homes_used[-1])

        times[f"{side} registration"], report = timed(registration, repeats, clear)
        home = homes_used[-1]
        times[f"{side} chunks"], chunks = timed(lambda: tokenize_chunks(manifests, corpus_module, tokenizer, home),
                                                repeats, clear)
        manifest_texts = {p.name: p.read_text() for p in sorted((home / "manifests").glob("*.json"))}
        results[side] = (report.keys, report.refused, report.duplicates, manifest_texts, chunks)
    check_identical(label, results["old"], results["new"])
    return times | {"chunks count": len(results["new"][0])}


def check_identical(label: str, old, new) -> None:
    assert old[:4] == new[:4], f"{label}: keys, refusals or manifests differ"
    for a, b in zip(old[4], new[4], strict=True):
        for field in ("token_ids", "model_mask", "analysis_mask"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=f"{label}: {field}")
        assert (a.doc_ids, a.categories, a.windows) == (b.doc_ids, b.categories, b.windows), label


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--documents", type=int, default=2000)
    parser.add_argument("--files", type=int, nargs="+", default=[1, 20])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline", default="fbf51f5", help="commit whose corpus.py/manifests.py are the old path")
    args = parser.parse_args()

    from resources import ModelResource

    tokenizer = ModelResource(name=MODEL).tokenizer()
    baseline = load_baseline(args.baseline)
    texts = synthetic_texts(args.documents)
    print(f"{args.documents} documents, {sum(len(t) for t in texts) / 1e6:.1f} MB of text; baseline {args.baseline}; "
          f"best of {args.repeats}; outputs identical in every case")
    print(f"{'corpus':<22}{'chunks':>7}  {'registration old/new (s)':>26}  {'ratio':>6}  "
          f"{'chunks old/new (s)':>20}  {'ratio':>6}  {'total ratio':>11}")
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("jsonl", "parquet"):
            for n_files in args.files:
                label = f"{kind}-{n_files}file{'s' if n_files > 1 else ''}"
                t = run_case(Path(tmp), label, texts, n_files, kind, tokenizer, baseline, args.repeats)
                old_total, new_total = t["old registration"] + t["old chunks"], t["new registration"] + t["new chunks"]
                print(f"{label:<22}{t['chunks count']:>7}  "
                      f"{t['old registration']:>12.3f} / {t['new registration']:<11.3f}  "
                      f"{t['old registration'] / t['new registration']:>5.1f}x  "
                      f"{t['old chunks']:>9.3f} / {t['new chunks']:<8.3f}  {t['old chunks'] / t['new chunks']:>5.1f}x  "
                      f"{old_total / new_total:>10.1f}x", flush=True)


if __name__ == "__main__":
    main()
