"""OME-Zarr (NGFF 0.4 and 0.5): tomograms in, as the CryoET Data Portal serves them, and labels out.

:func:`read_ome_zarr` opens a local OME-Zarr image and returns a lazily sliced ``(Z, Y, X)``
volume of the multiscale level whose voxel size is nearest (in log ratio) to the one asked for —
the model's — plus its voxel size in Å; slabs are read from the store only when indexed, so a
tomogram streams slab by slab like a memory-mapped MRC file. Needs ``zarr`` (the ``zarr`` extra:
``pip install cryoet-monai[zarr]``).

Units: the ``unit`` of the spatial axes (``angstrom``, ``nanometer``, ``micrometer``, ...) is
converted to Å. Scales *without* a unit are taken as Å — the Data Portal's convention — and the
plausibility limit of the segmenter (0.5–100 Å) refuses values that cannot be Å (nm values of a
unit-less store, e.g. 1.0, are refused as "unset"; pass ``--voxel-size``). Written by hand on top of
``zarr`` because the metadata walk is short and ome-zarr's reader loads whole pyramids as dask graphs.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from cryoet_monai.io.heap import limit_heap_retention

__all__ = [
    "OmeZarrFormatError", "ZarrVolume", "create_ome_zarr_labels", "image_label_metadata", "is_ome_zarr_path",
    "read_ome_zarr",
]  # fmt: skip

logger = logging.getLogger(__name__)

_UNIT_TO_ANGSTROM = {"angstrom": 1.0, "nanometer": 10.0, "micrometer": 1e4, "millimeter": 1e7,
                     "meter": 1e10, "picometer": 0.01}


class OmeZarrFormatError(ValueError):
    """A folder that is not a readable OME-Zarr image; the message names it and the problem."""


def is_ome_zarr_path(path: str | os.PathLike) -> bool:
    """A ``*.zarr`` name, or a folder with zarr metadata (``zarr.json`` or ``.zattrs``)."""
    p = Path(path)
    has_metadata = (p / "zarr.json").is_file() or (p / ".zattrs").is_file()
    return p.suffix.lower() == ".zarr" or (p.is_dir() and has_metadata)


class ZarrVolume:
    """A ``(Z, Y, X)`` view of a zarr array whose other axes (channel, time) have size 1.

    Indexing returns numpy arrays and reads only the chunks it touches.
    """

    def __init__(self, array: Any, spatial_axes: tuple[int, int, int]) -> None:
        self.array = array
        self.spatial_axes = spatial_axes
        self.shape = tuple(int(array.shape[a]) for a in spatial_axes)
        self.dtype = np.dtype(array.dtype)
        self.ndim = 3
        self.size = math.prod(self.shape)

    def __getitem__(self, index: Any) -> np.ndarray:
        index = index if isinstance(index, tuple) else (index,)
        index = index + (slice(None),) * (3 - len(index))
        full: list[Any] = [0] * self.array.ndim
        for axis, item in zip(self.spatial_axes, index):
            full[axis] = item
        return np.asarray(self.array[tuple(full)])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[:, :, :]
        return out if dtype is None else out.astype(dtype)


def read_ome_zarr(
    path: str | os.PathLike, voxel_size: float | None = None
) -> tuple[ZarrVolume, dict[str, Any]]:
    """``(volume, {"voxel_size": (z, y, x) Å, "origin": (z, y, x) Å, "level": path})`` of the level
    nearest to ``voxel_size`` Å (the finest when ``None``)."""
    path = Path(path)
    try:
        import zarr
    except ImportError as err:
        raise OmeZarrFormatError(
            f"{path}: reading OME-Zarr needs the zarr extra (pip install 'cryoet-monai[zarr]')"
        ) from err
    if not path.is_dir():
        raise OmeZarrFormatError(f"{path}: no such OME-Zarr folder")
    limit_heap_retention()  # zarr's freed chunk buffers would stay in RSS (cryoet_monai.io.heap)
    try:
        root = zarr.open_group(str(path), mode="r")
        attrs = root.attrs.asdict()
    except Exception as err:  # zarr raises many kinds for a folder that is not a store
        raise OmeZarrFormatError(f"{path}: not a readable zarr group ({err})") from err
    multiscales = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
    if not multiscales:
        raise OmeZarrFormatError(f"{path}: no OME-Zarr 'multiscales' metadata (is it an image?)")
    ms = multiscales[0]
    axes = ms.get("axes") or [{"name": n} for n in "zyx"]
    names = [a["name"] if isinstance(a, dict) else str(a) for a in axes]
    try:
        spatial = tuple(names.index(n) for n in "zyx")
    except ValueError as err:
        raise OmeZarrFormatError(f"{path}: axes {names} lack one of z, y, x") from err
    units = [axes[i].get("unit") if isinstance(axes[i], dict) else None for i in spatial]
    factors = []
    for unit in units:
        if unit is None:
            factors.append(1.0)  # unit-less: the Data Portal's Å (see the module docstring)
        elif str(unit).lower() in _UNIT_TO_ANGSTROM:
            factors.append(_UNIT_TO_ANGSTROM[str(unit).lower()])
        else:
            raise OmeZarrFormatError(f"{path}: spatial unit {unit!r} is not a length unit known here")
    if any(u is None for u in units):
        logger.warning("%s: axes have no unit; the scale is taken as Å", path)
    top = _scale_and_shift(ms.get("coordinateTransformations", []), len(names))
    levels = []
    for ds in ms["datasets"]:
        scale, shift = _scale_and_shift(ds.get("coordinateTransformations", []), len(names))
        vs = tuple(scale[i] * top[0][i] * f for i, f in zip(spatial, factors))
        origin = tuple((shift[i] * top[0][i] + top[1][i]) * f for i, f in zip(spatial, factors))
        levels.append((ds["path"], vs, origin))
    if voxel_size is None:
        chosen = levels[0]
    else:
        chosen = min(levels, key=lambda lv: abs(math.log(max(lv[1][1], 1e-12) / voxel_size)))
    try:
        array = root[chosen[0]]
    except KeyError as err:
        raise OmeZarrFormatError(f"{path}: multiscale level {chosen[0]!r} is missing") from err
    extra = [a for a in range(array.ndim) if a not in spatial and array.shape[a] != 1]
    if extra:
        raise OmeZarrFormatError(
            f"{path}: level {chosen[0]} has non-spatial axes of size > 1 "
            f"({[names[a] for a in extra]}); a tomogram must be a single (Z, Y, X) volume"
        )
    return ZarrVolume(array, spatial), {"voxel_size": chosen[1], "origin": chosen[2], "level": chosen[0]}


def _scale_and_shift(transforms: list[dict[str, Any]], ndim: int) -> tuple[list[float], list[float]]:
    scale, shift = [1.0] * ndim, [0.0] * ndim
    for t in transforms:
        if t.get("type") == "scale" and "scale" in t:
            scale = [float(v) for v in t["scale"]]
        elif t.get("type") == "translation" and "translation" in t:
            shift = [float(v) for v in t["translation"]]
    return scale, shift


def image_label_metadata(class_names: tuple[str, ...], colors: tuple[tuple[float, float, float], ...]
                         ) -> dict[str, Any]:
    """NGFF ``image-label`` metadata: one RGBA colour per foreground value and one class name per value."""
    return {
        "colors": [{"label-value": i, "rgba": [int(round(255 * c)) for c in rgb] + [255]}
                   for i, rgb in enumerate(colors) if i],
        "properties": [{"label-value": i, "class": name} for i, name in enumerate(class_names)],
    }


@contextlib.contextmanager
def create_ome_zarr_labels(
    path: str | os.PathLike,
    shape: tuple[int, int, int],
    voxel_size: tuple[float, float, float],
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0),
    class_names: tuple[str, ...] = (),
    colors: tuple[tuple[float, float, float], ...] = (),
    chunks: tuple[int, int, int] = (16, 256, 256),
) -> Iterator[np.ndarray]:
    """Stream a ``(Z, Y, X)`` uint8 label volume into a new OME-Zarr store at ``path``.

    Yields a writable array (a memory map in a hidden temporary file of the target folder, so the
    labels can be written slab by slab with bounded memory). On normal exit the labels are written
    chunk by chunk with ome-zarr as an NGFF ``labels/segmentation`` image — scale and translation
    in Å, ``image-label`` metadata with one colour and one class name per value — into a hidden
    temporary folder that is then renamed to ``path``; on an error nothing appears under ``path``.
    """
    import dask.array as da
    import zarr
    from ome_zarr.writer import write_multiscale_labels

    path = Path(path)
    limit_heap_retention()  # zarr's freed chunk buffers would stay in RSS (cryoet_monai.io.heap)
    # not cryoet_monai.io.atomic.atomic_path: two temporaries (the memory-mapped labels and the folder
    # store written from them) with one tag, and a folder replaces the target
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    raw = path.parent / f".{path.name}.{tag}.tmp"
    store = path.parent / f".{path.name}.{tag}.zarr.tmp"
    labels = np.lib.format.open_memmap(raw, mode="w+", dtype=np.uint8, shape=tuple(shape))
    try:
        yield labels
        labels.flush()
        root = zarr.open_group(str(store), mode="w")
        axes = [{"name": n, "type": "space", "unit": "angstrom"} for n in "zyx"]
        transform = [[{"type": "scale", "scale": [float(v) for v in voxel_size]},
                      {"type": "translation", "translation": [float(v) for v in origin]}]]
        metadata = image_label_metadata(class_names, colors)
        with warnings.catch_warnings():  # coordinate_transformations: still the way to give a translation
            warnings.simplefilter("ignore", DeprecationWarning)
            write_multiscale_labels([da.from_array(labels, chunks=chunks)], root, "segmentation", axes=axes,
                                    coordinate_transformations=transform, label_metadata=metadata,
                                    storage_options={"chunks": chunks})
        del labels
        if path.exists():
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        os.replace(store, path)
    finally:
        raw.unlink(missing_ok=True)
        shutil.rmtree(store, ignore_errors=True)
