"""Dense tensors: chunk directories of memory-mapped .npy arrays, and model-like arrays as .npz.

.npy memory-mapped reads measured fastest (docs/benchmarks.md): a loaded chunk is a view of the
page cache, decoded by nobody.
"""

from __future__ import annotations

import importlib
import json
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path

import dagster as dg

from io_managers.storage import input_paths, output_path, record_inputs_fingerprint, wants_single_partition
from latent_atlas.data.atomic import write_atomically
from latent_atlas.data.chunks import DenseChunk, StreamedChunk, read_chunk, write_chunk, write_streamed_chunk
from latent_atlas.data.paths import atlas_home

# The classes this IO manager saves, as their sidecars name them. A sidecar is data, not code:
# loading imports only these, never whatever `module:class` a file on disk happens to name.
SAVED_TYPES = frozenset({
    "latent_atlas.clustering.model:SequentialSoftClustering",
    "latent_atlas.hierarchy.ensemble:EnsembleResult",
    "latent_atlas.analysis.intervention:InterventionVectors",
    "latent_atlas.hierarchy.sample:HierarchySample",
    "latent_atlas.analysis.statistics:ChunkStatistics",
    "latent_atlas.steering.vectors:SteeringVectors",
    "latent_atlas.hierarchy.tree:ClusterTree",
    "latent_atlas.data.whitening:Whitening",
})

# Where those classes lived before the library was grouped into packages (latent_atlas/<module>.py):
# sidecars written then name these, and load as the class each names now. Only this map, never a
# guess from the name: a sidecar that names anything else is still refused.
LEGACY_TYPES = {
    "latent_atlas.clustering:SequentialSoftClustering": "latent_atlas.clustering.model:SequentialSoftClustering",
    "latent_atlas.ensemble:EnsembleResult": "latent_atlas.hierarchy.ensemble:EnsembleResult",
    "latent_atlas.intervention:InterventionVectors": "latent_atlas.analysis.intervention:InterventionVectors",
    "latent_atlas.sample:HierarchySample": "latent_atlas.hierarchy.sample:HierarchySample",
    "latent_atlas.statistics:ChunkStatistics": "latent_atlas.analysis.statistics:ChunkStatistics",
    "latent_atlas.steering:SteeringVectors": "latent_atlas.steering.vectors:SteeringVectors",
    "latent_atlas.tree:ClusterTree": "latent_atlas.hierarchy.tree:ClusterTree",
    "latent_atlas.whitening:Whitening": "latent_atlas.data.whitening:Whitening",
}


class TensorIOManager(dg.ConfigurableIOManager):
    """DenseChunk outputs become chunk directories; other outputs must have `save(path)` and a
    classmethod `load(path)` (whitening, centroids) and are stored as .npz with their class name.

    A fan-in over chunk partitions loads as {partition key: Path}, never the arrays.
    """

    base_dir: str = ""

    def _base(self) -> Path:
        return Path(self.base_dir) if self.base_dir else atlas_home() / "tensors"

    def handle_output(self, context: dg.OutputContext, obj) -> None:
        record_inputs_fingerprint(context)
        if context.has_asset_partitions and len(context.asset_partition_keys) > 1:
            self._handle_range(context, obj)
            return
        key = context.partition_key if context.has_asset_partitions else None
        if isinstance(obj, (DenseChunk, StreamedChunk)):
            context.add_output_metadata(_write_chunk_dir(output_path(self._base(), context, "", key), obj))
            return
        path = output_path(self._base(), context, ".npz", key)
        kind = f"{type(obj).__module__}:{type(obj).__qualname__}"
        if kind not in SAVED_TYPES:
            raise TypeError(f"{path}: the tensor IO manager stores only {sorted(SAVED_TYPES)}, got {kind}")
        path.parent.mkdir(parents=True, exist_ok=True)
        # A name of its own per writer: two runs writing the same artifact never share a temp file.
        tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.tmp.npz")
        try:
            obj.save(tmp)
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)
        write_atomically(path.with_suffix(".json"), lambda f: f.write(json.dumps({"class": kind}).encode()))
        context.add_output_metadata({"path": dg.MetadataValue.path(str(path))})

    def _handle_range(self, context: dg.OutputContext, obj) -> None:
        """A step over several partitions returns {partition key: DenseChunk, or None if left out}; each
        chunk is written (and, for a lazy mapping, made) in turn; a left-out partition's stale chunk
        directory is removed, so no fan-in reads it."""
        if not isinstance(obj, Mapping):
            raise TypeError(f"{context.asset_key.to_user_string()}: a run over {len(context.asset_partition_keys)} "
                            f"partitions must return {{partition key: DenseChunk}}, got {type(obj).__name__}")
        written = 0
        for key in context.asset_partition_keys:
            chunk = obj.get(key)
            path = output_path(self._base(), context, "", key)
            if chunk is None:
                shutil.rmtree(path, ignore_errors=True)
                continue
            _write_chunk_dir(path, chunk)  # its page metadata: per partition, which an OutputContext cannot take
            written += 1
        context.add_output_metadata({"path": dg.MetadataValue.path(str(output_path(self._base(), context, "", None))),
                                     "partitions_written": written})

    def load_input(self, context: dg.InputContext):
        if context.has_asset_partitions and not wants_single_partition(context):
            chunk_dirs = input_paths(self._base(), context, "")
            return chunk_dirs or input_paths(self._base(), context, ".npz")
        key = context.asset_partition_key if context.has_asset_partitions else None
        chunk_dir = output_path(self._base(), context, "", key)
        if chunk_dir.is_dir():
            return read_chunk(chunk_dir)
        return load_artifact(output_path(self._base(), context, ".npz", key))


def load_artifact(path: Path):
    """Load an .npz artifact with the class recorded beside it (our own classes only, by their name now
    or before the library's packages; no pickle)."""
    sidecar = path.with_suffix(".json")
    kind = json.loads(sidecar.read_text())["class"]
    kind = LEGACY_TYPES.get(kind, kind)
    if kind not in SAVED_TYPES:
        raise ValueError(f"{sidecar}: names class {kind!r}, which is not one the tensor IO manager saves "
                         f"({', '.join(sorted(SAVED_TYPES))}); refusing to import it")
    module, _, name = kind.partition(":")
    return getattr(importlib.import_module(module), name).load(path)


def _write_chunk_dir(path: Path, chunk: DenseChunk | StreamedChunk) -> dict:
    """Write a chunk directory at path; returns its page metadata. A StreamedChunk is made while it is
    written, and its fill returns the metadata it gathered (e.g. token norms). storage: "reference"
    when the activations stay where they already lie (no second copy)."""
    if isinstance(chunk, StreamedChunk):
        made, shape, storage = write_streamed_chunk(path, chunk), chunk.shape, "copy"
    else:
        write_chunk(path, chunk.activations, chunk.attention_mask, chunk.token_ids, chunk.meta, chunk.activations_ref)
        made, shape, storage = {}, chunk.activations.shape, chunk.storage
    return {"path": dg.MetadataValue.path(str(path)), "shape": str(shape), "attended_tokens": chunk.n_tokens,
            "storage": storage, **made}
