"""Per-chunk inputs: token sequences and the model's activations (or validated NPZ contents)."""

import dataclasses
from pathlib import Path

import dagster as dg
import numpy as np

from assets.metadata import attended_norms, markdown_table, token_norms_table
from assets.partitions import chunks
from assets.versions import versioned
from latent_atlas.data.chunks import DenseChunk
from latent_atlas.data.content import chunk_version, content_version
from latent_atlas.data.corpus import ChunkPlan, NpzPlan, TokenChunk, tokenize_documents
from latent_atlas.data.dimensions import EXPECTED, corpus_dimension, dimension_problem, npz_array_shape
from latent_atlas.data.errors import ChunkError
from latent_atlas.data.manifests import read_manifest, stored_token_ids
from latent_atlas.data.seed_chunks import load_npz_chunk
from latent_atlas.data.token_activations import sequence_activations
from resources import CorpusResource, ModelResource, TorchDeviceResource

ACTIVATION_CHECKS = [
    dg.AssetCheckSpec("finite_and_shaped", asset="activations", partitions_def=chunks, blocking=True,
                      description="Activations are finite, [n_seq, seq_len, d] with the declared d (blocking: a bad "
                                  "chunk stops its run before whitened_activations)"),
    dg.AssetCheckSpec("mask_token_alignment", asset="activations", partitions_def=chunks,
                      description="Mask and token ids match the activations, and some tokens are attended"),
]


def _npz_chunk(plan: NpzPlan, corpus: CorpusResource) -> tuple[DenseChunk, int]:
    """The validated NPZ file and the corpus's d, which registration decided from all of the corpus's
    files (latent_atlas.data.dimensions); a file of another d is refused by name, before it is read."""
    if not Path(plan.path).exists():
        raise ChunkError(plan.path, f"the file is gone (deleted or moved since chunk {plan.key} was registered), so the "
                                    f"global fits leave the chunk out; put the file back, or drop the chunk with "
                                    f"`latent-atlas remove-chunk {plan.key}`")
    # a chunk the sensor registered has no decision yet: made here, from the same files, whatever runs first
    record = ((corpus.expected_dim, EXPECTED) if corpus.expected_dim
              else corpus_dimension(plan.corpus) or corpus.npz_dimension(plan.corpus))
    shape = npz_array_shape(plan.path, corpus.npz_activations_key)
    problem = dimension_problem(shape[2], record) if record and shape and len(shape) == 3 else None
    if problem:
        raise ChunkError(plan.path, problem)
    chunk = load_npz_chunk(plan.path, corpus.npz_keys(), record[0] if record else None)
    return chunk, record[0] if record else chunk.dim


@dg.asset(partitions_def=chunks, io_manager_key="parquet_io_manager", group_name="inputs",
          kinds={"parquet"})
def token_chunks(context: dg.AssetExecutionContext, corpus: CorpusResource, model: ModelResource):
    """Fixed-length token sequences of one chunk, with doc id, category and window per sequence: the
    unit every per-chunk asset works on, and the doc ids that decide which documents are held out; the
    page counts sequences, documents and tokens per category."""
    plan = read_manifest(context.partition_key)
    if isinstance(plan, ChunkPlan):
        tokenizer = model.tokenizer()  # the ids registration stored, when they are this tokenizer's
        tokens = tokenize_documents(plan.documents, tokenizer, plan.sequence_length, corpus.skip_first_positions,
                                    stored_token_ids(plan, model.name, tokenizer))
        source = f"{len(plan.documents)} documents"
    else:
        npz, _ = _npz_chunk(plan, corpus)
        n_seq = npz.n_sequences
        stem = plan.key
        tokens = TokenChunk(
            np.asarray(npz.token_ids, np.int32), np.asarray(npz.attention_mask, bool),
            np.asarray(npz.attention_mask, bool), [f"{stem}:{i}" for i in range(n_seq)], [""] * n_seq, [0] * n_seq,
        )
        source = plan.path
    version = content_version(tokens.token_ids, tokens.model_mask, tokens.analysis_mask, tokens.doc_ids,
                              tokens.categories, tokens.windows)
    return versioned(tokens, version, {
        "sequences": len(tokens.doc_ids), "tokens": int(tokens.analysis_mask.sum()), "source": source,
        "per_category": markdown_table(
            {"category": c or "(none)", "sequences": sum(1 for x in tokens.categories if x == c),
             "documents": len({d for d, x in zip(tokens.doc_ids, tokens.categories) if x == c}),
             "tokens": int(tokens.analysis_mask[[x == c for x in tokens.categories]].sum())}
            for c in sorted(set(tokens.categories)))})


@dg.asset(partitions_def=chunks, io_manager_key="tensor_io_manager", group_name="inputs",
          check_specs=ACTIVATION_CHECKS, kinds={"torch"})
def activations(
    context: dg.AssetExecutionContext,
    token_chunks,
    corpus: CorpusResource,
    model: ModelResource,
    device: TorchDeviceResource,
):
    """Residual-stream activations (fp16) with token ids and the analysis mask (padding and
    special tokens masked out); for an NPZ chunk, its validated contents. What whitening is fitted on;
    the page shows the attended tokens' norms (a chunk of outliers or zeros shows there first)."""
    plan = read_manifest(context.partition_key)
    if isinstance(plan, ChunkPlan):
        tokens = TokenChunk.from_table(token_chunks)
        loaded = model.load(device.torch_device(), device.torch_dtype())
        layer = model.layer_of(loaded)
        acts = sequence_activations(loaded, tokens, layer, device.memory_budget_mb)
        chunk = DenseChunk(acts, tokens.analysis_mask, tokens.token_ids,
                           meta={"model": loaded.name, "layer": layer, "key": plan.key})
        expected_dim = loaded.hidden_size
    else:
        chunk, expected_dim = _npz_chunk(plan, corpus)
        # keeps the NPZ reference: the partition then stores no second copy of the activations
        chunk = dataclasses.replace(chunk, meta={"source": plan.path, "key": plan.key})
    norms = _norms(chunk, None)
    return versioned(
        chunk, chunk_version(chunk),
        {"shape": str(chunk.activations.shape), "attended_tokens": chunk.n_tokens, **chunk.meta,
         "token_norms": token_norms_table(norms, chunk.dim)},
        check_results=activation_check_results(chunk, expected_dim, norms),
    )


def activation_check_results(chunk: DenseChunk, expected_dim: int, norms: np.ndarray) -> list[dg.AssetCheckResult]:
    return [dg.AssetCheckResult(check_name=name, passed=passed, metadata=metadata)
            for name, (passed, metadata) in (("finite_and_shaped", finite_and_shaped(chunk, expected_dim, norms)),
                                             ("mask_token_alignment", mask_token_alignment(chunk, norms)))]


def _norms(chunk: DenseChunk, norms: np.ndarray | None) -> np.ndarray:
    shaped = chunk.activations.ndim == 3 and chunk.attention_mask.shape == chunk.activations.shape[:2]
    return norms if norms is not None else (attended_norms(chunk.activations, chunk.attention_mask) if shaped
                                            else np.zeros(0, np.float32))


def finite_and_shaped(chunk: DenseChunk, expected_dim: int, norms: np.ndarray | None = None) -> tuple[bool, dict]:
    """Check: every attended activation finite, [n_seq, seq_len, expected_dim]. An NPZ chunk was validated
    on load; a model's fp16 output was not (a residual value past 65504 turns inf in the cast). `norms`:
    the attended tokens' norms (`attended_norms`), non-finite exactly where a vector is."""
    shaped = chunk.activations.ndim == 3 and chunk.dim == expected_dim
    bad = ~np.isfinite(_norms(chunk, norms))
    first = ""
    if bad.any():
        s, p = np.argwhere(chunk.attention_mask)[np.argmax(bad)]
        first = f"sequence {s}, position {p}"
    return not bad.any() and shaped, {"shape": str(chunk.activations.shape), "expected_dim": expected_dim,
                                      "non_finite_tokens": int(bad.sum()), "first_non_finite": first}


def mask_token_alignment(chunk: DenseChunk, norms: np.ndarray | None = None) -> tuple[bool, dict]:
    """Check: mask and token ids are the activations' [n_seq, seq_len], some tokens are attended, and no
    attended token has a negative id or an all-zero vector (what a mask shifted onto zero-filled padding
    attends; a zero vector has no direction to cluster by: a zero norm)."""
    aligned = chunk.attention_mask.shape == chunk.token_ids.shape == chunk.activations.shape[:2]
    zero, negative = 0, 0
    if aligned:
        zero = int((_norms(chunk, norms) == 0).sum())
        negative = int((np.asarray(chunk.token_ids)[np.asarray(chunk.attention_mask, bool)] < 0).sum())
    passed = aligned and chunk.n_tokens > 0 and zero == 0 and negative == 0
    return passed, {"attended_tokens": chunk.n_tokens, "aligned_shapes": aligned,
                    "attended_zero_vectors": zero, "attended_negative_ids": negative}
