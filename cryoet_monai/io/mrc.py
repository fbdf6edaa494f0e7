"""Reading and writing MRC/CCP4 tomograms.

Everything in this module uses one array axis order: a volume is ``(Z, Y, X)`` (sections, rows,
columns of a standard ``mapc/mapr/maps = 1, 2, 3`` file); voxel sizes and origins are in ångström
and ordered ``(z, y, x)``; the affine maps a voxel index ``(z, y, x)`` to ångström,
``position = origin + index * voxel_size`` (the MRC2014 / ChimeraX reading of the ORIGIN field).

- :func:`read_mrc` returns a read-only memory map for uncompressed files, so slicing a slab reads
  only that slab from disk; ``.gz`` / ``.bz2`` files are decompressed into memory.
- :class:`MRCReader` / :class:`MRCWriter` plug the same code into MONAI's ``LoadImage`` / ``SaveImage``.
- :func:`save_mrc` and :func:`create_mrc` are the single implementation of (atomic) MRC writing.

See ``docs/io.md`` for the formats handled and the IMOD unsigned-byte rules.
"""

from __future__ import annotations

import bz2
import contextlib
import errno
import gzip
import logging
import mmap
import os
import re
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import mrcfile
import numpy as np
from monai.config import DtypeLike, NdarrayOrTensor, PathLike
from monai.data import ImageReader, ImageWriter
from monai.data.utils import is_supported_format
from monai.utils import MetaKeys, convert_data_type, ensure_tuple

from cryoet_monai.io.atomic import atomic_path

__all__ = [
    "MRC_SUFFIXES",
    "MRCFormatError",
    "MRCTruncatedError",
    "MRCWriteError",
    "MRCOutputExistsError",
    "MRCOutputFolderError",
    "MRCReader",
    "MRCWriter",
    "create_mrc",
    "is_mrc_path",
    "mrc_mode_for",
    "mrc_stem",
    "read_mrc",
    "release_pages",
    "release_planes",
    "remove_stale_temporaries",
    "save_mrc",
]

logger = logging.getLogger(__name__)

#: file-name suffixes handled by :class:`MRCReader` (each also with ``.gz`` / ``.bz2``)
MRC_SUFFIXES: tuple[str, ...] = ("mrc", "rec", "map", "st", "ali", "mrcs", "ccp4")

IMOD_STAMP = 1146047817  # "IMOD" stamp at header byte 152 (IMOD's mrc_header documentation)
IMOD_FLAG_SIGNED_BYTES = 1  # imodFlags bit 0 set: mode-0 bytes are SIGNED; clear: unsigned
_HEADER_BYTES = 1024
_EXTRA2_OFFSET = 112  # byte offset of mrcfile's ``extra2`` field in the 1024-byte header
_STATS_AT_ONCE = 1 << 24  # voxels; header statistics of bigger arrays go plane by plane
_SUPPORTED_MODES = {0: "int8/uint8", 1: "int16", 2: "float32", 6: "uint16", 12: "float16", 101: "4-bit"}


class MRCFormatError(ValueError):
    """A file is not a usable MRC volume; the message names the file and the problem."""


class MRCTruncatedError(MRCFormatError, OSError):
    """The file is empty, truncated or cannot be read (also an ``OSError``)."""


class MRCWriteError(OSError):
    """An MRC output cannot be written where asked; the message names the file and the problem."""


class MRCOutputExistsError(MRCWriteError, FileExistsError):
    """The output file exists and ``overwrite=False``."""


class MRCOutputFolderError(MRCWriteError, FileNotFoundError):
    """The output file's folder does not exist."""


_COMPRESSED_SUFFIXES = (".gz", ".bz2")


def _split_mrc_name(path: PathLike) -> tuple[str, str | None]:
    """``(stem, mrc suffix or None)`` of a file name, after dropping a ``.gz`` / ``.bz2`` suffix."""
    name = Path(path).name
    for comp in _COMPRESSED_SUFFIXES:
        if name.lower().endswith(comp):
            name = name[: -len(comp)]
            break
    stem, dot, suffix = name.rpartition(".")
    if dot and stem and suffix.lower() in MRC_SUFFIXES:
        return stem, suffix
    return name, None


def is_mrc_path(path: PathLike) -> bool:
    """Whether ``path`` has an MRC file name (:data:`MRC_SUFFIXES`, optionally + ``.gz`` / ``.bz2``).

    Only the name is checked, not the file.
    """
    return _split_mrc_name(path)[1] is not None


def mrc_stem(path: PathLike) -> str:
    """``/data/tomo_01.rec.bz2`` -> ``tomo_01``: the file name without ``.gz``/``.bz2`` and its MRC suffix.

    A name without an MRC suffix loses its last suffix (``a.tif`` -> ``a``).
    """
    stem, suffix = _split_mrc_name(path)
    return stem if suffix is not None else Path(stem).stem


# ----------------------------------------------------------------------------------------------
# reading


def _compression(path: Path) -> str | None:
    """Compression detected from the magic bytes (the suffix may lie)."""
    with open(path, "rb") as f:
        magic = f.read(3)
    if magic[:2] == b"\x1f\x8b":
        return "gzip"
    if magic == b"BZh":
        return "bzip2"
    return None


def _read_raw_header(path: Path, compression: str | None) -> bytes:
    opener = {"gzip": gzip.open, "bzip2": bz2.open}.get(compression or "", open)
    try:
        with opener(path, "rb") as f:
            return f.read(_HEADER_BYTES)
    except (OSError, EOFError) as e:  # corrupt gzip/bz2 stream
        raise MRCTruncatedError(f"{path}: cannot read the MRC header ({e})") from e


def _sniff_header(raw: bytes, path: Path) -> None:
    """Refuse files that cannot be MRC in either byte order, before mrcfile guesses at them."""
    has_map_id = raw[208:212] == b"MAP "
    for order in "<>":
        nx, ny, nz, mode = (int(v) for v in np.frombuffer(raw[:16], dtype=f"{order}i4"))
        if 0 < nx < 2**24 and 0 < ny < 2**24 and 0 < nz < 2**31 and 0 <= mode < 200:
            return
    if has_map_id:
        return  # let the detailed checks name the bad field
    raise MRCFormatError(f"{path}: not an MRC file (no 'MAP ' identifier and no plausible nx/ny/nz/mode)")


def _header_int(header: np.recarray, byte_offset: int) -> int:
    """An int32 stored in ``extra2`` at an absolute header byte offset, in the file's byte order."""
    raw = header.extra2.tobytes()[byte_offset - _EXTRA2_OFFSET : byte_offset - _EXTRA2_OFFSET + 4]
    return int(np.frombuffer(raw, dtype=header.nx.dtype)[0])


def _unsigned_bytes(header: np.recarray, has_map_id: bool) -> tuple[bool, str]:
    """Decide whether mode-0 bytes are unsigned, and why.

    IMOD (``mrc_header`` documentation): with ``imodStamp == 1146047817``, ``imodFlags`` bit 0 set
    means the bytes are *signed*, clear means unsigned. Old IMOD/SerialEM headers (no ``MAP `` word)
    store unsigned bytes. Without either, the MRC2014 default (signed) holds unless the header's
    dmin/dmax can only describe unsigned data.
    """
    dmin, dmax = float(header.dmin), float(header.dmax)
    if _header_int(header, 152) == IMOD_STAMP:
        signed = bool(_header_int(header, 156) & IMOD_FLAG_SIGNED_BYTES)
        return (not signed), f"IMOD stamp with imodFlags bit 0 {'set' if signed else 'clear'}"
    if dmin <= dmax and dmax > 127 and dmin >= 0:
        return True, f"header dmin/dmax {dmin:g}/{dmax:g} only fit unsigned bytes"
    if dmin <= dmax and dmin < 0:
        return False, f"header dmin {dmin:g} is negative"
    if not has_map_id:
        return True, "old-style IMOD/SerialEM header (no 'MAP ' word)"
    return False, "MRC2014 default (signed bytes)"


def _axis_permutation(header: np.recarray, path: Path) -> tuple[int, int, int] | None:
    """Transpose taking the file's (section, row, column) data to (z, y, x); None if identity."""
    mapcrs = (int(header.mapc), int(header.mapr), int(header.maps))
    if mapcrs == (0, 0, 0):
        logger.warning("%s: mapc/mapr/maps are 0; assuming the standard order 1, 2, 3", path)
        return None
    if sorted(mapcrs) != [1, 2, 3]:
        raise MRCFormatError(f"{path}: mapc/mapr/maps = {mapcrs} is not a permutation of 1, 2, 3")
    # array axis 0 holds sections (maps), 1 rows (mapr), 2 columns (mapc); 1=X, 2=Y, 3=Z
    file_axes = (mapcrs[2], mapcrs[1], mapcrs[0])
    perm = tuple(file_axes.index(axis) for axis in (3, 2, 1))
    return None if perm == (0, 1, 2) else perm  # type: ignore[return-value]


def _voxel_size(header: np.recarray, path: Path, image_2d: bool) -> tuple[float, float, float]:
    """(z, y, x) Å from cella / mx,my,mz; suspicious values are logged, never fatal."""
    sizes = []
    for cell, m in ((header.cella.z, header.mz), (header.cella.y, header.my), (header.cella.x, header.mx)):
        sizes.append(float(cell) / int(m) if int(m) > 0 else 0.0)
    used = sizes[1:] if image_2d else sizes  # a single image has no meaningful z spacing
    if any(not np.isfinite(v) or v <= 0 for v in used):
        logger.warning("%s: voxel size %s Å (z, y, x) in the header is zero or negative", path, sizes)
    elif any(abs(v - 1.0) < 1e-6 for v in used):
        logger.warning("%s: voxel size %s Å (z, y, x) is exactly 1.0, often an unset header", path, sizes)
    return tuple(sizes)  # type: ignore[return-value]


def _origin(header: np.recarray, voxel_size: tuple[float, float, float]) -> tuple[float, float, float]:
    """(z, y, x) Å of voxel 0: the ORIGIN field, or, when it is all zero, the crystallographic
    nxstart/nystart/nzstart (columns/rows/sections, mapped through mapc/mapr/maps) times the voxel size,
    as ChimeraX does."""
    xyz = tuple(float(v) for v in header.origin.item())
    if any(xyz):
        return xyz[2], xyz[1], xyz[0]
    starts = {1: 0, 2: 0, 3: 0}  # axis label (1 = X, 2 = Y, 3 = Z) -> first index
    labels = (int(header.mapc), int(header.mapr), int(header.maps))
    if sorted(labels) != [1, 2, 3]:
        labels = (1, 2, 3)
    for label, start in zip(labels, (int(header.nxstart), int(header.nystart), int(header.nzstart))):
        starts[label] = start
    return starts[3] * voxel_size[0], starts[2] * voxel_size[1], starts[1] * voxel_size[2]


def _plain_header(header: np.recarray, imod_stamp: int, imod_flags: int) -> dict[str, Any]:
    """The raw header fields as plain Python values (MONAI metadata must stay collatable)."""
    labels = [
        bytes(lbl).decode("ascii", "replace").rstrip(" \x00") for lbl in header.label[: int(header.nlabl)]
    ]
    out: dict[str, Any] = {k: int(header[k]) for k in (
        "nx", "ny", "nz", "mode", "nxstart", "nystart", "nzstart", "mx", "my", "mz",
        "mapc", "mapr", "maps", "ispg", "nsymbt", "nversion", "nlabl",
    )}  # fmt: skip
    out.update({k: float(header[k]) for k in ("dmin", "dmax", "dmean", "rms")})
    out["cella"] = tuple(float(v) for v in header.cella.item())
    out["cellb"] = tuple(float(v) for v in header.cellb.item())
    out["origin"] = tuple(float(v) for v in header.origin.item())
    out["exttyp"] = bytes(header.exttyp).decode("ascii", "replace").rstrip(" \x00")
    out["map"] = bytes(header.map).decode("ascii", "replace")
    out["machst"] = bytes(header.machst).hex()
    out["imod_stamp"] = imod_stamp
    out["imod_flags"] = imod_flags
    out["labels"] = "\n".join(labels)  # one string: label counts differ between files
    return out


def _read_mode101(path: Path, header: np.recarray, compression: str | None) -> np.ndarray:
    """Unpack IMOD mode 101 (4-bit, two values per byte, low nibble first, rows padded to bytes)."""
    nx, ny, nz = int(header.nx), int(header.ny), int(header.nz)
    row = (nx + 1) // 2
    nbytes = row * ny * nz
    start = _HEADER_BYTES + int(header.nsymbt)
    opener = {"gzip": gzip.open, "bzip2": bz2.open}.get(compression or "", open)
    with opener(path, "rb") as f:
        f.seek(start)
        raw = np.frombuffer(f.read(nbytes), dtype=np.uint8)
    if raw.size < nbytes:
        raise MRCTruncatedError(
            f"{path}: truncated data, expected {nbytes} bytes of mode-101 data, found {raw.size}"
        )
    packed = raw.reshape(nz, ny, row)
    out = np.empty((nz, ny, 2 * row), dtype=np.uint8)
    out[..., 0::2] = packed & 0x0F
    out[..., 1::2] = packed >> 4
    return out[..., :nx]


def read_mrc(path: PathLike, mmap: bool = True, allow_2d: bool = False) -> tuple[np.ndarray, dict[str, Any]]:
    """Read an MRC/CCP4 file (optionally ``.gz`` / ``.bz2``) as a ``(Z, Y, X)`` array.

    Args:
        path: the file.
        mmap: memory-map uncompressed files (a read-only ``np.memmap``; slicing a slab reads only
            that slab). Compressed files, and ``mmap=False``, are read into memory.
        allow_2d: accept single images (``nz == 1``), returned as ``(Y, X)``; otherwise they are
            refused with :class:`MRCFormatError`.

    Returns:
        ``(array, meta)``. ``array`` is ``(Z, Y, X)`` (``(C, Z, Y, X)`` for an MRC volume stack,
        ``(Y, X)`` for an allowed 2-D image) in the file's own dtype (``uint8`` for IMOD unsigned
        bytes; non-native byte order is kept for memory maps, ``astype`` converts it). ``meta`` has
        ``voxel_size`` and ``origin`` (``(z, y, x)`` Å), ``affine`` (index ``(z, y, x)`` -> Å),
        ``spatial_shape``, ``filename_or_obj``, ``original_channel_dim`` and ``mrc_header`` (raw header
        fields as plain Python values).

    Raises:
        MRCFormatError: not an MRC file, unsupported mode, bad axis order, 2-D image when not allowed.
        MRCTruncatedError: missing, empty or truncated file (also an ``OSError``).
    """
    path = Path(path)
    if not path.is_file():
        raise MRCTruncatedError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise MRCTruncatedError(f"{path}: empty file")
    compression = _compression(path)
    raw_header = _read_raw_header(path, compression)
    if len(raw_header) < _HEADER_BYTES:
        raise MRCTruncatedError(
            f"{path}: truncated header, {len(raw_header)} bytes "
            f"where an MRC file has at least {_HEADER_BYTES}"
        )

    _sniff_header(raw_header, path)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            if mmap and compression is None:
                mrc = mrcfile.mmap(path, mode="r", permissive=True)
            else:
                mrc = mrcfile.open(path, mode="r", permissive=True)
        except (EOFError, OSError) as e:  # cut-off gzip/bz2 stream, I/O error
            raise MRCTruncatedError(f"{path}: truncated or unreadable data ({e})") from e
        except (ValueError, TypeError, OverflowError, MemoryError) as e:
            raise MRCFormatError(f"{path}: not a readable MRC file ({e})") from e
    messages = [str(w.message) for w in caught]
    try:
        header = mrc.header
        has_map_id = bytes(header.map) == b"MAP "
        mode = int(header.mode)
        dims = (int(header.nx), int(header.ny), int(header.nz))
        if not has_map_id and (mode not in _SUPPORTED_MODES or min(dims) < 1):
            raise MRCFormatError(
                f"{path}: not an MRC file (no 'MAP ' identifier; "
                f"mode {mode}, nx/ny/nz {dims} are implausible)"
            )
        if min(dims) < 1:
            raise MRCFormatError(f"{path}: invalid dimensions nx/ny/nz = {dims}")
        if mode not in _SUPPORTED_MODES:
            raise MRCFormatError(
                f"{path}: unsupported MRC mode {mode} (supported: "
                + ", ".join(f"{k} {v}" for k, v in _SUPPORTED_MODES.items())
                + ")"
            )
        if not has_map_id:
            logger.warning("%s: no 'MAP ' identifier (old-style header); opened permissively", path)
        if int(header.nsymbt) < 0:
            raise MRCFormatError(f"{path}: negative extended header size nsymbt = {int(header.nsymbt)}")
        if dims[2] == 1 and not allow_2d:
            raise MRCFormatError(
                f"{path}: a 2-D image (nz = 1, {dims[1]} x {dims[0]}) where a volume was expected "
                "(pass allow_2d=True to read it)"
            )

        if mode == 101:
            data = _read_mode101(path, header, compression)
            if dims[2] == 1:
                data = data[0]
        else:
            data = mrc.data
            if data is None:
                expected = (
                    int(np.prod(dims, dtype=np.int64))
                    * np.dtype(mrcfile.utils.dtype_from_mode(mode)).itemsize
                )
                detail = "; ".join(m for m in messages if "xpected" in m or "memmap" in m) or "no data block"
                raise MRCTruncatedError(f"{path}: truncated data, {expected} data bytes expected ({detail})")
        imod_stamp, imod_flags = _header_int(header, 152), _header_int(header, 156)
        unsigned_reason = ""
        if mode == 0:
            unsigned, unsigned_reason = _unsigned_bytes(header, has_map_id)
            if unsigned:
                data = data.view(np.uint8)

        perm = _axis_permutation(header, path)
        if perm is not None:
            if data.ndim == 2:  # rows, columns: the higher axis label (Y over X) goes first
                data = data.T if int(header.mapr) < int(header.mapc) else data
            else:
                lead = tuple(range(data.ndim - 3))
                data = data.transpose(*lead, *(len(lead) + p for p in perm))
        if data.flags.writeable:  # mode 101 unpacking: same read-only contract as mrcfile's arrays
            data.flags.writeable = False

        voxel_size = _voxel_size(header, path, image_2d=data.ndim == 2)
        origin = _origin(header, voxel_size)
        mrc_header = _plain_header(header, imod_stamp, imod_flags)
    finally:
        # a memmap keeps its own reference to the mapping: closing only drops mrcfile's handle
        mrc.close()

    spatial = tuple(data.shape[-2:]) if data.ndim == 2 else tuple(data.shape[-3:])
    sizes = voxel_size[1:] if data.ndim == 2 else voxel_size
    offsets = origin[1:] if data.ndim == 2 else origin
    affine = np.eye(len(spatial) + 1, dtype=np.float64)
    affine[: len(spatial), : len(spatial)] = np.diag(sizes)
    affine[: len(spatial), -1] = offsets
    meta: dict[str, Any] = {
        "voxel_size": voxel_size,
        "origin": origin,
        "affine": affine,
        "original_affine": affine.copy(),
        # NIfTI layout, as MONAI transforms expect: pixdim[0] is qfac, pixdim[1:1+ndim] the spacing
        "pixdim": np.concatenate([[1.0], sizes, np.ones(7 - len(sizes))]),
        "spatial_shape": np.asarray(spatial),
        MetaKeys.ORIGINAL_CHANNEL_DIM: 0 if data.ndim == 4 else "no_channel",
        "filename_or_obj": str(path),
        "mrc_mode": mode,
        "mrc_unsigned_bytes": bool(mode == 0 and data.dtype == np.uint8),
        "mrc_unsigned_reason": unsigned_reason,
        "mrc_header": mrc_header,
    }
    return data, meta


# ----------------------------------------------------------------------------------------------
# MONAI reader


class _DeferredError:
    """Holds our exception so that ``get_data`` raises it past ``LoadImage``'s reader fallback."""

    def __init__(self, error: Exception):
        self.error = error


class MRCReader(ImageReader):
    """MONAI :class:`~monai.data.ImageReader` for MRC/CCP4 tomograms.

    ``LoadImage(reader=MRCReader())`` / ``LoadImaged(keys, reader=MRCReader)`` /
    ``"reader": "cryoet_monai.MRCReader"`` in a bundle config. The loaded array is ``(Z, Y, X)``
    (``original_channel_dim`` is ``"no_channel"``; ``EnsureChannelFirstd`` makes it ``(1, Z, Y, X)``);
    a list of files is stacked as channels. Metadata: see :func:`read_mrc`.

    Errors for files with an MRC suffix are raised from :meth:`get_data`, which ``LoadImage`` does not
    catch, so the caller sees our :class:`MRCFormatError` instead of "cannot find a suitable reader".

    Args:
        allow_2d: accept single images (``nz == 1``) as ``(Y, X)``; refused by default.
        dtype: optional dtype to convert the data to (e.g. ``np.float32``); default keeps the file's
            dtype (``uint8`` for unsigned bytes), made native-endian.
    """

    def __init__(self, allow_2d: bool = False, dtype: DtypeLike | None = None):
        super().__init__()
        self.allow_2d = allow_2d
        self.dtype = dtype

    def verify_suffix(self, filename: Sequence[PathLike] | PathLike) -> bool:
        """Whether all the file names end in an MRC suffix (optionally ``.gz`` / ``.bz2``)."""
        suffixes = [*MRC_SUFFIXES, *(f"{s}.gz" for s in MRC_SUFFIXES), *(f"{s}.bz2" for s in MRC_SUFFIXES)]
        return is_supported_format(filename, suffixes)

    def read(self, data: Sequence[PathLike] | PathLike, **kwargs):
        """Open each file with :func:`read_mrc` (memory-mapped when uncompressed)."""
        images: list = []
        for name in ensure_tuple(data):
            try:
                images.append(read_mrc(name, mmap=True, allow_2d=kwargs.get("allow_2d", self.allow_2d)))
            except MRCFormatError as e:
                if not self.verify_suffix(name):
                    raise  # not ours by name either: let LoadImage try its other readers
                images.append(_DeferredError(e))
        return images if len(images) > 1 else images[0]

    def get_data(self, img) -> tuple[np.ndarray, dict]:
        """The ``(Z, Y, X)`` array (channels stacked first for several files) and its metadata."""
        items = img if isinstance(img, list) else [img]
        arrays, meta = [], {}
        for item in items:
            if isinstance(item, _DeferredError):
                raise item.error
            array, item_meta = item
            dtype = np.dtype(self.dtype) if self.dtype is not None else array.dtype.newbyteorder("=")
            arrays.append(np.array(array, dtype=dtype, copy=True))  # a writable copy in RAM for torch
            if not meta:
                meta = dict(item_meta)
        if len(arrays) == 1:
            return arrays[0], meta
        shapes = {a.shape[1:] if meta[MetaKeys.ORIGINAL_CHANNEL_DIM] == 0 else a.shape for a in arrays}
        if len(shapes) > 1:
            names = ", ".join(str(i[1]["filename_or_obj"]) for i in items)
            raise MRCFormatError(
                f"{names}: cannot stack files of different shapes {sorted(shapes)} as channels"
            )
        if meta[MetaKeys.ORIGINAL_CHANNEL_DIM] == 0:  # volume stacks: concatenate their channels
            return np.concatenate(arrays, axis=0), meta
        meta[MetaKeys.ORIGINAL_CHANNEL_DIM] = 0
        return np.stack(arrays, axis=0), meta


# ----------------------------------------------------------------------------------------------
# writing


def mrc_mode_for(
    array: np.ndarray, name: PathLike = "<array>", imod_unsigned: bool = False
) -> tuple[int, np.dtype, bool]:
    """MRC mode, on-disk numpy dtype and 'IMOD unsigned bytes' flag for storing ``array``.

    float16 -> mode 12; other floats -> mode 2 (float32); int8 -> 0; int16 -> 1; uint16 -> 6.
    uint8 / bool -> mode 0 when all values are <= 127 (the same bytes signed or unsigned, so every
    MRC reader agrees), else mode 6 (uint16) — or, with ``imod_unsigned=True``, mode 0 flagged as
    unsigned bytes the IMOD way (IMOD/ChimeraX/this library read it right; ``mrcfile`` sees signed
    bytes). Other integer dtypes (e.g. int64 from ``argmax``) take the smallest mode holding their range.
    """
    dtype = array.dtype
    if dtype == np.float16:
        return 12, np.dtype(np.float16), False
    if np.issubdtype(dtype, np.floating):
        return 2, np.dtype(np.float32), False
    if dtype == np.int8:
        return 0, np.dtype(np.int8), False
    if dtype == np.int16:
        return 1, np.dtype(np.int16), False
    if dtype == np.uint16:
        return 6, np.dtype(np.uint16), False
    if dtype == np.bool_ or np.issubdtype(dtype, np.integer):
        lo, hi = (int(array.min()), int(array.max())) if array.size else (0, 0)
        if lo >= 0 and hi <= 127:
            return 0, np.dtype(np.int8), False
        if lo >= 0 and hi <= 255 and imod_unsigned:
            return 0, np.dtype(np.int8), True
        if lo >= -128 and hi <= 127:
            return 0, np.dtype(np.int8), False
        if lo >= 0 and hi <= 65535:
            return 6, np.dtype(np.uint16), False
        if lo >= -32768 and hi <= 32767:
            return 1, np.dtype(np.int16), False
        raise MRCFormatError(f"{name}: integer values {lo}..{hi} do not fit an MRC integer mode")
    raise MRCFormatError(f"{name}: cannot store dtype {dtype} in an MRC file")


def _mode_dtype(dtype: DtypeLike, path: Path) -> tuple[int, np.dtype, bool]:
    """Mode for a streamed array of ``dtype``: uint8/bool -> mode 0 (flagged unsigned if > 127 at the end)."""
    dt = np.dtype(dtype)
    if dt == np.uint8 or dt == np.bool_:
        return 0, np.dtype(np.int8), True
    if np.issubdtype(dt, np.integer) and dt.itemsize > 2:
        raise MRCFormatError(f"{path}: create_mrc cannot stream {dt}; use uint8, int8, int16 or uint16")
    return mrc_mode_for(np.zeros(0, dtype=dt), path)


def _xyz(value: float | Sequence[float], what: str, path: Path) -> tuple[float, float, float]:
    """(z, y, x) -> (x, y, z) as the MRC header stores them."""
    values = tuple(float(v) for v in ensure_tuple(value))
    if len(values) == 1:
        values = values * 3
    if len(values) != 3:
        raise MRCFormatError(f"{path}: {what} must be one number or (z, y, x), got {value!r}")
    return values[2], values[1], values[0]


def _finish_header(
    mrc: mrcfile.mrcfile.MrcFile,
    values: np.ndarray,
    voxel_size: tuple[float, float, float],
    origin: tuple[float, float, float],
    unsigned: bool,
    path: Path,
) -> None:
    """Voxel size, origin, statistics (from ``values``, the logical data) and the IMOD byte flag."""
    mrc.voxel_size = voxel_size  # (x, y, z); sets cella from mx/my/mz
    mrc.header.origin = origin
    if values.size:
        if values.size <= _STATS_AT_ONCE:
            if np.issubdtype(values.dtype, np.floating) and not np.isfinite(values).all():
                raise MRCFormatError(f"{path}: data contain NaN or infinite values")
            as64 = values.astype(np.float64, copy=False)
            mrc.header.dmin, mrc.header.dmax = float(as64.min()), float(as64.max())
            mrc.header.dmean = float(as64.mean())
            mrc.header.rms = float(as64.std())
        else:  # big volumes: plane by plane in float64 to bound memory
            _stats_by_plane(mrc.header, values, path)
    else:
        mrc.reset_header_stats()
    if unsigned and float(mrc.header.dmax) > 127:
        # bytes 128..255: flag them unsigned the IMOD way (stamp + imodFlags bit 0 clear)
        ext = bytearray(mrc.header.extra2.tobytes())
        dt = mrc.header.nx.dtype
        ext[152 - _EXTRA2_OFFSET : 156 - _EXTRA2_OFFSET] = np.array(IMOD_STAMP, dtype=dt).tobytes()
        ext[156 - _EXTRA2_OFFSET : 160 - _EXTRA2_OFFSET] = np.array(0, dtype=dt).tobytes()
        mrc.header.extra2 = bytes(ext)
        logger.info("%s: mode-0 bytes above 127 stored as IMOD unsigned bytes", path)


def _stats_by_plane(header: np.recarray, values: np.ndarray, path: Path) -> None:
    planes = values.reshape(-1, *values.shape[-2:])
    lo, hi, total, total_sq = np.inf, -np.inf, 0.0, 0.0
    for plane in planes:
        p = plane.astype(np.float64)
        release_pages(plane)  # a pass over a big memory-mapped output must not keep it resident
        if not np.isfinite(p).all():
            raise MRCFormatError(f"{path}: data contain NaN or infinite values")
        lo, hi = min(lo, float(p.min())), max(hi, float(p.max()))
        total += float(p.sum())
        total_sq += float(np.square(p).sum())
    n = values.size
    mean = total / n
    header.dmin, header.dmax, header.dmean = lo, hi, mean
    header.rms = float(np.sqrt(max(total_sq / n - mean * mean, 0.0)))


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


def release_planes(volume: Any, lo: int, hi: int) -> None:
    """:func:`release_pages` of planes ``[lo, hi)`` of a ``(Z, Y, X)`` volume that was read.

    Only numpy arrays are sliced: indexing a lazy reader (an OME-Zarr ``ZarrVolume``) would read and
    decode the planes once more, and it keeps no pages to drop.
    """
    if isinstance(volume, np.ndarray):
        release_pages(volume[lo:hi])


# the names of cryoet_monai.io.atomic.temporary_path, which every atomic writer of the package uses
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)-[0-9a-f]{8}\.tmp$")


def remove_stale_temporaries(folder: PathLike, min_age_s: float = 120.0) -> list[Path]:
    """Delete the temporary files that writers of this module left in ``folder`` when they were
    killed (SIGKILL, power loss): ``.<name>.<pid>-<id>.tmp`` whose process no longer exists on this
    machine and which were last modified more than ``min_age_s`` seconds ago. Another process's
    live file is never touched. Returns the removed paths."""
    removed: list[Path] = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    now = time.time()
    for entry in folder.iterdir():
        m = _TEMPORARY.match(entry.name)
        if m is None or not entry.is_file():
            continue
        pid = int(m.group("pid"))
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
            continue  # its writer is alive
        except ProcessLookupError:
            pass
        except PermissionError:
            continue  # alive, another user's
        try:
            if now - entry.stat().st_mtime < min_age_s:
                continue
            entry.unlink()
            removed.append(entry)
        except FileNotFoundError:
            pass
    return removed


def _reserve(path: Path, target: Path) -> None:
    """Allocate the whole file now, so that a full disk is an ``OSError`` here and not a SIGBUS
    later, when a page of the memory map is written with no space behind it."""
    size = path.stat().st_size
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as err:
        if err.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            return  # the filesystem cannot reserve space; nothing better to do
        raise (_space_error(err, target, size) or err) from err
    finally:
        os.close(fd)


def _space_error(err: OSError, target: Path, size: int) -> MRCWriteError | None:
    """Our one-line error for a full disk, a quota or a file-size limit; None for other errors."""
    if err.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return None
    out = MRCWriteError(
        f"{target}: not enough space in {target.parent} for {size / 2**20:.1f} MiB ({err.strerror})"
    )
    out.__cause__ = err
    return out


def _compression_for(path: Path) -> str | None:
    suffix = path.suffix.lower()
    return {".gz": "gzip", ".bz2": "bzip2"}.get(suffix)


def _check_target(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise MRCOutputExistsError(f"{path}: file exists (overwrite=False)")
    if not path.parent.is_dir():
        raise MRCOutputFolderError(f"{path}: output folder {path.parent} does not exist")


def _check_shape(shape: Sequence[int], path: Path) -> tuple[int, ...]:
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (2, 3, 4) or min(shape) < 1:
        raise MRCFormatError(
            f"{path}: cannot write an array of shape {shape} (need (Y, X), (Z, Y, X) or (C, Z, Y, X))"
        )
    return shape


def save_mrc(
    path: PathLike,
    data: NdarrayOrTensor,
    voxel_size: float | Sequence[float] = 1.0,
    origin: Sequence[float] = (0.0, 0.0, 0.0),
    overwrite: bool = True,
    dtype: DtypeLike | None = None,
    imod_unsigned: bool = False,
) -> Path:
    """Write ``data`` to an MRC file atomically (temporary file in the same folder, then ``os.replace``).

    Args:
        path: target file; a ``.gz`` / ``.bz2`` suffix writes a compressed file.
        data: ``(Z, Y, X)`` volume (``(Y, X)`` image, or ``(C, Z, Y, X)`` written as an MRC volume stack),
            numpy array or tensor. Modes: see :func:`mrc_mode_for` (uint8 labels -> mode 0,
            float16 -> mode 12, float32 -> mode 2).
        voxel_size: Å, one number or ``(z, y, x)``.
        origin: Å, ``(z, y, x)``, position of voxel ``(0, 0, 0)``.
        overwrite: replace an existing file.
        dtype: convert to this dtype first (e.g. ``np.float16``).
        imod_unsigned: store uint8 values 128..255 as IMOD unsigned mode-0 bytes instead of mode 6.

    Returns:
        the written path. On any error nothing is left under ``path`` (an existing file is kept).
    """
    path = Path(path)
    array = convert_data_type(data, np.ndarray)[0]
    if dtype is not None:
        array = array.astype(dtype, copy=False)
    _check_shape(array.shape, path)
    _check_target(path, overwrite)
    mode, disk_dtype, unsigned = mrc_mode_for(array, path, imod_unsigned=imod_unsigned)
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        raise MRCFormatError(f"{path}: data contain NaN or infinite values")
    if unsigned:
        logical = array.astype(np.uint8, copy=False)
        disk = logical.view(np.int8)
    else:
        disk = array.astype(disk_dtype.newbyteorder("="), copy=False)
        logical = disk
    vs, org = _xyz(voxel_size, "voxel_size", path), _xyz(origin, "origin", path)
    compression = _compression_for(path)  # from the final name: the temporary ends in .tmp
    with atomic_path(path) as tmp, mrcfile.new(tmp, compression=compression, overwrite=True) as mrc:
        mrc.set_data(np.ascontiguousarray(disk))
        _finish_header(mrc, logical, vs, org, unsigned, path)
    return path


@contextlib.contextmanager
def create_mrc(
    path: PathLike,
    shape: Sequence[int],
    dtype: DtypeLike = np.float32,
    voxel_size: float | Sequence[float] = 1.0,
    origin: Sequence[float] = (0.0, 0.0, 0.0),
    overwrite: bool = True,
    fill: float | None = 0,
) -> Iterator[np.ndarray]:
    """Create an MRC file and yield its writable memory-mapped array, for streaming output.

    The array is ``shape``: ``(Z, Y, X)``, or ``(C, Z, Y, X)`` stored as an MRC2014 *volume stack*
    (``ispg`` 401, ``nz = C * Z``, ``mz = Z``), which :func:`read_mrc` returns as ``(C, Z, Y, X)``.
    It lives in a temporary file in the target folder; on normal exit the header statistics are
    computed (plane by plane), the file is closed and renamed into place; on an exception the
    temporary file is deleted and nothing appears under ``path``. Compressed targets are refused
    (a memory map needs an uncompressed file; use :func:`save_mrc`).

    Example::

        with create_mrc("seg.mrc", (nz, ny, nx), np.uint8, voxel_size=10.0) as out:
            for z0 in range(0, nz, 16):
                out[z0 : z0 + 16] = predict(slab(z0))
    """
    path = Path(path)
    shape = _check_shape(shape, path)
    if _compression_for(path) is not None:
        raise MRCFormatError(f"{path}: create_mrc writes uncompressed files only (use save_mrc for .gz/.bz2)")
    _check_target(path, overwrite)
    mode, disk_dtype, unsigned = _mode_dtype(dtype, path)
    vs, org = _xyz(voxel_size, "voxel_size", path), _xyz(origin, "origin", path)
    with atomic_path(path) as tmp:
        try:
            mrc = mrcfile.new_mmap(tmp, shape, mrc_mode=mode, fill=fill, overwrite=True)
        except PermissionError as err:  # name the folder, not our hidden temporary file
            raise MRCWriteError(f"{path.parent}: cannot write here ({err.strerror})") from err
        except OSError as err:
            size = int(np.prod(shape)) * np.dtype(disk_dtype).itemsize
            raise (_space_error(err, path, size) or err) from err
        try:
            if hasattr(os, "posix_fallocate"):
                _reserve(tmp, path)
            view = mrc.data.view(np.uint8) if unsigned else mrc.data
            yield view
            _finish_header(mrc, view, vs, org, unsigned, path)
            mrc.flush()
        finally:
            mrc.close()


class MRCWriter(ImageWriter):
    """MONAI :class:`~monai.data.ImageWriter` writing MRC files through :func:`save_mrc`.

    Use ``SaveImage(writer=MRCWriter, output_ext=".mrc", output_dtype=np.uint8)`` (labels) or
    ``output_dtype=np.float16`` (probabilities) — note ``SaveImage`` defaults to float32. Voxel size
    and origin come from the input's ``affine`` (index ``(z, y, x)`` -> Å). A single channel is
    written as a ``(Z, Y, X)`` volume, several channels as an MRC volume stack. MRC cannot store
    rotations: an affine with off-diagonal terms is refused; ``resample`` is not supported.
    """

    output_dtype: DtypeLike | None

    def __init__(self, output_dtype: DtypeLike | None = None, **kwargs):
        super().__init__(output_dtype=output_dtype, affine=None, **kwargs)

    def set_data_array(
        self,
        data_array: NdarrayOrTensor,
        channel_dim: int | None = 0,
        squeeze_end_dims: bool = True,
        **kwargs,
    ):
        """Keep the array channel-first ``(C, Z, Y, X)``; a single channel is dropped."""
        array = convert_data_type(data_array, np.ndarray)[0]
        if channel_dim is not None:
            array = np.moveaxis(array, channel_dim, 0)
            if array.shape[0] == 1:
                array = array[0]
        self.data_obj = array

    def set_metadata(self, meta_dict: Mapping | None, resample: bool = False, **options):
        """Take the affine (voxel size, origin) from ``meta_dict``."""
        if resample:
            raise MRCFormatError("MRCWriter: resampling is not supported (SaveImage(resample=False))")
        affine = None if meta_dict is None else meta_dict.get("affine")
        self.affine = None if affine is None else convert_data_type(affine, np.ndarray)[0].astype(np.float64)
        self.filename_or_obj = None if meta_dict is None else meta_dict.get("filename_or_obj")

    def _geometry(self, filename: PathLike) -> tuple[tuple[float, ...], tuple[float, ...]]:
        if self.affine is None:
            return (1.0, 1.0, 1.0), (0.0, 0.0, 0.0)
        r = self.affine.shape[0] - 1
        linear = self.affine[:r, :r]
        if not np.allclose(linear, np.diag(np.diag(linear))):
            raise MRCFormatError(f"{filename}: the affine has rotation/shear terms, which MRC cannot store")
        sizes, offsets = (
            tuple(float(abs(v)) for v in np.diag(linear)),
            tuple(float(v) for v in self.affine[:r, r]),
        )
        if r == 2:  # a 2-D image: no z
            sizes, offsets = (1.0, *sizes), (0.0, *offsets)
        return sizes, offsets

    def write(self, filename: PathLike, verbose: bool = False, **kwargs):
        """Write ``self.data_obj`` atomically with :func:`save_mrc`."""
        super().write(filename, verbose=verbose)
        voxel_size, origin = self._geometry(filename)
        save_mrc(filename, self.data_obj, voxel_size=voxel_size, origin=origin, dtype=self.output_dtype)
