"""Parquet tables: partition-aware paths, temp file + atomic rename, row count and schema as metadata."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq

from io_managers.storage import input_paths, output_path, record_inputs_fingerprint, wants_single_partition
from latent_atlas.data.paths import atlas_home
from latent_atlas.data.tables import write_table


class ParquetIOManager(dg.ConfigurableIOManager):
    """Stores pa.Table outputs (or objects with `to_table()` and optional `metadata()`).

    Loading one partition gives a pa.Table (file metadata kept in its schema); a fan-in over
    partitions gives {partition key: Path}, opened lazily by the consumer.
    """

    base_dir: str = ""

    def _base(self) -> Path:
        return Path(self.base_dir) if self.base_dir else atlas_home() / "tables"

    def handle_output(self, context: dg.OutputContext, obj) -> None:
        record_inputs_fingerprint(context)
        if obj is None:
            return
        table = obj if isinstance(obj, pa.Table) else obj.to_table()
        file_meta = obj.metadata() if hasattr(obj, "metadata") and not isinstance(obj, pa.Table) else None
        key = context.partition_key if context.has_asset_partitions else None
        path = write_table(table, output_path(self._base(), context, ".parquet", key), file_meta)
        context.add_output_metadata(
            {
                "path": dg.MetadataValue.path(str(path)),
                "row_count": table.num_rows,
                "dagster/column_schema": dg.TableSchema(
                    columns=[dg.TableColumn(f.name, str(f.type)) for f in table.schema]
                ),
            }
        )

    def load_input(self, context: dg.InputContext):
        if context.has_asset_partitions and not wants_single_partition(context):
            return input_paths(self._base(), context, ".parquet")
        key = context.asset_partition_key if context.has_asset_partitions else None
        return pq.read_table(output_path(self._base(), context, ".parquet", key))
