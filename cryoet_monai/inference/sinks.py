"""Label sinks: where a :class:`~cryoet_monai.inference.TomogramSegmenter` streams its labels.

A sink answers two questions, "which file will you write for this input?" (:meth:`LabelSink.output_path`)
and "give me a writable ``(Z, Y, X)`` uint8 volume that appears under that name only when it is
complete" (:meth:`LabelSink.create`, a context manager), and reads its own output back
(:meth:`LabelSink.read`); :attr:`LabelSink.writes_files` says whether it needs the output folder. The
segmenter writes plane by plane into what ``create`` yields, so a sink decides the format and the memory
it needs; configs choose one with ``"label_sink"``.
"""

from __future__ import annotations

import contextlib
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cryoet_monai import CLASS_NAMES

__all__ = ["ArrayLabelSink", "LabelSink", "MRCLabelSink", "OmeZarrLabelSink", "label_sink"]


class LabelSink(ABC):
    """Writes one label volume per tomogram (``<stem>_seg<suffix>``)."""

    #: file-name ending of the outputs, ``".mrc"`` or ``".zarr"``
    suffix: str = ""
    #: whether it writes files under the output folder (the segmenter creates the folder only then)
    writes_files: bool = True

    def output_path(self, stem: str | os.PathLike) -> Path:
        """The labels' path for an output stem (``out_dir / input name without suffix``)."""
        return Path(f"{stem}_seg{self.suffix}")

    def exists(self, path: str | os.PathLike) -> bool:
        """Whether a complete output is already there (``overwrite=False`` skips the tomogram)."""
        return Path(path).exists()

    @abstractmethod
    def create(
        self,
        path: str | os.PathLike,
        shape: tuple[int, int, int],
        voxel_size: tuple[float, float, float],
        origin: tuple[float, float, float],
        class_names: Sequence[str] = CLASS_NAMES,
    ) -> contextlib.AbstractContextManager[np.ndarray]:
        """A context manager yielding a writable ``(Z, Y, X)`` uint8 volume; on normal exit it is
        stored under ``path``, on an exception nothing appears there."""

    @abstractmethod
    def read(self, path: str | os.PathLike) -> Any:
        """The written ``(Z, Y, X)`` labels (array-like, possibly lazy or memory-mapped)."""


class MRCLabelSink(LabelSink):
    """``<name>_seg.mrc``: uint8 MRC with the input's voxel size and origin, memory-mapped while
    written (a hidden temporary in the same folder, renamed when complete; see
    :func:`cryoet_monai.io.mrc.create_mrc`)."""

    suffix = ".mrc"

    def create(self, path, shape, voxel_size, origin, class_names=CLASS_NAMES):
        from cryoet_monai.io.mrc import create_mrc

        return create_mrc(path, shape, np.uint8, voxel_size, origin, fill=None)

    def read(self, path: str | os.PathLike) -> Any:
        from cryoet_monai.io.mrc import read_mrc

        return read_mrc(path, mmap=True)[0]


class OmeZarrLabelSink(LabelSink):
    """``<name>_seg.zarr``: an OME-Zarr store with the labels as NGFF ``labels/segmentation`` (class
    names and the fixed class colours, voxel size in Å); needs the ``zarr`` extra."""

    suffix = ".zarr"

    def __init__(self, chunks: Sequence[int] = (16, 256, 256)) -> None:
        self.chunks = tuple(int(c) for c in chunks)

    def create(self, path, shape, voxel_size, origin, class_names=CLASS_NAMES):
        from cryoet_monai.evaluation.figures import CLASS_COLORS
        from cryoet_monai.io.omezarr import create_ome_zarr_labels

        n = len(class_names)
        return create_ome_zarr_labels(path, shape, voxel_size, origin, tuple(class_names),
                                      tuple(CLASS_COLORS[:n]), chunks=self.chunks)

    def read(self, path: str | os.PathLike) -> Any:
        from cryoet_monai.io.omezarr import read_ome_zarr

        return read_ome_zarr(Path(path) / "labels" / "segmentation")[0]


class ArrayLabelSink(LabelSink):
    """Keeps the labels in memory (napari layers, copick, tests): ``labels[str(path)]`` holds each
    finished volume; nothing is written to disk. Memory: one byte per voxel per tomogram kept."""

    writes_files = False

    def __init__(self) -> None:
        self.labels: dict[str, np.ndarray] = {}

    def exists(self, path: str | os.PathLike) -> bool:
        return str(path) in self.labels

    @contextlib.contextmanager
    def create(self, path, shape, voxel_size, origin, class_names=CLASS_NAMES) -> Iterator[np.ndarray]:
        volume = np.zeros(tuple(shape), dtype=np.uint8)
        yield volume
        self.labels[str(path)] = volume  # only a complete volume is kept

    def read(self, path: str | os.PathLike) -> np.ndarray:
        return self.labels[str(path)]


def label_sink(output_format: str = "mrc") -> LabelSink:
    """The sink for a format name: ``"mrc"`` or ``"zarr"`` (the ``output_format`` of the configs)."""
    sinks = {"mrc": MRCLabelSink, "zarr": OmeZarrLabelSink}
    if output_format not in sinks:
        raise ValueError(f"output_format must be 'mrc' or 'zarr', got {output_format!r}.")
    return sinks[output_format]()
