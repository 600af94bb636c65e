"""Corpus reading, document-aware windows and chunk planning, with a real tokenizer."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from latent_atlas.data.corpus import SequenceLayout, plan_chunks, tokenize_documents
from latent_atlas.data.documents import bbc_documents, file_documents, file_rows, read_text
from latent_atlas.data.errors import ChunkError


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from latent_atlas.data.models import MINILM, model_directory

    return AutoTokenizer.from_pretrained(model_directory(MINILM, cache_dir=None))


def test_bbc_has_five_categories_of_articles():
    docs = bbc_documents()
    assert len(docs) == 2225
    assert sorted({d.category for d in docs}) == ["business", "entertainment", "politics", "sports", "tech"]
    assert len(bbc_documents(per_category=3)) == 15
    assert "" != read_text(docs[0]).strip()


def test_windows_never_cross_documents_and_keep_metadata(tokenizer, tmp_path):
    (tmp_path / "a.txt").write_text("alpha " * 50)
    (tmp_path / "b.txt").write_text("beta " * 5)
    docs = file_documents(tmp_path)
    tokens = tokenize_documents(docs, tokenizer, sequence_length=16)
    layout = SequenceLayout.of(tokenizer)
    assert tokens.doc_ids == ["a"] * 4 + ["b"]  # 50 tokens / 14 per window = 4 windows
    assert tokens.windows == [0, 1, 2, 3, 0]
    alpha, beta = tokenizer.convert_tokens_to_ids(["alpha", "beta"])
    assert set(tokens.token_ids[:4][tokens.analysis_mask[:4]]) == {alpha}
    assert set(tokens.token_ids[4][tokens.analysis_mask[4]]) == {beta}
    # special tokens and padding are in the model mask but never in the analysis mask
    assert tokens.token_ids[0, 0] == layout.prefix[0] and not tokens.analysis_mask[0, 0] and tokens.model_mask[0, 0]
    assert tokens.model_mask[4].sum() == 5 + 2 and not tokens.model_mask[4, 7:].any()


def test_token_chunk_table_round_trip(tokenizer):
    tokens = tokenize_documents(bbc_documents(per_category=1)[:2], tokenizer, 32)
    from latent_atlas.data.corpus import TokenChunk

    back = TokenChunk.from_table(tokens.to_table())
    np.testing.assert_array_equal(back.token_ids, tokens.token_ids)
    np.testing.assert_array_equal(back.model_mask, tokens.model_mask)
    np.testing.assert_array_equal(back.analysis_mask, tokens.analysis_mask)
    assert back.categories == tokens.categories


def test_plan_is_deterministic_and_covers_every_document(tokenizer):
    docs = bbc_documents(per_category=4)
    plans = plan_chunks(docs, tokenizer, "bbc", 128, sequences_per_chunk=20)
    again = plan_chunks(docs, tokenizer, "bbc", 128, sequences_per_chunk=20)
    assert [p.key for p in plans] == [p.key for p in again] == [f"bbc-{i:05d}" for i in range(len(plans))]
    assert sorted(d.doc_id for p in plans for d in p.documents) == sorted(d.doc_id for d in docs)
    assert all(p.n_sequences >= 20 for p in plans[:-1])
    total = sum(len(tokenize_documents(p.documents, tokenizer, 128).doc_ids) for p in plans)
    assert total == sum(p.n_sequences for p in plans)


def test_first_positions_of_every_window_can_be_left_out(tokenizer):
    docs = bbc_documents(per_category=1)[:2]
    full = tokenize_documents(docs, tokenizer, 32)
    skipped = tokenize_documents(docs, tokenizer, 32, skip_first=4)
    assert not skipped.analysis_mask[:, :4].any()
    np.testing.assert_array_equal(skipped.analysis_mask[:, 4:], full.analysis_mask[:, 4:])
    np.testing.assert_array_equal(skipped.model_mask, full.model_mask)  # the model still reads them
    with pytest.raises(ValueError, match="skip_first"):
        tokenize_documents(docs, tokenizer, 32, skip_first=32)


def test_documents_are_shuffled_into_chunks(tokenizer):
    """BBC is stored by category: kept in order, each chunk would be one topic (a sorted stream)."""
    docs = bbc_documents(per_category=8)

    def categories_per_chunk(seed):
        plans = plan_chunks(docs, tokenizer, "bbc", 128, sequences_per_chunk=10, shuffle_seed=seed)
        return [len({d.category for d in p.documents}) for p in plans]

    assert np.mean(categories_per_chunk(None)) < 1.5  # in order: mostly one category per chunk
    assert np.mean(categories_per_chunk(0)) > 2.0  # shuffled: chunks mix topics
    assert categories_per_chunk(0) == categories_per_chunk(0)


def test_jsonl_and_parquet_sources(tmp_path, tokenizer):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps({"text": f"doc {i}", "category": "x"}) for i in range(3)))
    pq.write_table(pa.table({"text": ["one", "two"], "id": ["p1", "p2"]}), tmp_path / "d.parquet")
    docs = file_documents(tmp_path)
    assert [d.doc_id for d in docs] == ["d:0", "d:1", "d:2", "p1", "p2"]
    assert read_text(docs[1]) == "doc 1" and read_text(docs[4]) == "two" and docs[0].category == "x"


def test_non_utf8_text_names_the_file(tmp_path):
    (tmp_path / "bad.txt").write_bytes(b"caf\xe9 au lait")
    with pytest.raises(ChunkError, match=r"bad.txt: not UTF-8 text: invalid byte at offset 3"):
        read_text(file_documents(tmp_path / "bad.txt")[0])


def test_bad_jsonl_names_file_and_line(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"title": "no text"}\n')
    with pytest.raises(ChunkError, match=r"bad.jsonl: line 2 has no string field 'text'"):
        file_documents(tmp_path / "bad.jsonl")


@pytest.fixture()
def counting_tokenizer():
    """The real MiniLM tokenizer, counting every text it is asked to tokenize."""
    from collections import Counter

    from transformers import AutoTokenizer

    from latent_atlas.data.models import MINILM, model_directory

    directory = model_directory(MINILM, cache_dir=None)
    base = type(AutoTokenizer.from_pretrained(directory))

    class Counting(base):
        def __call__(self, text, *args, **kwargs):
            self.texts.update([text] if isinstance(text, str) else text)
            return super().__call__(text, *args, **kwargs)

    tokenizer = Counting.from_pretrained(directory)
    tokenizer.texts = Counter()
    return tokenizer


@pytest.fixture()
def opens(monkeypatch):
    """How many times each file is opened, by Python's open or by pyarrow given a path."""
    import builtins
    import io
    from collections import Counter

    import pyarrow.parquet as pq

    counts = Counter()

    def counted(real):
        def wrapper(*args, **kwargs):
            target = args[0] if args else kwargs.get("file", kwargs.get("source"))
            if isinstance(target, (str, os.PathLike)):
                counts[str(Path(target).resolve())] += 1
            return real(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(builtins, "open", counted(builtins.open))
    monkeypatch.setattr(io, "open", counted(io.open))
    monkeypatch.setattr(pq, "read_table", counted(pq.read_table))
    monkeypatch.setattr(pq, "ParquetFile", counted(pq.ParquetFile))
    return counts


def _write_counted_corpus(folder):
    """A JSONL file of 200 documents, five more JSONL files (more than a 4-file cache holds) and a Parquet file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir()
    texts = {}
    (folder / "big.jsonl").write_text("\n".join(
        json.dumps({"id": f"big{i}", "text": f"Document {i} of the big file: " + "markets rose today. " * (i % 9 + 1)})
        for i in range(200)))
    for f in range(5):
        (folder / f"small{f}.jsonl").write_text("\n".join(
            json.dumps({"text": f"Small file {f}, note {i}, on the weather and the harvest."}) for i in range(12)))
    pq.write_table(pa.table({"text": [f"Row {i} of the table about football." for i in range(30)]}),
                   folder / "table.parquet")
    for path in sorted(folder.iterdir()):
        texts[str(path.resolve())] = [text for _, text in file_rows(path)]
    return texts


def test_registration_reads_each_file_once_and_tokenizes_each_document_once(atlas_home, tmp_path, counting_tokenizer,
                                                                             opens, tokenizer):
    from latent_atlas.data.documents import TextSource, text_files
    from latent_atlas.data.manifests import all_manifests, register_text, stored_token_ids

    texts = _write_counted_corpus(tmp_path / "notes")
    assert len(texts[str((tmp_path / "notes" / "big.jsonl").resolve())]) == 200
    every_text = [t for file_texts in texts.values() for t in file_texts]
    assert len(set(every_text)) == len(every_text) == 200 + 5 * 12 + 30

    def corpus_opens():  # of the corpus's files (manifests and the tokenizer's files are opened too)
        return {path: n for path, n in opens.items() if path in texts}

    opens.clear()
    keys = register_text(TextSource(files=text_files(tmp_path / "notes")), counting_tokenizer, "notes", 32, 40,
                         "minilm-l6")  # as the sensor registers a file: no duplicate check
    assert corpus_opens() == {path: 1 for path in texts}  # each file parsed once, not once per document
    assert all(counting_tokenizer.texts[t] == 1 for t in every_text)  # each document tokenized once
    assert len(keys) > 5

    # with the duplicate check (a user folder): one more read of each file, for its content fingerprint
    opens.clear()
    counting_tokenizer.texts.clear()
    register_text(TextSource(files=text_files(tmp_path / "notes")), counting_tokenizer, "again", 32, 40, "minilm-l6",
                  deduplicate=True)
    assert corpus_opens() == {path: 2 for path in texts}
    assert all(counting_tokenizer.texts[t] == 1 for t in every_text)

    # a chunk is made from the stored ids: no file opened, nothing tokenized, the same chunk as from the text
    for key, plan in all_manifests().items():
        opens.clear()
        counting_tokenizer.texts.clear()
        stored = stored_token_ids(plan, "minilm-l6", counting_tokenizer)
        assert stored is not None and all(ids is not None for ids in stored)
        chunk = tokenize_documents(plan.documents, counting_tokenizer, 32, 4, stored)
        assert not corpus_opens() and not (set(counting_tokenizer.texts) & set(every_text))
        from_text = tokenize_documents(plan.documents, tokenizer, 32, 4)
        for field in ("token_ids", "model_mask", "analysis_mask"):
            np.testing.assert_array_equal(getattr(chunk, field), getattr(from_text, field))
        assert (chunk.doc_ids, chunk.windows) == (from_text.doc_ids, from_text.windows)
        # without stored ids (another model's chunk), each file is parsed at most once per chunk (a few stay cached)
        opens.clear()
        tokenize_documents(plan.documents, counting_tokenizer, 32, 4)
        assert max(corpus_opens().values(), default=1) == 1
        assert stored_token_ids(plan, "another-model", counting_tokenizer) is None


def test_stored_ids_are_not_used_for_a_changed_file_or_a_piece(atlas_home, tmp_path, tokenizer):
    from latent_atlas.data.documents import TextSource, text_files
    from latent_atlas.data.manifests import read_manifest, register_text, remove_chunk, stored_token_ids

    folder = tmp_path / "speeches"
    folder.mkdir()
    (folder / "long.txt").write_text("The minister spoke about the budget and the schools. " * 400)
    (folder / "short.txt").write_text("A short note on the weather.")
    keys = register_text(TextSource(files=text_files(folder)), tokenizer, "speeches", 32, 50, "minilm-l6",
                         shuffle_seed=None)
    plans = [read_manifest(k) for k in keys]
    pieces = [d for p in plans for d in p.documents if d.doc_id == "long"]
    assert len(pieces) == 3 and [d.char_end is None for d in pieces] == [False, False, True]
    for plan in plans:  # a piece is tokenized from its own text, as it always was: a cut may fall inside a word
        stored = stored_token_ids(plan, "minilm-l6", tokenizer)
        assert [ids is None for ids in stored] == [d.doc_id == "long" for d in plan.documents]
    last = plans[-1]
    assert last.documents[-1].doc_id == "short"
    (folder / "short.txt").write_text("Another note, on the harvest and the rain this week.")
    assert stored_token_ids(last, "minilm-l6", tokenizer)[-1] is None  # the file changed: read again
    chunk = tokenize_documents(last.documents, tokenizer, 32, 0, stored_token_ids(last, "minilm-l6", tokenizer))
    np.testing.assert_array_equal(chunk.token_ids, tokenize_documents(last.documents, tokenizer, 32).token_ids)
    assert any(p.name == f"{last.key}.npz" for p in remove_chunk(last.key))
    assert stored_token_ids(last, "minilm-l6", tokenizer) is None
