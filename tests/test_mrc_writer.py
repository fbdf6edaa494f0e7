"""save_mrc / create_mrc / MRCWriter: round trips, modes, mrcfile.validate, atomic writes."""

from __future__ import annotations

import io
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import LoadImage, SaveImage, SaveImaged

import cryoet_monai.io.mrc as mrc_module
from cryoet_monai.io.mrc import (
    MRCFormatError,
    MRCOutputExistsError,
    MRCOutputFolderError,
    MRCReader,
    MRCTruncatedError,
    MRCWriter,
    create_mrc,
    read_mrc,
    save_mrc,
)

SHAPE = (5, 6, 7)


def _valid(path: Path) -> bool:
    return mrcfile.validate(path, print_file=io.StringIO())


def _only(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize(
    "data, mode, read_dtype",
    [
        (np.arange(210).reshape(SHAPE) % 6, 0, np.int8),  # int64 labels (argmax) -> mode 0
        ((np.arange(210).reshape(SHAPE) % 6).astype(np.uint8), 0, np.int8),
        (
            np.where(np.arange(210).reshape(SHAPE) % 7 == 0, 255, 3).astype(np.uint8),
            6,
            np.uint16,
        ),  # ignore 255
        (np.arange(210).reshape(SHAPE).astype(np.uint16) * 300, 6, np.uint16),
        (np.arange(210).reshape(SHAPE).astype(np.int16) - 100, 1, np.int16),
        (np.linspace(0, 1, 210).reshape(SHAPE).astype(np.float16), 12, np.float16),
        (np.linspace(-5, 5, 210).reshape(SHAPE).astype(np.float32), 2, np.float32),
        (np.linspace(-5, 5, 210).reshape(SHAPE), 2, np.float32),  # float64 -> float32
    ],
)
@pytest.mark.parametrize("suffix", [".mrc", ".mrc.gz"])
def test_save_round_trip_modes(tmp_path, data, mode, read_dtype, suffix):
    path = save_mrc(tmp_path / f"out{suffix}", data, voxel_size=(8.0, 9.0, 10.0), origin=(-1.0, 2.0, 30.0))
    assert _only(tmp_path) == [f"out{suffix}"]  # no temporary file left behind
    assert _valid(path)
    with mrcfile.open(path) as mrc:
        assert int(mrc.header.mode) == mode
        assert float(mrc.header.dmax) == pytest.approx(float(data.max()), rel=1e-3)
        assert float(mrc.header.dmean) == pytest.approx(float(data.mean()), rel=1e-3, abs=1e-3)
    back, meta = read_mrc(path)
    assert back.dtype == read_dtype
    np.testing.assert_allclose(back.astype(np.float64), data.astype(read_dtype).astype(np.float64))
    assert meta["voxel_size"] == pytest.approx((8.0, 9.0, 10.0))
    assert meta["origin"] == pytest.approx((-1.0, 2.0, 30.0))


def test_imod_unsigned_option(tmp_path):
    data = np.array([0, 5, 128, 255] * 30, dtype=np.uint8).reshape(4, 5, 6)
    path = save_mrc(tmp_path / "u.mrc", data, voxel_size=3.0, imod_unsigned=True)
    with mrcfile.open(path) as mrc:
        assert int(mrc.header.mode) == 0
        assert (float(mrc.header.dmin), float(mrc.header.dmax)) == (0.0, 255.0)  # unsigned statistics
    back, meta = read_mrc(path)
    assert back.dtype == np.uint8 and meta["mrc_unsigned_reason"].startswith("IMOD stamp")
    np.testing.assert_array_equal(back, data)


def test_tensor_2d_and_volume_stack(tmp_path):
    image = torch.linspace(0, 1, 42).reshape(6, 7)
    path = save_mrc(tmp_path / "image.mrc", image, voxel_size=(1.0, 4.0, 5.0))
    back, meta = read_mrc(path, allow_2d=True)
    np.testing.assert_allclose(back, image.numpy())
    assert meta["voxel_size"][1:] == pytest.approx((4.0, 5.0))
    assert _valid(path)

    probs = np.random.default_rng(0).random((3, *SHAPE)).astype(np.float16)
    path = save_mrc(tmp_path / "probs.mrc", probs, voxel_size=6.0)
    assert _valid(path)
    back, meta = read_mrc(path)
    assert back.shape == (3, *SHAPE) and meta["original_channel_dim"] == 0
    np.testing.assert_array_equal(back, probs)


def test_create_mrc_streaming(tmp_path):
    ref = np.random.default_rng(1).integers(0, 6, size=(8, 9, 10)).astype(np.uint8)
    target = tmp_path / "seg.mrc"
    with create_mrc(
        target, ref.shape, np.uint8, voxel_size=(10.0, 11.0, 12.0), origin=(1.0, 2.0, 3.0)
    ) as out:
        assert isinstance(out, np.memmap) and out.dtype == np.uint8
        for z in range(0, 8, 3):  # slab by slab, like inference
            out[z : z + 3] = ref[z : z + 3]
            assert not target.exists()  # only appears when complete
    assert _only(tmp_path) == ["seg.mrc"]
    assert _valid(target)
    back, meta = read_mrc(target)
    np.testing.assert_array_equal(back, ref)
    assert meta["voxel_size"] == pytest.approx((10.0, 11.0, 12.0))
    assert meta["origin"] == pytest.approx((1.0, 2.0, 3.0))
    assert meta["mrc_header"]["dmax"] == float(ref.max())

    probs = np.random.default_rng(2).random((2, 4, 5, 6)).astype(np.float16)
    with create_mrc(tmp_path / "probs.mrc", probs.shape, np.float16, voxel_size=5.0) as out:
        out[:] = probs
    back, meta = read_mrc(tmp_path / "probs.mrc")
    np.testing.assert_array_equal(back, probs)
    assert meta["mrc_mode"] == 12 and _valid(tmp_path / "probs.mrc")


def test_plane_by_plane_statistics(tmp_path, monkeypatch):
    monkeypatch.setattr(mrc_module, "_STATS_AT_ONCE", 10)  # take the big-volume path on a small array
    ref = np.random.default_rng(4).normal(3.0, 2.0, SHAPE).astype(np.float32)
    with create_mrc(tmp_path / "big.mrc", SHAPE, np.float32) as out:
        out[:] = ref
    with mrcfile.open(tmp_path / "big.mrc") as mrc:
        h = mrc.header
        assert (float(h.dmin), float(h.dmax)) == (float(ref.min()), float(ref.max()))
        assert float(h.dmean) == pytest.approx(ref.mean(dtype=np.float64), rel=1e-6)
        assert float(h.rms) == pytest.approx(ref.std(dtype=np.float64), rel=1e-5)
    assert _valid(tmp_path / "big.mrc")
    with pytest.raises(MRCFormatError, match="NaN"):
        with create_mrc(tmp_path / "nan.mrc", SHAPE, np.float32) as out:
            out[4, 5, 6] = np.nan
    assert _only(tmp_path) == ["big.mrc"]


def test_interrupted_writes_leave_nothing(tmp_path, monkeypatch):
    target = tmp_path / "seg.mrc"
    with pytest.raises(RuntimeError, match="network crashed"):
        with create_mrc(target, SHAPE, np.uint8, voxel_size=10.0) as out:
            out[0] = 1
            raise RuntimeError("network crashed")
    assert _only(tmp_path) == []

    # an existing good file survives a failed overwrite untouched
    old = save_mrc(target, np.ones(SHAPE, np.float32), voxel_size=2.0)
    before = old.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(mrc_module, "_finish_header", crash)  # fails after the data were written
    for suffix in (".mrc", ".mrc.gz"):
        with pytest.raises(OSError, match="disk full"):
            save_mrc(target.with_suffix(suffix), np.zeros(SHAPE, np.float32))
    with pytest.raises(OSError, match="disk full"):
        save_mrc(target, np.zeros(SHAPE, np.float32))
    with pytest.raises(OSError, match="disk full"):
        with create_mrc(target, SHAPE, np.float32) as out:
            out[:] = 3
    assert _only(tmp_path) == ["seg.mrc"]
    assert target.read_bytes() == before


def test_bad_writes_refused(tmp_path):
    target = tmp_path / "x.mrc"
    with pytest.raises(MRCFormatError, match=r"x\.mrc: data contain NaN"):
        save_mrc(target, np.full(SHAPE, np.nan, np.float32))
    with pytest.raises(MRCFormatError, match=r"x\.mrc: integer values 0\.\.70000"):
        save_mrc(target, np.array([[[0, 70000]]], dtype=np.int64))
    with pytest.raises(MRCFormatError, match=r"x\.mrc: cannot write an array of shape \(7,\)"):
        save_mrc(target, np.zeros(7, np.float32))
    with pytest.raises(MRCFormatError, match="cannot store dtype complex64"):
        save_mrc(target, np.zeros(SHAPE, np.complex64))
    with pytest.raises(MRCFormatError, match=r"voxel_size must be one number or \(z, y, x\)"):
        save_mrc(target, np.zeros(SHAPE, np.float32), voxel_size=(1.0, 2.0))
    with pytest.raises(FileNotFoundError, match=r"x\.mrc: output folder .*nowhere does not exist") as info:
        save_mrc(tmp_path / "nowhere" / "x.mrc", np.zeros(SHAPE, np.float32))
    assert isinstance(info.value, MRCOutputFolderError) and not isinstance(info.value, MRCTruncatedError)
    with pytest.raises(MRCOutputFolderError, match="output folder"):
        with create_mrc(tmp_path / "nowhere" / "x.mrc", SHAPE, np.float32):
            pass
    with pytest.raises(MRCFormatError, match="uncompressed files only"):
        with create_mrc(tmp_path / "x.mrc.gz", SHAPE, np.float32):
            pass
    with pytest.raises(MRCFormatError, match="cannot stream int64"):
        with create_mrc(target, SHAPE, np.int64):
            pass
    with pytest.raises(MRCFormatError, match=r"x\.mrc: data contain NaN"):  # streamed NaN: no file either
        with create_mrc(target, SHAPE, np.float32) as out:
            out[2, 3, 4] = np.inf
    assert _only(tmp_path) == []
    save_mrc(target, np.zeros(SHAPE, np.float32))
    with pytest.raises(FileExistsError, match=r"x\.mrc: file exists") as info:
        save_mrc(target, np.zeros(SHAPE, np.float32), overwrite=False)
    assert isinstance(info.value, MRCOutputExistsError) and not isinstance(info.value, MRCTruncatedError)
    with pytest.raises(MRCOutputExistsError, match="file exists"):
        with create_mrc(target, SHAPE, np.float32, overwrite=False):
            pass


def test_mrc_writer_through_save_image(tmp_path):
    labels = (np.arange(210).reshape(SHAPE) % 6).astype(np.uint8)
    src = save_mrc(tmp_path / "tomo_seg.mrc", labels, voxel_size=(10.0, 11.0, 12.0), origin=(5.0, 6.0, 7.0))
    img = LoadImage(reader=MRCReader(), ensure_channel_first=True, image_only=True)(src)
    out_dir = tmp_path / "out"
    saver = SaveImage(
        output_dir=out_dir, output_ext=".mrc", output_dtype=np.uint8, writer=MRCWriter, separate_folder=False
    )
    saver(img)
    written = out_dir / "tomo_seg_trans.mrc"
    assert _only(out_dir) == [written.name] and _valid(written)
    back, meta = read_mrc(written)
    assert back.dtype == np.int8 and meta["mrc_mode"] == 0
    np.testing.assert_array_equal(back, labels)
    assert meta["voxel_size"] == pytest.approx((10.0, 11.0, 12.0))
    assert meta["origin"] == pytest.approx((5.0, 6.0, 7.0))

    # dictionary version, writer named as a bundle config would, float16 probabilities
    probs = MetaTensor(torch.rand(2, *SHAPE), affine=torch.diag(torch.tensor([3.0, 3.0, 3.0, 1.0])))
    probs.meta["filename_or_obj"] = "tomo.mrc"
    SaveImaged(
        "pred",
        output_dir=out_dir,
        output_ext=".mrc",
        output_dtype=np.float16,
        writer="cryoet_monai.MRCWriter",
        output_postfix="probs",
        separate_folder=False,
    )({"pred": probs})
    back, meta = read_mrc(out_dir / "tomo_probs.mrc")
    assert back.shape == (2, *SHAPE) and back.dtype == np.float16
    np.testing.assert_allclose(back, probs.numpy(), atol=1e-3)
    assert meta["voxel_size"] == pytest.approx((3.0, 3.0, 3.0))


def test_mrc_writer_refuses_rotation(tmp_path):
    writer = MRCWriter()
    writer.set_data_array(torch.zeros(1, *SHAPE))
    theta = np.deg2rad(30)
    affine = np.eye(4)
    affine[1:3, 1:3] = [[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]]
    writer.set_metadata({"affine": affine})
    with pytest.raises(MRCFormatError, match=r"rot\.mrc: the affine has rotation"):
        writer.write(tmp_path / "rot.mrc")
    assert _only(tmp_path) == []
