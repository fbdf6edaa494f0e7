"""Files written atomically: a hidden temporary in the same folder, renamed into place, so a reader
never sees half a file (JSON records, reports, figures, checkpoints, MRC volumes).

:func:`atomic_path` is the one temporary-file-and-rename of the package. Temporaries are named
``.<name>.<pid>-<id>.tmp`` so that :func:`cryoet_monai.io.mrc.remove_stale_temporaries` can clear
the ones a killed writer left (the pid tells a dead writer from a live one). The OME-Zarr label
writer (:mod:`cryoet_monai.io.omezarr`) keeps its own pair of temporaries: it streams into a
memory-mapped array and then writes a *folder* store, which a file rename does not cover.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "temporary_path", "write_json_atomic", "write_text_atomic"]


def temporary_path(path: str | os.PathLike) -> Path:
    """``<folder>/.<name>.<pid>-<8 hex>.tmp`` beside ``path``: hidden, unique per writer, and the
    writer's pid lets a later run tell a dead writer's leftovers from a live one's file."""
    path = Path(path)
    return path.parent / f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; on success it is renamed onto ``path``, on any exception it is
    removed and ``path`` is left as it was.

    The temporary ends in ``.tmp``: writers that choose a format from the suffix need it given
    explicitly (``savefig(tmp, format="png")``).
    """
    path = Path(path)
    tmp = temporary_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # only still there when the write or the rename failed


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int = 2, **dumps: Any) -> Path:
    """Write ``obj`` as JSON (and a final newline) to ``path`` atomically; ``dumps`` go to
    :func:`json.dumps` (e.g. ``default=str``). Returns the path."""
    return write_text_atomic(path, json.dumps(obj, indent=indent, **dumps) + "\n")
