"""Keep the resident memory of memory-mapped streaming bounded."""

from __future__ import annotations

import mmap

import numpy as np

__all__ = ["release_pages"]


def release_pages(view: np.ndarray) -> None:
    """Drop the pages of ``view`` (a C-contiguous part of a ``np.memmap``) from this process's memory.

    Pages of a memory-mapped file that were read or written stay resident (and count towards RSS)
    until the mapping closes, so streaming over a big file would otherwise grow to the file's size.
    ``MADV_DONTNEED`` on a shared file mapping only unmaps them: written data stay in the page cache
    and reach the file; the next access re-reads them. A no-op for in-memory arrays.
    """
    mm = getattr(view, "_mmap", None)
    if mm is None or not hasattr(mm, "madvise") or view.size == 0 or not view.flags["C_CONTIGUOUS"]:
        return
    base = np.frombuffer(mm, dtype=np.uint8).__array_interface__["data"][0]
    start = view.__array_interface__["data"][0] - base
    aligned = start - start % mmap.PAGESIZE
    length = min(start + view.nbytes, len(mm)) - aligned
    if length > 0:
        mm.madvise(mmap.MADV_DONTNEED, aligned, length)
