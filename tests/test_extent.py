"""Sample-extent skipping: the planes above and below the sample are labelled background unsegmented."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from cryoet_monai.inference import TomogramSegmenter
from cryoet_monai.inference.extent import SampleExtent
from cryoet_monai.io.mrc import read_mrc, save_mrc

pytestmark = pytest.mark.usefixtures("single_thread")


def _probe_log(sample: range) -> tuple[list[int], callable]:
    probed: list[int] = []

    def foreground(z: int) -> float:
        probed.append(z)
        return 0.01 if z in sample else 0.0

    return probed, foreground


def test_extent_keeps_every_sample_plane_and_probes_only_the_borders():
    probed, foreground = _probe_log(range(30, 71))
    z0, z1, n = SampleExtent(spacing=8).find(100, foreground)
    assert z0 <= 30 and z1 >= 71  # every plane with sample is inside
    assert z0 >= 30 - 8 and z1 <= 71 + 8  # and at most one probe spacing more on each side
    assert n == len(set(probed)) == len(probed)  # no plane probed twice
    assert sorted(probed) == [0, 8, 16, 24, 32, 64, 72, 80, 88, 96, 99]  # down to the hits, no further
    assert (z0, z1) == (24, 73)  # the empty probes next to the hits stay inside


def test_extent_of_a_full_or_empty_tomogram_is_the_whole_depth():
    probed, foreground = _probe_log(range(0, 64))
    assert SampleExtent().find(64, foreground) == (0, 64, 2)  # first and last plane: two probes
    assert sorted(probed) == [0, 63]
    probed, foreground = _probe_log(range(0))
    z0, z1, n = SampleExtent().find(64, foreground)
    assert (z0, z1) == (0, 64) and n == len(probed) == 9  # nothing found anywhere: segment it all


def test_extent_stride_follows_the_model_grid():
    assert SampleExtent(spacing=8).stride(1.0) == 8
    assert SampleExtent(spacing=8).stride(0.5) == 16  # 5 Å input, 10 Å model: 16 input planes = 8 model
    assert SampleExtent(spacing=8).stride(20.0) == 1
    # a thin object between two probes of a finer input grid is still found
    probed, foreground = _probe_log(range(40, 56))
    z0, z1, _ = SampleExtent(spacing=8).find(120, foreground, z_scale=0.5)
    assert z0 <= 40 and z1 >= 56


class _BrightIsMicrotubule(nn.Module):
    """2.5-D stand-in: the centre slice's normalised intensity is the microtubule logit (background 0)."""

    spatial_dims = 2
    size_divisible = 16
    in_channels = 3

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([0.0, 4.0, 0.0]).view(1, 3, 1, 1))
            self.conv.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mt = self.conv(x)
        return torch.cat([torch.zeros_like(mt), mt, torch.full_like(mt, -20.0).expand(-1, 4, -1, -1)], 1)


def test_segmenter_skips_empty_planes_with_the_same_labels(tmp_path: Path):
    rng = np.random.default_rng(0)
    vol = np.full((48, 32, 32), -3.0, np.float32) + rng.normal(0, 0.05, (48, 32, 32)).astype(np.float32)
    vol[20:29] = rng.normal(0, 1.0, (9, 32, 32))  # the sample: planes 20-28
    src = tmp_path / "tomo.mrc"
    save_mrc(src, vol, voxel_size=10.0)

    def run(extent: bool, out: str) -> dict:
        seg = TomogramSegmenter(_BrightIsMicrotubule(), precision="fp32", progress=False,
                                model_voxel_size=10.0, invert="no", fold_bn=False, sample_extent=extent,
                                save_probs=True, save_uncertainty=True, slab_size=5)
        (result,) = seg(src, tmp_path / out)
        return result

    skipped, full = run(True, "skip"), run(False, "all")
    assert full["skipped_planes"] == 0 and full["sample_extent"] == [0, 48]
    z0, z1 = skipped["sample_extent"]
    assert 12 <= z0 <= 20 and 29 <= z1 <= 37 and skipped["skipped_planes"] == 48 - (z1 - z0) >= 30
    a, b = (np.asarray(read_mrc(r["seg"])[0]) for r in (skipped, full))
    assert b[20:29].any() and not b[:12].any() and not b[37:].any()  # the stand-in finds the sample only
    np.testing.assert_array_equal(a, b)
    probs = np.asarray(read_mrc(skipped["probs"])[0])
    assert (probs[0, :z0] == 1).all() and (probs[1:, :z0] == 0).all() and (probs[0, z1:] == 1).all()
    np.testing.assert_allclose(probs[:, z0:z1], np.asarray(read_mrc(full["probs"])[0])[:, z0:z1], atol=1e-3)
    assert (np.asarray(read_mrc(skipped["uncertainty"])[0])[:z0] == 0).all()
    assert skipped["class_fractions"] == pytest.approx(full["class_fractions"])
