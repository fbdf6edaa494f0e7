"""Every file of the shared MRC corpus (real files written by other software) loads right or is refused.

Read in place from ../shared/mrc-corpus (fixture ``mrc_corpus``; skipped when absent).
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
from monai.transforms import LoadImage

from cryoet_monai.io.mrc import MRCFormatError, MRCReader, read_mrc

# file -> (shape (Z, Y, X), dtype, (min, max), voxel size (z, y, x) Å or None when the header's is bogus)
EXPECTED = {
    "SMLC-NYSBC-TARDIS/rec3D.rec": ((78, 64, 32), np.uint8, (141, 163), (23.2, 23.2, 23.2)),
    "ccpem-mrcfile/EMD-3197.map": ((20, 20, 20), np.float32, (-4.1337457, 5.576737), (11.4, 11.4, 11.4)),
    "ccpem-mrcfile/EMD-3197.map.bz2": ((20, 20, 20), np.float32, (-4.1337457, 5.576737), (11.4, 11.4, 11.4)),
    "ccpem-mrcfile/emd_3197.map.gz": ((20, 20, 20), np.float32, (-4.1337457, 5.576737), (11.4, 11.4, 11.4)),
    # mapc/mapr/maps = 3, 1, 2: file (sections, rows, cols) = (25 y, 43 x, 73 z) -> (73, 25, 43)
    "ccpem-mrcfile/EMD-3001.map": (
        (73, 25, 43),
        np.float32,
        (-0.36814296, 0.72161025),
        (0.45875, 0.3925, 0.44825),
    ),
    "hanjinliu-cylindra/beta-tubulin.mrc": ((20, 20, 20), np.float32, (-1.0822835, 7.637047), (5.144,) * 3),
    "project-gemmi/5i55_tiny.ccp4": (
        (10, 8, 6),
        np.float32,
        (-0.5310383, 2.398828),
        (0.495, 0.4375, 0.4908333),
    ),
    "project-gemmi/iota_yzx.ccp4.gz": ((2, 1, 4), np.float32, (60.0, 187.0), (20.0, 22.0, 30.0)),
    "hyperspy-rosettasciio/Custom_movie.mrc": ((30, 16, 16), np.uint16, (682, 1596), None),
    "hyperspy-rosettasciio/ROI_Random_Scan_movie.mrc": ((348, 16, 16), np.uint16, (681, 1596), None),
}
# 2-D images: refused by default, read with allow_2d=True as (Y, X)
EXPECTED_2D = {
    "SMLC-NYSBC-TARDIS/rec2D.rec": ((64, 32), np.uint8, (144, 159), (23.2, 23.2)),
    "hyperspy-rosettasciio/HAADFscan.mrc": ((16, 16), np.uint16, (3923, 9399), (56.791313, 56.791313)),
}


def test_corpus_fully_covered(mrc_corpus):
    found = {p.relative_to(mrc_corpus / "formats").as_posix() for p in (mrc_corpus / "formats").rglob("*")}
    found = {f for f in found if "." in f.rsplit("/", 1)[-1]}
    assert found == set(EXPECTED) | set(EXPECTED_2D), "a corpus file has no expectation here"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_corpus_volume(mrc_corpus, name, caplog):
    shape, dtype, (lo, hi), voxel = EXPECTED[name]
    path = mrc_corpus / "formats" / name
    with caplog.at_level(logging.WARNING, logger="cryoet_monai.io.mrc"):
        data, meta = read_mrc(path)
    assert data.shape == shape and data.dtype == dtype
    assert (float(data.min()), float(data.max())) == pytest.approx((lo, hi), rel=1e-6)
    if voxel is None:  # negative / zero voxel size in the header: warned about, never a crash
        assert "zero or negative" in caplog.text and path.name in caplog.text
    else:
        assert meta["voxel_size"] == pytest.approx(voxel, rel=1e-5)
    img = LoadImage(reader=MRCReader(), image_only=True, ensure_channel_first=True)(path)
    assert tuple(img.shape) == (1, *shape)
    np.testing.assert_array_equal(img[0].numpy(), np.asarray(data, dtype=np.float32))


def test_imod_old_header_unsigned(mrc_corpus, caplog):
    with caplog.at_level(logging.WARNING, logger="cryoet_monai.io.mrc"):
        data, meta = read_mrc(mrc_corpus / "formats/SMLC-NYSBC-TARDIS/rec3D.rec")
    assert "no 'MAP ' identifier" in caplog.text
    assert (
        meta["mrc_unsigned_bytes"] and meta["mrc_header"]["dmin"] == 141 and meta["mrc_header"]["dmax"] == 163
    )


def test_gemmi_axis_order_values(mrc_corpus):
    """As in gemmi's test: the [1:5, 2:3, 4:6] (x, y, z) cut of arange(210) on a (5, 6, 7) grid."""
    data, meta = read_mrc(mrc_corpus / "formats/project-gemmi/iota_yzx.ccp4.gz")
    xyz = np.arange(5 * 6 * 7, dtype=np.float32).reshape(5, 6, 7)[1:5, 2:3, 4:6]
    np.testing.assert_array_equal(data, xyz.transpose(2, 1, 0))
    # no ORIGIN field: the cut starts at grid (x, y, z) = (1, 2, 4), written as n*start = (1, 20, -3)
    # (periodic cell of 5, 6, 7) through mapc/mapr/maps = 2, 3, 1 -> origin (z, y, x) = (-3*20, 20*22, 1*30) Å
    assert meta["origin"] == pytest.approx((-60.0, 440.0, 30.0))
    assert meta["mrc_header"]["nxstart"] == 20


def test_compressed_copies_identical(mrc_corpus):
    plain, _ = read_mrc(mrc_corpus / "formats/ccpem-mrcfile/EMD-3197.map")
    for name in ("EMD-3197.map.bz2", "emd_3197.map.gz"):
        other, _ = read_mrc(mrc_corpus / "formats/ccpem-mrcfile" / name)
        np.testing.assert_array_equal(other, plain)


@pytest.mark.parametrize("name", sorted(EXPECTED_2D))
def test_corpus_2d_refused_unless_allowed(mrc_corpus, name):
    shape, dtype, (lo, hi), voxel = EXPECTED_2D[name]
    path = mrc_corpus / "formats" / name
    with pytest.raises(MRCFormatError, match=f"{path.name}: a 2-D image"):
        LoadImage(reader=MRCReader())(path)
    data, meta = read_mrc(path, allow_2d=True)
    assert data.shape == shape and data.dtype == dtype
    assert (int(data.min()), int(data.max())) == (lo, hi)
    assert meta["voxel_size"][1:] == pytest.approx(voxel, rel=1e-5)


def test_real_tomograms_and_labels(mrc_corpus):
    images = sorted((mrc_corpus / "real").glob("*_MT.mrc"))
    if not images:
        pytest.skip("no real tomograms in the corpus")
    for image in images:
        data, meta = read_mrc(image)
        assert data.dtype == np.int16 and data.ndim == 3
        assert meta["voxel_size"] == pytest.approx((10.52,) * 3, rel=1e-5)
        assert 0 <= data.min() < data.max() <= 255
        label = image.with_name(image.stem + "_labels_approx.mrc.gz")
        if label.exists():
            seg = LoadImage(reader=MRCReader(), image_only=True)(label)
            assert tuple(seg.shape) == data.shape
            assert set(np.unique(seg.numpy()).tolist()) == {0.0, 1.0}
            np.testing.assert_allclose(seg.pixdim, (10.52,) * 3, rtol=1e-5)
