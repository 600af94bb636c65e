"""Give freed heap memory back to the operating system between streaming steps.

glibc keeps freed blocks in its heap, and the pattern of a learning step (a few ~10 MB arrays per
chunk, freed in a different order than allocated) leaves them scattered: measured, the resident set
of a fit grew by ~30 MB per chunk for the first chunks, all of it free memory malloc_trim returned.
"""

import ctypes
import ctypes.util
from functools import lru_cache


@lru_cache(maxsize=1)
def _malloc_trim():
    path = ctypes.util.find_library("c")
    trim = getattr(ctypes.CDLL(path), "malloc_trim", None) if path else None  # glibc only
    if trim is not None:
        trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def release_free_memory() -> None:
    """malloc_trim(0) where the C library has it (glibc); nothing elsewhere."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
