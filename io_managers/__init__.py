from io_managers.parquet import ParquetIOManager
from io_managers.tensors import TensorIOManager

__all__ = ["ParquetIOManager", "TensorIOManager"]
