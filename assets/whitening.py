"""Global whitening from streaming moments, and per-chunk whitened activations."""

from pathlib import Path

import dagster as dg
import numpy as np
from pydantic import Field

from latent_atlas.chunks import DenseChunk, read_chunk
from latent_atlas.whitening import Moments, Whitening, covariance_error, sample_vectors
from orchestration.partitions import NEW_CHUNKS, chunks
from resources import ComputeBackendResource, CorpusResource


class WhiteningConfig(dg.Config):
    method: str = Field(default="zca", description="'zca' (default) or 'pca'")
    eps: float = Field(default=1e-3, description="Added to each eigenvalue, relative to the median eigenvalue")
    chunks_per_reduce: int = Field(default=8, description="Chunks whose moments are mapped before each merge (bounds memory)")
    check_sample_size: int = Field(default=20_000, description="Vectors sampled for the covariance check")


def _chunk_moments(path: Path) -> Moments:
    return Moments.of_chunk(read_chunk(path))


@dg.asset(
    io_manager_key="tensor_io_manager",
    group_name="whitening",
    ins={"activations": dg.AssetIn(partition_mapping=dg.AllPartitionMapping(), metadata={"allow_missing_partitions": True})},
    check_specs=[dg.AssetCheckSpec("whitened_covariance_is_identity", asset="whitening",
                                   description="Covariance of whitened vectors sampled across chunks is close to identity")],
    kinds={"numpy"},
)
def whitening(config: WhiteningConfig, activations: dict[str, Path], corpus: CorpusResource,
              compute: ComputeBackendResource):
    """Mean and whitening matrix from float64 moments merged exactly over all chunks."""
    if not activations:
        raise ValueError("no materialized activations partitions to fit whitening on")
    paths = list(activations.values())
    dim = read_chunk(paths[0]).dim
    if corpus.already_whitened:
        fitted, moments = Whitening.identity(dim), None
    else:
        backend = compute.backend()
        moments = Moments.zeros(dim)
        # Map a few chunks at a time: every partial is d x d float64, so never all at once.
        for start in range(0, len(paths), config.chunks_per_reduce):
            for partial in backend.map(_chunk_moments, paths[start : start + config.chunks_per_reduce]):
                moments.merge_(partial)
        fitted = Whitening.fit(moments, config.method, config.eps)
    sample = sample_vectors(paths, config.check_sample_size, seed=0)
    error = covariance_error(fitted.transform(sample))
    # A sample of n vectors in d dims deviates from its population covariance by ~sqrt(d/n).
    tolerance = 3 * np.sqrt(dim / max(len(sample), 1)) + 0.05
    passed = error["relative_frobenius"] <= tolerance and 0.8 <= error["mean_diag"] <= 1.2
    return dg.MaterializeResult(
        value=fitted,
        metadata={
            "method": fitted.method, "dim": dim, "chunks": len(paths),
            "vectors": moments.count if moments else 0,
            "top_eigenvalues": [round(float(v), 4) for v in fitted.eigenvalues_[:5]],
            "check_relative_frobenius": round(error["relative_frobenius"], 4),
            "check_mean_diag": round(error["mean_diag"], 4),
        },
        check_results=[dg.AssetCheckResult(
            check_name="whitened_covariance_is_identity", passed=bool(passed),
            metadata={**error, "tolerance": float(tolerance)},
        )],
    )


@dg.asset(partitions_def=chunks, automation_condition=NEW_CHUNKS,
          io_manager_key="tensor_io_manager", group_name="whitening", kinds={"numpy"})
def whitened_activations(activations: DenseChunk, whitening: Whitening):
    """Activations after the global whitening transform (fp16); masked positions are zero."""
    whitened = whitening.transform_chunk(activations)
    chunk = DenseChunk(whitened, activations.attention_mask, activations.token_ids,
                       meta={**activations.meta, "whitening": whitening.method})
    return dg.MaterializeResult(value=chunk, metadata={"shape": str(whitened.shape), "whitening": whitening.method})
