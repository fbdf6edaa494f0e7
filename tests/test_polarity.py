"""Contrast polarity: the image cue (skewness of block means) and the segmenter's two-judge rule."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch

from cryoet_monai import PaperUNet
from cryoet_monai.inference import TomogramSegmenter
from cryoet_monai.inference.polarity import DenseContrastSkewness
from cryoet_monai.io.mrc import save_mrc


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
