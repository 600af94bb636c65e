"""Global whitening from streaming moments, and per-chunk whitened activations."""

import dataclasses
import time
from collections.abc import Mapping
from pathlib import Path

import dagster as dg
import numpy as np
from pydantic import Field

from assets.metadata import attended_norms, spectrum_markdown, token_norms_table
from latent_atlas.data.chunks import DenseChunk, StreamedChunk, read_chunk, screen_chunks
from latent_atlas.data.content import chunk_version, content_version
from latent_atlas.data.whitening import (Moments, Whitening, covariance_check, held_out_check, held_out_size,
                                         sample_vectors)
from assets.partitions import all_chunks, chunks
from assets.versions import CONTENT_VERSION, partition_content_version, versioned
from resources import ComputeBackendResource, CorpusResource


class WhiteningConfig(dg.Config):
    method: str = Field(default="zca", description="'zca' (default) or 'pca'")
    eps: float = Field(default=1e-3, description="Added to each eigenvalue, relative to the median eigenvalue of the "
                       "directions the data span; bounds any direction's gain to sqrt(1 + 1/eps) x a median one")
    chunks_per_reduce: int = Field(default=8, description="Chunks whose moments are mapped before each merge (bounds memory)")
    check_sample_size: int = Field(default=20_000, description="Vectors held out for the covariance check "
                                   "(at most a fifth of all vectors)")


def _chunk_moments(path: Path) -> Moments | str:
    """The chunk's moments, or why it is refused: a value that is not finite (or overflows float64)
    would turn the whole whitening NaN and the error would then blame a good chunk downstream."""
    moments = Moments.of_chunk(read_chunk(path))
    if not (np.isfinite(moments.total).all() and np.isfinite(moments.outer).all()):
        return f"{path}: activations hold NaN/Inf or values whose squares overflow; refused by whitening"
    return moments


@dg.asset(
    io_manager_key="tensor_io_manager",
    group_name="whitening",
    ins={"activations": all_chunks()},
    check_specs=[dg.AssetCheckSpec("whitened_covariance_is_identity", asset="whitening",
                                   description="Held-out vectors sampled across chunks, whitened by a refit whose "
                                   "moments exclude them, have covariance close to identity")],
    kinds={"numpy"},
)
def whitening(context: dg.AssetExecutionContext, config: WhiteningConfig, activations: dict[str, Path],
              corpus: CorpusResource, compute: ComputeBackendResource):
    """Mean and whitening matrix from float64 moments merged exactly over all healthy chunks; a chunk
    that cannot be read, has another dimension or non-finite values is refused by name (metadata
    `refused_chunks`), not allowed to fail the fit for everybody. Makes every direction of the residual
    stream count alike before clustering (cosines are otherwise dominated by a few high-variance
    directions); the page plots the covariance spectrum it divides out."""
    if not activations:
        raise ValueError("no materialized activations partitions to fit whitening on")
    healthy, refused, dim = screen_chunks(activations, corpus.chunk_dimension())
    if not healthy:
        raise ValueError(f"every activations partition was refused: {refused}")
    paths = list(healthy.values())
    if corpus.already_whitened:
        fitted, moments, moments_seconds = Whitening.identity(dim), None, 0.0
        check = covariance_check(fitted, sample_vectors(paths, config.check_sample_size, seed=0))
    else:
        backend = compute.backend()
        moments, started = Moments.zeros(dim), time.perf_counter()
        # Map a few chunks at a time: every partial is d x d float64, so never all at once.
        for start in range(0, len(paths), config.chunks_per_reduce):
            batch = list(healthy)[start : start + config.chunks_per_reduce]
            for key, partial in zip(batch, backend.map(_chunk_moments, paths[start : start + config.chunks_per_reduce])):
                if isinstance(partial, str):
                    refused[key] = partial
                else:
                    moments.merge_(partial)
        moments_seconds = time.perf_counter() - started  # the part that grows with the corpus; the fit does not
        paths = [path for key, path in healthy.items() if key not in refused]
        if not paths:
            raise ValueError(f"every activations partition was refused: {refused}")
        fitted = Whitening.fit(moments, config.method, config.eps)
        held_out = sample_vectors(paths, held_out_size(moments.count, config.check_sample_size), seed=0)
        check = held_out_check(moments, held_out, config.method, config.eps)
    for key, problem in refused.items():
        context.log.warning(f"whitening refused chunk {key}: {problem}")
    return versioned(
        fitted, content_version(fitted.state()),
        {
            "method": fitted.method, "dim": dim, "chunks": len(paths),
            "refused_chunks": dg.MetadataValue.json(refused),
            "vectors": moments.count if moments else 0,
            "moments_seconds": round(moments_seconds, 2),
            "top_eigenvalues": [round(float(v), 4) for v in fitted.eigenvalues_[:5]],
            "rank": fitted.rank_,
            **{f"check_{k}": round(check[k], 4) for k in ("relative_frobenius", "mean_diag") if k in check},
            "spectrum": spectrum_markdown(fitted.eigenvalues_, fitted.rank_),
        },
        check_results=[dg.AssetCheckResult(
            check_name="whitened_covariance_is_identity", passed=check["passed"],
            metadata={k: v for k, v in check.items() if k != "passed"},
        )],
    )


# Eager: a new chunk upstream, or a refit global model, makes the partition due (once the UI's
# default automation sensor is switched on).
@dg.asset(partitions_def=chunks, automation_condition=dg.AutomationCondition.eager(),
          io_manager_key="tensor_io_manager", group_name="whitening", kinds={"numpy"})
def whitened_activations(context: dg.AssetExecutionContext, activations, whitening: Whitening):
    """Activations after the global whitening transform (fp16); masked positions are zero. What the
    centroids are learned on and every statistic is computed from; the page shows the tokens' norms
    (near the square root of the spanned rank, sqrt(d) at full rank, when the whitening fits this chunk).

    A run over a range of partitions (the refit job: whitening, every chunk's whitened activations and
    the centroids in one run) gets {key: activations chunk dir} and returns a lazy mapping: the IO
    manager whitens and writes one chunk at a time, each the same bytes a one-partition run writes.
    A chunk of the range without activations, or refused by the whitening, is left out (its stale
    output removed, metadata `left_out` says why) instead of failing the others."""
    if isinstance(activations, DenseChunk):
        chunk, metadata = _whiten(activations, whitening, partition_content_version(
            context.instance, "activations", context.partition_key))
        return versioned(chunk, metadata[CONTENT_VERSION], metadata)
    # Dagster gives every partition of a range run one data version; each chunk's own content version
    # goes into its partition's metadata as it is made (WhitenedRange), which freshness reads.
    return dg.MaterializeResult(value=WhitenedRange(context, activations, whitening),
                                metadata={"whitening": whitening.method})


def _whiten(activations: DenseChunk, whitening: Whitening,
            activations_version: str | None) -> tuple[DenseChunk | StreamedChunk, dict]:
    """The whitened chunk and its page metadata. Its content version is that of what made it (the
    activations' content version and the whitening's state; the code is in every fingerprint), not a
    hash of its ~600 MB a chunk: the same identity for the same bytes, at ~6% less of the stage.

    A transformed chunk is a StreamedChunk, made while the IO manager writes it (never whole in memory);
    its token norms, known once it is written, are the metadata its `fill` returns."""
    meta = {**activations.meta, "whitening": whitening.method}
    version = content_version("whitened", activations_version or chunk_version(activations), whitening.state(), meta)
    metadata = {"shape": str(activations.activations.shape), "whitening": whitening.method, CONTENT_VERSION: version}
    dim = activations.dim
    if whitening.method == "identity" and activations.storage == "reference":
        # nothing to transform: a reference to the activations' bytes, not a full-size copy
        # (masked positions then keep the input's values; every consumer reads attended positions)
        chunk = dataclasses.replace(activations, meta=meta, path=None)
        return chunk, {**metadata, "token_norms": token_norms_table(
            attended_norms(chunk.activations, chunk.attention_mask), dim)}

    def fill(file) -> dict:
        return {"token_norms": token_norms_table(whitening.transform_chunk_into(activations, file), dim)}

    return StreamedChunk(activations.activations.shape, activations.attention_mask, activations.token_ids,
                         meta, fill), metadata


class WhitenedRange(Mapping):
    """{partition key: whitened chunk, or None when left out} over a run's partition range, computed
    on access (one chunk in memory at a time); each chunk's page metadata is added as it is made."""

    def __init__(self, context: dg.AssetExecutionContext, activations: dict[str, Path], whitening: Whitening):
        self._context, self._paths, self._whitening = context, activations, whitening
        self._keys = list(context.partition_keys)
        event = context.instance.get_latest_materialization_event(dg.AssetKey("whitening"))
        refused = event.asset_materialization.metadata.get("refused_chunks") if event else None
        self._refused = dict(refused.value) if refused is not None and isinstance(refused.value, dict) else {}

    def __iter__(self):
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __getitem__(self, key: str) -> DenseChunk | None:
        if key not in self._keys:
            raise KeyError(key)
        if key not in self._paths or key in self._refused:
            why = self._refused.get(key, "no materialized activations")
            self._context.log.warning(f"whitened_activations left out chunk {key}: {why}")
            # a content version for the absence too: an unchanged refit leaving it out again changes nothing
            self._context.add_asset_metadata({"left_out": why, CONTENT_VERSION: content_version("left out", why)},
                                             partition_key=key)
            return None
        chunk, metadata = _whiten(read_chunk(self._paths[key]), self._whitening,
                                  partition_content_version(self._context.instance, "activations", key))
        if not isinstance(chunk, StreamedChunk):
            self._context.add_asset_metadata(metadata, partition_key=key)
            return chunk

        def fill(file, made=chunk.fill) -> dict:  # the partition's page metadata once its norms are known
            self._context.add_asset_metadata({**metadata, **made(file)}, partition_key=key)
            return {}
        return dataclasses.replace(chunk, fill=fill)
