"""MRCReader / read_mrc on real files written with mrcfile, one per format feature, and bad input."""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.transforms import Compose, EnsureChannelFirstd, LoadImage, LoadImaged

from cryoet_monai.io.mrc import IMOD_STAMP, MRCFormatError, MRCReader, MRCTruncatedError, read_mrc

SHAPE = (6, 7, 9)  # (Z, Y, X), all different so that axis mix-ups show
VOXEL = (12.0, 11.0, 10.0)  # (z, y, x) Å


def _volume(dtype, shape=SHAPE) -> np.ndarray:
    rng = np.random.default_rng(7)
    if np.issubdtype(dtype, np.floating):
        return (rng.standard_normal(shape) * 3).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(max(info.min, -1000), min(info.max, 1000), size=shape, endpoint=True).astype(dtype)


def _write(path: Path, data: np.ndarray, voxel=VOXEL, compression=None, **header) -> Path:
    with mrcfile.new(path, compression=compression, overwrite=True) as mrc:
        mrc.set_data(data)
        mrc.voxel_size = voxel[::-1]  # mrcfile wants (x, y, z)
        mrc.header.origin = (1.5, 2.5, 3.5)  # (x, y, z)
        for k, v in header.items():
            setattr(mrc.header, k, v)
    return path


def _set_int(path: Path, offset: int, value: int, dtype: str = "<i4") -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(np.array(value, dtype=dtype).tobytes())


def _load(path: Path, **kwargs):
    return LoadImage(reader=MRCReader(**kwargs), image_only=True)(path)


@pytest.mark.parametrize(
    "dtype, mode", [(np.int8, 0), (np.int16, 1), (np.float32, 2), (np.uint16, 6), (np.float16, 12)]
)
@pytest.mark.parametrize("byteorder", ["<", ">"])
def test_modes_and_endianness(tmp_path, dtype, mode, byteorder):
    ref = _volume(dtype)
    path = _write(tmp_path / "vol.mrc", ref.astype(np.dtype(dtype).newbyteorder(byteorder)))
    with mrcfile.open(path, header_only=True) as mrc:  # the file really has that mode / byte order
        assert int(mrc.header.mode) == mode
        assert mrc.header.mode.dtype.byteorder in ("<", ">", "=")
        big = mrc.header.mode.dtype.byteorder == ">" or (
            mrc.header.mode.dtype.byteorder == "=" and np.little_endian is False
        )
        assert big == (byteorder == ">" and np.dtype(dtype).itemsize > 1)
    img = _load(path)
    assert tuple(img.shape) == SHAPE
    np.testing.assert_array_equal(img.numpy(), ref.astype(np.float32))
    np.testing.assert_allclose(img.pixdim, VOXEL)
    np.testing.assert_allclose(img.affine[:3, 3], (3.5, 2.5, 1.5))
    assert img.meta["original_channel_dim"] == "no_channel"
    assert img.meta["mrc_header"]["mode"] == mode

    data, meta = read_mrc(path)
    assert isinstance(data, np.memmap) and not data.flags.writeable
    assert data.dtype.newbyteorder("=") == np.dtype(dtype).newbyteorder("=")
    np.testing.assert_array_equal(data, ref)
    assert meta["voxel_size"] == pytest.approx(VOXEL)
    assert meta["origin"] == pytest.approx((3.5, 2.5, 1.5))
    affine = [[12, 0, 0, 3.5], [0, 11, 0, 2.5], [0, 0, 10, 1.5], [0, 0, 0, 1]]
    np.testing.assert_allclose(meta["affine"], affine)


@pytest.mark.parametrize(
    "compression, suffix",
    [("gzip", ".mrc.gz"), ("bzip2", ".map.bz2"), ("gzip", ".rec")],  # magic bytes decide
)
def test_compressed(tmp_path, compression, suffix):
    ref = _volume(np.float32)
    path = _write(tmp_path / f"vol{suffix}", ref, compression=compression)
    data, meta = read_mrc(path)
    assert not isinstance(data, np.memmap)  # decompressed into memory
    np.testing.assert_array_equal(data, ref)
    img = LoadImaged("image", reader=MRCReader)({"image": str(path)})["image"]
    np.testing.assert_array_equal(img.numpy(), ref)
    np.testing.assert_allclose(img.pixdim, VOXEL)


@pytest.mark.parametrize(
    "exttyp, nbytes", [(b"FEI1", 768), (b"SERI", 1024 * 3), (b"CCP4", 80), (b"    ", 37)]
)
def test_extended_header_skipped(tmp_path, exttyp, nbytes):
    ref = _volume(np.int16)
    path = tmp_path / "ext.st"
    with mrcfile.new(path) as mrc:
        mrc.set_data(ref)
        ext = np.frombuffer(np.random.default_rng(1).bytes(nbytes), dtype="V1")
        mrc.set_extended_header(ext)
        mrc.header.exttyp = exttyp
        mrc.voxel_size = 4.0
    data, meta = read_mrc(path)
    np.testing.assert_array_equal(data, ref)
    assert meta["mrc_header"]["nsymbt"] == nbytes
    assert meta["mrc_header"]["exttyp"] == exttyp.decode().strip()
    np.testing.assert_array_equal(_load(path).numpy(), ref)


def test_imod_unsigned_bytes(tmp_path):
    ref = np.arange(np.prod(SHAPE), dtype=np.int64).reshape(SHAPE) % 256  # 0..255
    raw = ref.astype(np.uint8).view(np.int8)
    # IMOD stamp, imodFlags bit 0 clear: unsigned (IMOD's definition: bit 0 set = SIGNED)
    path = _write(tmp_path / "unsigned.rec", raw, dmin=0.0, dmax=255.0)
    _set_int(path, 152, IMOD_STAMP)
    _set_int(path, 156, 0)
    data, meta = read_mrc(path)
    assert data.dtype == np.uint8 and meta["mrc_unsigned_bytes"]
    np.testing.assert_array_equal(data, ref)
    assert meta["mrc_header"]["imod_stamp"] == IMOD_STAMP
    np.testing.assert_array_equal(_load(path).numpy(), ref)

    # same bytes, imodFlags bit 0 set: signed, whatever dmin/dmax say
    _set_int(path, 156, 1)
    data, meta = read_mrc(path)
    assert data.dtype == np.int8 and not meta["mrc_unsigned_bytes"]
    np.testing.assert_array_equal(data, raw)


def test_old_style_header_unsigned_with_warning(tmp_path, caplog):
    ref = np.random.default_rng(3).integers(141, 163, size=SHAPE, endpoint=True).astype(np.uint8)
    path = _write(tmp_path / "old.rec", ref.view(np.int8), dmin=141.0, dmax=163.0)
    with open(path, "r+b") as f:  # no "MAP " word, zero machine stamp (old IMOD/SerialEM)
        f.seek(208)
        f.write(b"\x00" * 8)
    with caplog.at_level(logging.WARNING, logger="cryoet_monai.io.mrc"):
        data, meta = read_mrc(path)
    assert "no 'MAP ' identifier" in caplog.text and "old.rec" in caplog.text
    assert data.dtype == np.uint8 and (data.min(), data.max()) == (141, 163)
    np.testing.assert_array_equal(data, ref)


def test_signed_bytes_default(tmp_path):
    ref = np.array([-128, -1, 0, 1, 127] * 4, dtype=np.int8).reshape(2, 2, 5)
    path = _write(tmp_path / "signed.mrc", ref)
    data, meta = read_mrc(path)
    assert data.dtype == np.int8
    np.testing.assert_array_equal(data, ref)


@pytest.mark.parametrize("mapcrs", list(itertools.permutations((1, 2, 3))))
def test_axis_order(tmp_path, mapcrs):
    ref = np.arange(np.prod(SHAPE), dtype=np.float32).reshape(SHAPE)  # (Z, Y, X)
    mapc, mapr, maps = mapcrs
    # file array axes are (sections, rows, columns) = (maps, mapr, mapc); label 1=X (ref axis 2), 3=Z (axis 0)
    file_data = np.ascontiguousarray(ref.transpose(3 - maps, 3 - mapr, 3 - mapc))
    path = tmp_path / "perm.map"
    with mrcfile.new(path) as mrc:
        mrc.set_data(file_data)
        h = mrc.header
        h.mapc, h.mapr, h.maps = mapc, mapr, maps
        h.mx, h.my, h.mz = SHAPE[2], SHAPE[1], SHAPE[0]  # sampling along X, Y, Z
        h.cella = (SHAPE[2] * VOXEL[2], SHAPE[1] * VOXEL[1], SHAPE[0] * VOXEL[0])
    data, meta = read_mrc(path)
    assert data.shape == SHAPE
    np.testing.assert_array_equal(data, ref)
    assert meta["voxel_size"] == pytest.approx(VOXEL)
    np.testing.assert_array_equal(_load(path).numpy(), ref)


def test_mode_101_four_bit(tmp_path):
    nz, ny, nx = 3, 4, 5  # odd nx: every row padded to a whole byte
    ref = np.random.default_rng(5).integers(0, 15, size=(nz, ny, nx), endpoint=True).astype(np.uint8)
    padded = np.zeros((nz, ny, nx + 1), dtype=np.uint8)
    padded[..., :nx] = ref
    packed = (padded[..., 0::2] | (padded[..., 1::2] << 4)).astype(np.uint8)  # low nibble first
    path = _write(tmp_path / "four.mrc", packed.view(np.int8))
    _set_int(path, 0, nx)
    _set_int(path, 12, 101)
    data, meta = read_mrc(path)
    assert meta["mrc_mode"] == 101 and data.dtype == np.uint8
    np.testing.assert_array_equal(data, ref)


def test_volume_stack_is_channels(tmp_path):
    ref = _volume(np.float32, (2, *SHAPE))
    path = _write(tmp_path / "stack.mrc", ref)
    data, meta = read_mrc(path)
    assert data.shape == (2, *SHAPE) and meta["original_channel_dim"] == 0
    img = LoadImage(reader=MRCReader(), ensure_channel_first=True, image_only=True)(path)
    assert tuple(img.shape) == (2, *SHAPE)
    np.testing.assert_array_equal(img.numpy(), ref)


def test_load_dict_pipeline_and_config_name(tmp_path):
    ref = _volume(np.int16)
    a = _write(tmp_path / "a.mrc", ref)
    b = _write(tmp_path / "b.mrc", ref * 2)
    keys = ["image", "label"]
    pipeline = Compose([LoadImaged(keys, reader=MRCReader), EnsureChannelFirstd(keys)])
    out = pipeline({"image": str(a), "label": str(b)})
    assert tuple(out["image"].shape) == (1, *SHAPE)
    np.testing.assert_array_equal(out["label"][0].numpy(), ref * 2)
    assert out["image"].meta["filename_or_obj"] == str(a)
    assert out["image"].meta["voxel_size"] == pytest.approx(VOXEL)

    # as a bundle config names it
    config = {"_target_": "LoadImaged", "keys": "image", "reader": "cryoet_monai.MRCReader"}
    parser = ConfigParser({"load": config})
    img = parser.get_parsed_content("load")({"image": str(a)})["image"]
    np.testing.assert_array_equal(img.numpy(), ref)

    # several files: stacked as channels
    both = LoadImage(reader=MRCReader(), image_only=True)([a, b])
    assert tuple(both.shape) == (2, *SHAPE)
    np.testing.assert_array_equal(both[1].numpy(), ref * 2)
    small = _write(tmp_path / "small.mrc", ref[:2])
    with pytest.raises(MRCFormatError, match=r"a\.mrc, .*small\.mrc: cannot stack files of different shapes"):
        LoadImage(reader=MRCReader())([a, small])


def test_reader_dtype_and_suffixes(tmp_path):
    reader = MRCReader(dtype=np.float32)
    for name in ["a.mrc", "b.REC", "c.map.gz", "d.st", "e.ali.bz2", "f.mrcs", "g.ccp4"]:
        assert reader.verify_suffix(name), name
    assert not reader.verify_suffix("a.nii.gz") and not reader.verify_suffix(["a.mrc", "b.png"])
    path = _write(tmp_path / "v.mrc", _volume(np.int16))
    data, _ = reader.get_data(reader.read(path))
    assert data.dtype == np.float32


@pytest.mark.parametrize(
    "voxel, expect",
    [
        ((0.0, 0.0, 0.0), "zero or negative"),
        ((-10.0,) * 3, "zero or negative"),
        ((1.0, 1.0, 1.0), "exactly 1.0"),
    ],
)
def test_suspicious_voxel_size_warns(tmp_path, caplog, voxel, expect):
    path = _write(tmp_path / "vs.mrc", _volume(np.float32), voxel=voxel)
    with caplog.at_level(logging.WARNING, logger="cryoet_monai.io.mrc"):
        img = _load(path)
    assert expect in caplog.text and "vs.mrc" in caplog.text
    assert tuple(img.shape) == SHAPE


def test_2d_image_refused_unless_allowed(tmp_path):
    ref = _volume(np.float32, (7, 9))
    path = _write(tmp_path / "image.mrc", ref)
    with pytest.raises(MRCFormatError, match=r"image\.mrc: a 2-D image"):
        read_mrc(path)
    with pytest.raises(MRCFormatError, match=r"image\.mrc: a 2-D image"):
        _load(path)
    img = LoadImage(reader=MRCReader(allow_2d=True), ensure_channel_first=True, image_only=True)(path)
    assert tuple(img.shape) == (1, 7, 9)
    np.testing.assert_array_equal(img[0].numpy(), ref)
    np.testing.assert_allclose(img.pixdim, VOXEL[1:])
    # columns along Y, rows along X (mapc/mapr = 2, 1): returned as (Y, X)
    swapped = _write(tmp_path / "swapped.mrc", np.ascontiguousarray(ref.T), mapc=2, mapr=1, maps=3)
    data, _ = read_mrc(swapped, allow_2d=True)
    np.testing.assert_array_equal(data, ref)


# ---------------------------------------------------------------------------------------------- bad input


def _bad_files(tmp: Path) -> dict[str, tuple[Path, type, str]]:
    good = _write(tmp / "good.mrc", _volume(np.float32))
    blob = good.read_bytes()
    cases = {}
    (tmp / "empty.mrc").write_bytes(b"")
    cases["empty"] = (tmp / "empty.mrc", MRCTruncatedError, "empty file")
    (tmp / "short.mrc").write_bytes(blob[:500])
    cases["short header"] = (tmp / "short.mrc", MRCTruncatedError, "truncated header")
    (tmp / "cut.mrc").write_bytes(blob[: len(blob) - 40])
    cases["truncated data"] = (tmp / "cut.mrc", MRCTruncatedError, "truncated data")
    png = b"\x89PNG\r\n\x1a\n" + np.random.default_rng(0).bytes(3000)
    (tmp / "picture.mrc").write_bytes(png)
    cases["not mrc"] = (tmp / "picture.mrc", MRCFormatError, "not an MRC file")
    complex_path = tmp / "complex.mrc"
    with mrcfile.new(complex_path) as mrc:
        mrc.set_data(np.zeros(SHAPE, dtype=np.complex64))
    cases["mode 4"] = (complex_path, MRCFormatError, "unsupported MRC mode 4")
    axes = _write(tmp / "axes.mrc", _volume(np.float32), mapc=1, mapr=1, maps=3)
    cases["axes"] = (axes, MRCFormatError, r"mapc/mapr/maps = \(1, 1, 3\)")
    (tmp / "trunc.mrc.gz").write_bytes(_gzip_of(_write(tmp / "g.mrc", _volume(np.float32)))[:300])
    cases["truncated gzip"] = (tmp / "trunc.mrc.gz", MRCTruncatedError, "truncated")
    cases["missing"] = (tmp / "missing.mrc", MRCTruncatedError, "no such file")
    return cases


def _gzip_of(path: Path) -> bytes:
    import gzip

    return gzip.compress(path.read_bytes())


BAD_CASES = [
    "empty",
    "short header",
    "truncated data",
    "not mrc",
    "mode 4",
    "axes",
    "truncated gzip",
    "missing",
]


@pytest.mark.parametrize("case", BAD_CASES)
@pytest.mark.parametrize("mmap", [True, False])
def test_bad_input_clear_errors(tmp_path, case, mmap):
    path, error, message = _bad_files(tmp_path)[case]
    with pytest.raises(error, match=message) as info:
        read_mrc(path, mmap=mmap)
    assert str(path) in str(info.value)
    if error is MRCTruncatedError:
        assert isinstance(info.value, OSError)
    # through LoadImage: our exception itself, not "cannot find a suitable reader"
    if case != "missing":
        with pytest.raises(error, match=message) as info:
            LoadImage(reader=MRCReader())(path)
        assert str(path) in str(info.value)
        assert isinstance(info.value, ValueError)


def test_non_mrc_name_falls_back_to_other_readers(tmp_path):
    """A file that is neither MRC by content nor by name is left to MONAI's other readers."""
    path = tmp_path / "array.npy"
    np.save(path, np.arange(6, dtype=np.float32).reshape(2, 3))
    img = LoadImage(reader=MRCReader(), image_only=True)(path)
    np.testing.assert_array_equal(img.numpy(), torch.arange(6.0).reshape(2, 3).numpy())


def test_metadata_survives_monai_spatial_transforms(tmp_path: Path) -> None:
    """pixdim follows MONAI's NIfTI layout, so pads, crops and slice squeezes keep the voxel size."""
    from monai.transforms import (
        Compose,
        EnsureChannelFirstd,
        LoadImaged,
        RandSpatialCropd,
        SpatialPadd,
        SqueezeDimd,
    )

    path = _write(tmp_path / "vol.mrc", _volume(np.float32))
    pipeline = Compose(
        [
            LoadImaged("image", reader=MRCReader),
            EnsureChannelFirstd("image"),
            SpatialPadd("image", (SHAPE[0], 16, 16)),
            RandSpatialCropd("image", (1, 8, 8)),
            SqueezeDimd("image", dim=1),
        ]
    )
    img = pipeline({"image": str(path)})["image"]
    assert tuple(img.shape) == (1, 8, 8)
    np.testing.assert_allclose(img.pixdim, VOXEL[1:])
    np.testing.assert_allclose(img.meta["pixdim"][1:4], VOXEL)
