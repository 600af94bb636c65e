"""TopKCollector against brute force: values, contexts, statistics, save/load, merge, report."""

import runpy
from pathlib import Path

import numpy as np
import pytest
import torch

from latent_atlas.analysis.topk import TopKCollector

F, K, W = 6, 4, 2


def batches(seed, n_batches=3, b=5, s=9):
    rng = np.random.default_rng(seed)
    for i in range(n_batches):
        acts = np.maximum(rng.standard_normal((b, s, F)).astype(np.float32), 0)  # ReLU-like, many zeros
        yield acts, rng.integers(0, 50, (b, s)).astype(np.int32)


def brute_force(data, threshold):
    """Every (value, context) above threshold per feature, by a full sort."""
    out = {f: [] for f in range(F)}
    for n, (acts, tokens) in enumerate(data):
        padded = np.pad(tokens, ((0, 0), (W, W)), constant_values=-1)
        for (i, p, f), v in np.ndenumerate(acts):
            if v > threshold:
                out[f].append((float(v), padded[i, p: p + 2 * W + 1].tolist()))
    return {f: sorted(rows, key=lambda r: -r[0]) for f, rows in out.items()}


def test_top_k_values_contexts_and_statistics():
    data = list(batches(0))
    collector = TopKCollector(F, k=K, threshold=0.3, context=W)
    for acts, tokens in data:
        collector.add(acts, tokens)
    expected = brute_force(data, 0.3)
    everything = np.concatenate([a.reshape(-1, F) for a, _ in data])
    for f in range(F):
        got = collector.top(f)
        assert [g["activation"] for g in got] == pytest.approx([r[0] for r in expected[f][:K]])
        assert [g["context_token_ids"] for g in got] == [r[1] for r in expected[f][:K]]
        above = everything[:, f][everything[:, f] > 0.3]
        st = collector.feature_stats(f)
        assert st["count"] == above.size
        assert st["mean"] == pytest.approx(above.mean()) and st["std"] == pytest.approx(above.std(), rel=1e-5)
        assert st["max"] == pytest.approx(above.max())
        assert st["density"] == pytest.approx(above.size / everything.shape[0])


def test_threshold_keeps_fewer_than_k_and_mask_drops_padding():
    acts = np.zeros((2, 4, F), np.float32)
    acts[0, 1, 0], acts[1, 3, 0] = 0.9, 5.0  # the 5.0 sits on padding
    mask = np.ones((2, 4), bool)
    mask[1, 3] = False
    collector = TopKCollector(F, k=K, threshold=0.5, context=1).add(acts, np.arange(8).reshape(2, 4), attention_mask=mask)
    assert [t["activation"] for t in collector.top(0)] == [pytest.approx(0.9)]
    assert collector.top(0)[0]["context_token_ids"] == [0, 1, 2]
    assert collector.top(1) == [] and collector.n_tokens_ == 7


def test_flat_input_and_torch_tensors():
    rng = np.random.default_rng(1)
    acts = rng.random((30, F)).astype(np.float32)
    tokens = np.arange(30)
    collector = TopKCollector(F, k=3, context=2).add(torch.from_numpy(acts), torch.from_numpy(tokens))
    for f in range(F):
        best = np.argsort(-acts[:, f])[:3]
        assert [t["token_id"] for t in collector.top(f)] == best.tolist()
        assert collector.top(f)[0]["context_token_ids"] == [-1, -1, int(best[0]), -1, -1]


def test_merge_save_load_and_report(tmp_path):
    data = list(batches(2, n_batches=4))
    whole = TopKCollector(F, k=K, threshold=0.1, context=W)
    left, right = TopKCollector(F, k=K, threshold=0.1, context=W), TopKCollector(F, k=K, threshold=0.1, context=W)
    for i, (acts, tokens) in enumerate(data):
        whole.add(acts, tokens, sequence_ids=np.arange(5) + 5 * i)
        (left if i % 2 else right).add(acts, tokens, sequence_ids=np.arange(5) + 5 * i)
    left.merge(right)
    loaded = TopKCollector.load(left.save(tmp_path / "topk.npz"))
    for f in range(F):
        assert loaded.top(f) == whole.top(f)
        assert loaded.feature_stats(f) == pytest.approx(whole.feature_stats(f))
    report = loaded.report(decode=lambda ids: [f" w{i}" for i in ids], n_examples=2)
    best = whole.top(0)[0]
    assert "## Feature 0" in report and f" **w{best['token_id']}**" in report
    assert "| feature | count |" in report


def test_example_script_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(Path(__file__).parents[1] / "examples" / "topk_collector.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "## Feature" in out and (tmp_path / "topk_collector.npz").exists()
