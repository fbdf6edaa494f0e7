"""Process-level allocator setting for streaming commands (glibc only).

glibc serves an allocation from the heap, not from its own ``mmap``, once its size is below the
*dynamic* mmap threshold, which grows up to 32 MiB as big blocks are freed. Chunk decoders (zarr's
16 MiB chunk buffers, decoded in zarr's I/O thread and so in a separate arena) then leave freed
blocks in the heap, where they keep counting towards RSS while the network's activations peak:
measured +0.2 GiB for an OME-Zarr input over the same tomogram as MRC (``scripts/bench_omezarr_rss.py``).
A fixed threshold makes every block at least that big its own mapping, returned to the system on
``free``. It is a setting of the whole process with a price: every such allocation is a fresh mapping
with fresh page faults, which cost torch eager 25 % on a typical tomogram (85 s -> 107 s, measured),
so only the OME-Zarr reader and writer set it, when a store is opened (zarr's I/O thread is the cause).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

__all__ = ["limit_heap_retention"]

#: ``M_MMAP_THRESHOLD`` of glibc's ``mallopt`` (malloc.h)
_M_MMAP_THRESHOLD = -3


def limit_heap_retention(threshold_bytes: int = 4 << 20) -> bool:
    """Serve allocations of ``threshold_bytes`` or more with their own memory map (glibc's
    ``mallopt(M_MMAP_THRESHOLD)``), so freeing them lowers RSS at once. Returns whether it was set
    (False on other C libraries, where nothing is changed)."""
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, int(threshold_bytes)))
