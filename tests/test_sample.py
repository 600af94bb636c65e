"""The hierarchy sample: a seeded, bounded, uniform token reservoir and exact per-document sums."""

import numpy as np
import pytest

from latent_atlas.clustering.model import SequentialSoftClustering
from latent_atlas.data.chunks import DenseChunk
from latent_atlas.hierarchy.sample import HierarchySample, dense_memberships, draw_sample, memberships_for_centers

DIM = 8


def make_chunks(seed=0, sizes=(5, 7, 3), length=6):
    """Chunks with ragged masks; documents span sequences and cross chunk boundaries."""
    rng = np.random.default_rng(seed)
    chunks, doc = [], 0
    for c, n_seq in enumerate(sizes):
        mask = np.arange(length)[None, :] < rng.integers(1, length + 1, n_seq)[:, None]
        x = rng.standard_normal((n_seq, length, DIM)).astype(np.float16)
        docs, cats = [], []
        for _ in range(n_seq):
            doc += int(rng.random() < 0.5)  # about two sequences per document
            docs.append(f"d{doc}")
            cats.append(f"cat{doc % 3}")
        chunks.append((f"chunk-{c}", DenseChunk(x, mask, rng.integers(0, 99, (n_seq, length)).astype(np.int32)),
                       docs, cats))
    return chunks


@pytest.fixture(scope="module")
def model():
    x = np.random.default_rng(1).standard_normal((200, DIM)).astype(np.float32)
    return SequentialSoftClustering(4, n_epochs=1, max_points=200, seed=0).fit(x)


def test_deterministic_and_bounded(model):
    chunks = make_chunks()
    total = sum(c.n_tokens for _, c, _, _ in chunks)
    a = draw_sample(chunks, 20, seed=3, model=model)
    b = draw_sample(chunks, 20, seed=3, model=model)
    assert len(a.vectors) == 20 and a.tokens_seen == total and a.version == b.version
    np.testing.assert_array_equal(a.vectors, b.vectors)
    assert draw_sample(chunks, 20, seed=4, model=model).version != a.version
    everything = draw_sample(chunks, 10 * total, seed=3, model=model)  # larger than the corpus: every token once
    assert len(everything.vectors) == total
    assert len({(k, s, p) for k, s, p in zip(everything.chunk, everything.sequence, everything.position)}) == total


def test_rows_are_what_they_say(model):
    chunks = make_chunks()
    by_key = {k: (c, np.asarray(d)) for k, c, d, _ in chunks}
    s = draw_sample(chunks, 25, seed=0, model=model)
    for i in range(len(s.vectors)):
        chunk, docs = by_key[s.chunk[i]]
        assert chunk.attention_mask[s.sequence[i], s.position[i]]
        np.testing.assert_array_equal(s.vectors[i], chunk.activations[s.sequence[i], s.position[i]].astype(np.float32))
        assert s.token_id[i] == chunk.token_ids[s.sequence[i], s.position[i]] and s.doc_id[i] == docs[s.sequence[i]]
    np.testing.assert_allclose(s.memberships(), dense_memberships(*model.soft_memberships(s.vectors), 4))


def test_same_sample_whatever_the_chunk_order(model):
    chunks = make_chunks()
    a = draw_sample(chunks, 15, seed=0, model=model)
    b = draw_sample(chunks[::-1], 15, seed=0, model=model)
    for name in ("vectors", "chunk", "sequence", "position"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    order = np.argsort(b.doc_ids)
    np.testing.assert_array_equal(np.sort(a.doc_ids), b.doc_ids[order])
    np.testing.assert_allclose(a.doc_vectors[np.argsort(a.doc_ids)], b.doc_vectors[order], atol=1e-5)


def test_every_token_equally_likely(model):
    chunks = make_chunks(sizes=(2, 6, 1))
    total = sum(c.n_tokens for _, c, _, _ in chunks)
    counts = {}
    for seed in range(300):
        s = draw_sample(chunks, 6, seed=seed, model=model, document_vectors=False)
        for key in zip(s.chunk, s.sequence, s.position):
            counts[key] = counts.get(key, 0) + 1
    frequency = np.array(list(counts.values())) / 300
    assert len(counts) == total
    # expected 6 / total per token; 300 draws give a binomial standard error of ~0.025 here
    assert np.all(np.abs(frequency - 6 / total) < 0.12), (6 / total, frequency.min(), frequency.max())
    per_chunk = {k: sum(v for (c, _, _), v in counts.items() if c == k) / 300 for k, _, _, _ in chunks}
    for key, chunk, _, _ in chunks:  # chunks get their share of the sample by token count, not one each
        assert abs(per_chunk[key] - 6 * chunk.n_tokens / total) < 0.4


def test_document_sums_match_a_direct_computation(model):
    chunks = make_chunks()
    s = draw_sample(chunks, 10, seed=0, model=model, block_sequences=2)  # documents split across blocks
    expected, tokens, category = {}, {}, {}
    for _, chunk, docs, cats in chunks:
        for i, doc in enumerate(docs):
            x = chunk.activations[i][chunk.attention_mask[i]].astype(np.float64)
            expected[doc] = expected.get(doc, 0) + (x / np.linalg.norm(x, axis=1, keepdims=True)).sum(0)
            tokens[doc] = tokens.get(doc, 0) + int(chunk.attention_mask[i].sum())
            category[doc] = cats[i]
    assert s.doc_ids.tolist() == list(expected)  # order of first appearance
    np.testing.assert_allclose(s.doc_vectors, np.stack(list(expected.values())), rtol=1e-4, atol=1e-4)
    assert s.doc_tokens.tolist() == list(tokens.values()) and s.doc_categories.tolist() == list(category.values())
    np.testing.assert_allclose(s.doc_memberships(), dense_memberships(*model.soft_memberships(s.doc_vectors), 4))
    assert len(draw_sample(chunks, 10, seed=0, model=model, document_vectors=False).doc_ids) == 0


def test_save_load_round_trip(model, tmp_path):
    s = draw_sample(make_chunks(), 12, seed=0, model=model)
    assert s.save(tmp_path / "sample.npz") == tmp_path / "sample.npz"
    assert [p.name for p in tmp_path.iterdir()] == ["sample.npz"]  # written atomically: no temp file left
    t = HierarchySample.load(tmp_path / "sample.npz")
    assert t.version == s.version and t.n_clusters == 4 and t.tokens_seen == s.tokens_seen
    np.testing.assert_array_equal(t.doc_vectors, s.doc_vectors)
    np.testing.assert_array_equal(t.ensemble_vectors, s.ensemble_vectors)
    assert t.chunk.tolist() == s.chunk.tolist()


def test_memberships_for_other_centers_leave_the_model_alone(model):
    x = np.random.default_rng(5).standard_normal((30, DIM)).astype(np.float32)
    before = model.cluster_centers_.copy()
    same = memberships_for_centers(x, model.cluster_centers_, model)
    np.testing.assert_allclose(same, dense_memberships(*model.soft_memberships(x), 4))
    swapped = memberships_for_centers(x, model.cluster_centers_[::-1], model)
    np.testing.assert_allclose(swapped, same[:, ::-1], atol=1e-6)
    np.testing.assert_array_equal(model.cluster_centers_, before)


def test_ensemble_sample_is_a_larger_uniform_sample_holding_the_trees_sample(model):
    chunks = make_chunks()
    total = sum(c.n_tokens for _, c, _, _ in chunks)
    trees_only = draw_sample(chunks, 10, seed=2, model=model)
    s = draw_sample(chunks, 10, seed=2, model=model, ensemble_size=30)
    assert len(s.vectors) == 10 and len(s.ensemble_vectors) == 30 and len(s.member_clusters) == 10
    np.testing.assert_array_equal(s.vectors, trees_only.vectors)  # the trees see the same tokens as before
    np.testing.assert_array_equal(s.ensemble_vectors[:10].astype(np.float32), s.vectors)
    every_token = np.concatenate([c.activations[c.attention_mask] for _, c, _, _ in chunks])
    rows = {r.tobytes() for r in every_token}
    assert all(r.tobytes() in rows for r in s.ensemble_vectors)  # real tokens, each drawn once
    assert len({r.tobytes() for r in s.ensemble_vectors}) == 30
    reversed_order = draw_sample(chunks[::-1], 10, seed=2, model=model, ensemble_size=30)
    np.testing.assert_array_equal(reversed_order.ensemble_vectors, s.ensemble_vectors)
    assert s.version != trees_only.version
    assert len(draw_sample(chunks, 10, seed=2, model=model, ensemble_size=10 * total).ensemble_vectors) == total
    assert len(draw_sample(chunks, 10, seed=2, model=model, ensemble_size=4).ensemble_vectors) == 10


def test_every_token_equally_likely_in_the_ensemble_sample(model):
    chunks = make_chunks(sizes=(2, 6, 1))
    total = sum(c.n_tokens for _, c, _, _ in chunks)
    counts = {}
    for seed in range(300):
        s = draw_sample(chunks, 2, seed=seed, model=model, document_vectors=False, ensemble_size=6)
        for row in s.ensemble_vectors:
            counts[row.tobytes()] = counts.get(row.tobytes(), 0) + 1
    frequency = np.array(list(counts.values())) / 300
    assert len(counts) == total  # random fp16 rows: distinct tokens, distinct bytes
    assert np.all(np.abs(frequency - 6 / total) < 0.12), (6 / total, frequency.min(), frequency.max())


def test_bad_input_is_named(model):
    key, chunk, docs, cats = make_chunks()[0]
    with pytest.raises(ValueError, match="chunk-0"):
        draw_sample([(key, chunk, docs[:-1], cats)], 5, 0, model)
    with pytest.raises(ValueError, match="no chunks"):
        draw_sample([], 5, 0, model)
    with pytest.raises(ValueError, match="ensemble_size"):
        draw_sample([(key, chunk, docs, cats)], 5, 0, model, ensemble_size=-1)
