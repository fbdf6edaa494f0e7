"""TIFF stacks in (``tifffile``): a multi-page TIFF as a ``(Z, Y, X)`` tomogram.

The voxel size comes from the file when it says so — ImageJ metadata (``unit`` and ``spacing``
for z) or the TIFF resolution tags (``XResolution``/``YResolution`` in pixels per
``ResolutionUnit``) — and is otherwise unknown (reported as 0, so that ``segment`` asks for
``--voxel-size`` instead of guessing). Written by hand on top of ``tifffile`` because it returns
raw tags, not physical voxel sizes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["TIFF_SUFFIXES", "TiffFormatError", "is_tiff_path", "read_tiff"]

#: file-name suffixes read as TIFF stacks
TIFF_SUFFIXES = (".tif", ".tiff")
# Å per unit, for the units ImageJ and microscope software write
_UNITS = {"a": 1.0, "å": 1.0, "angstrom": 1.0, "nm": 10.0, "nanometer": 10.0, "um": 1e4, "µm": 1e4,
          "micron": 1e4, "micrometer": 1e4, "mm": 1e7, "cm": 1e8, "inch": 2.54e8}


class TiffFormatError(ValueError):
    """A TIFF file that is not a readable 3-D stack; the message names the file."""


def is_tiff_path(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in TIFF_SUFFIXES


def _voxel_size(tif: Any) -> tuple[float, float, float]:
    page = tif.pages[0]
    ij = tif.imagej_metadata or {}
    unit = str(ij.get("unit", "")).strip().lower().replace("\\u00c5", "å")
    scale = _UNITS.get(unit)
    tags = page.tags
    res_unit = tags.get("ResolutionUnit")
    if scale is None and res_unit is not None:
        scale = {2: _UNITS["inch"], 3: _UNITS["cm"]}.get(int(res_unit.value))

    def per_pixel(tag: str) -> float:
        entry = tags.get(tag)
        if entry is None or scale is None:
            return 0.0
        num, den = entry.value if isinstance(entry.value, tuple) else (entry.value, 1)
        pixels_per_unit = float(num) / float(den) if den else 0.0
        return scale / pixels_per_unit if pixels_per_unit > 0 else 0.0

    vx, vy = per_pixel("XResolution"), per_pixel("YResolution")
    vz = float(ij["spacing"]) * scale if "spacing" in ij and scale else vx
    return (vz, vy, vx)


def read_tiff(path: str | os.PathLike) -> tuple[np.ndarray, dict[str, Any]]:
    """``(volume (Z, Y, X), {"voxel_size": (z, y, x) Å or zeros, "origin": (0, 0, 0)})``."""
    try:
        import tifffile
    except ImportError as err:  # a dependency of the package; only a broken install lacks it
        raise TiffFormatError(f"{path}: reading TIFF needs tifffile (pip install tifffile)") from err
    path = Path(path)
    try:
        with tifffile.TiffFile(path) as tif:
            volume = tif.asarray()
            voxel_size = _voxel_size(tif)
    except (OSError, ValueError, tifffile.TiffFileError) as err:
        raise TiffFormatError(f"{path}: not a readable TIFF ({err})") from err
    volume = np.squeeze(volume)
    if volume.ndim != 3:
        raise TiffFormatError(f"{path}: a TIFF tomogram must be a 3-D stack, got shape {volume.shape}")
    return volume, {"voxel_size": voxel_size, "origin": (0.0, 0.0, 0.0)}
