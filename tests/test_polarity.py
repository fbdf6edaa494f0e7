"""Contrast polarity: the image cue (skewness of block means) and the segmenter's two-judge rule."""

from __future__ import annotations

import math
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch

from cryoet_monai import PaperUNet
from cryoet_monai.inference import TomogramSegmenter
from cryoet_monai.inference.polarity import DenseContrastSkewness
from cryoet_monai.io.mrc import release_planes, save_mrc


def _dense_dark(shape=(40, 96, 96), seed: int = 0) -> np.ndarray:
    """Noise (SNR well below 1) around sparse dark 3-D blobs, as dense material in a raw reconstruction."""
    rng = np.random.default_rng(seed)
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    volume = np.zeros(shape, np.float32)
    for _ in range(25):
        cz, cy, cx = (rng.integers(0, s) for s in shape)
        volume[(z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2 < 6**2] -= 1.0
    return volume + rng.normal(0.0, 2.0, shape).astype(np.float32)


def _reference(volume: np.ndarray, b: int, layers: int) -> float:
    """Skewness of the b³ block means of the central ``layers`` block-layers, the whole plane."""
    z0 = (volume.shape[0] - layers * b) // 2
    slab = volume[z0:z0 + layers * b].astype(np.float64)
    nz, ny, nx = layers, volume.shape[1] // b, volume.shape[2] // b
    means = slab[:, : ny * b, : nx * b].reshape(nz, b, ny, b, nx, b).mean(axis=(1, 3, 5))
    c = means - means.mean()
    return float(np.mean(c**3) / np.mean(c**2) ** 1.5)


class _SmallReads(DenseContrastSkewness):
    READ_VOXELS: ClassVar[int] = 96 * 96 * 3  # three planes per read: blocks straddle the reads


def test_skewness_is_the_block_mean_skewness_of_the_central_slab():
    volume = _dense_dark()
    cue = DenseContrastSkewness(block=40.0)  # 4-voxel blocks at 10 Å
    assert cue.block_voxels((10.0, 10.0, 10.0)) == (4, 4, 4)
    assert cue.block_voxels((14.0, 14.0, 14.0)) == (3, 3, 3)
    expected = _reference(volume, 4, cue.layers)
    assert cue.measure(volume, (10.0,) * 3) == pytest.approx(expected, rel=1e-9)
    assert _SmallReads(block=40.0).measure(volume, (10.0,) * 3) == pytest.approx(expected, rel=1e-9)
    assert expected < -0.5  # the dark blobs are the long tail


def test_decision_follows_the_tail_and_abstains_when_it_is_weak():
    cue = DenseContrastSkewness(block=40.0)
    volume = _dense_dark()
    dark = cue.measure(volume, (10.0,) * 3)
    assert cue.decide(dark) is False
    assert cue.measure(-volume, (10.0,) * 3) == pytest.approx(-dark)
    assert cue.decide(-dark) is True
    noise = np.random.default_rng(3).normal(0.0, 1.0, (40, 96, 96)).astype(np.float32)
    assert abs(cue.measure(noise, (10.0,) * 3)) < cue.decisive
    assert cue.decide(cue.measure(noise, (10.0,) * 3)) is None


def test_constant_and_tiny_volumes_are_undecided():
    cue = DenseContrastSkewness()
    assert cue.measure(np.full((40, 96, 96), 3.0, np.float32), (10.0,) * 3) == 0.0
    # 20³ at 5 Å is one 80-Å block: below min_blocks, whatever its content
    assert cue.measure(_dense_dark((20, 20, 20)), (5.0,) * 3) == 0.0
    assert cue.decide(0.0) is None


def test_synthetic_tilt_series_tomogram_is_dense_dark():
    from cryoet_monai.data.synthetic import generate_tomogram

    image, _ = generate_tomogram((32, 128, 128), 10.0, 12)
    cue = DenseContrastSkewness()
    assert cue.decide(cue.measure(image, (10.0,) * 3)) is False
    assert cue.decide(cue.measure(-image, (10.0,) * 3)) is True


def _segmenter(**kwargs) -> TomogramSegmenter:
    torch.manual_seed(0)
    net = PaperUNet(spatial_dims=2, in_channels=1, out_channels=6, features=[8, 8, 16, 16, 32]).eval()
    return TomogramSegmenter(net, model_voxel_size=10.0, progress=False, precision="fp32", **kwargs)


def test_invert_auto_inverts_a_dense_bright_file_by_the_image_cue(tmp_path: Path):
    volume = _dense_dark((40, 96, 96), seed=5)
    save_mrc(tmp_path / "dark.mrc", volume, voxel_size=10.0)
    save_mrc(tmp_path / "bright.mrc", -volume, voxel_size=10.0)
    cue = DenseContrastSkewness(block=40.0)
    seg = _segmenter(contrast_skewness=cue)  # invert: auto
    dark, bright = (seg.segment(tmp_path / f"{n}.mrc", tmp_path / "out") for n in ("dark", "bright"))
    assert not dark["inverted"] and bright["inverted"]
    # the summary says which judge decided, with the cue's value
    assert dark["polarity"]["decided_by"] == bright["polarity"]["decided_by"] == "image"
    assert dark["polarity"]["skewness"] == pytest.approx(-bright["polarity"]["skewness"], rel=1e-6)
    assert dark["polarity"]["skewness"] <= -cue.decisive and bright["polarity"]["confidence"] is None


def test_the_model_decides_where_the_cue_abstains_and_a_given_polarity_says_so(tmp_path: Path):
    volume = _dense_dark((40, 96, 96), seed=6)
    save_mrc(tmp_path / "t.mrc", volume, voxel_size=10.0)
    abstaining = DenseContrastSkewness(block=40.0, decisive=1e9)
    auto = _segmenter(contrast_skewness=abstaining).segment(tmp_path / "t.mrc", tmp_path / "a")
    decision = auto["polarity"]
    assert decision["decided_by"] == "model"
    assert decision["skewness"] == pytest.approx(abstaining.measure(volume, (10.0,) * 3))
    as_is, negated = decision["confidence"]
    assert 1 / 6 <= as_is <= 1 and 1 / 6 <= negated <= 1  # mean max-probability of 6 classes
    assert auto["inverted"] == (negated > as_is + TomogramSegmenter.POLARITY_MARGIN)
    given = _segmenter(invert="yes").segment(tmp_path / "t.mrc", tmp_path / "g")
    assert given["inverted"] and given["polarity"] == {"decided_by": "given", "skewness": None,
                                                       "confidence": None}


class _PlaneCounter:
    """A lazy ``(Z, Y, X)`` reader like ``ZarrVolume``: every index reads (and counts) its planes."""

    def __init__(self, array: np.ndarray) -> None:
        self.array, self.shape, self.dtype, self.ndim = array, array.shape, array.dtype, 3
        self.size = array.size
        self.planes_read = 0

    def __getitem__(self, index):
        out = np.asarray(self.array[index])
        self.planes_read += out.shape[0] if out.ndim == 3 else 1
        return out


def test_a_lazy_volume_is_read_once_per_slab_not_again_to_release_pages(tmp_path: Path):
    volume = _PlaneCounter(_dense_dark((40, 96, 96), seed=7))
    seg = _segmenter(invert="no", slab_size=8, sample_extent=False)
    seg.segment_volume(volume, {"voxel_size": (10.0,) * 3}, Path("lazy"), tmp_path)
    halo = math.ceil(seg.halo)
    slabs = math.ceil(40 / 8)
    # the normaliser's subsample plus each slab with its halo, once; before, every slab was read twice
    assert volume.planes_read <= 40 + 40 + 2 * halo * slabs
    release_planes(volume, 0, 40)  # a no-op on lazy readers: nothing read
    assert volume.planes_read <= 40 + 40 + 2 * halo * slabs
