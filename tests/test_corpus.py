"""Corpus reading, document-aware windows and chunk planning, with a real tokenizer."""

import json

import numpy as np
import pytest

from latent_atlas.corpus import (
    SequenceLayout, bbc_documents, file_documents, plan_chunks, read_text, tokenize_documents,
)
from latent_atlas.errors import ChunkError


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from latent_atlas.models import MINILM, model_directory

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
    from latent_atlas.corpus import TokenChunk

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
