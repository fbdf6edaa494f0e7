"""The double-membrane partner rule: geometry in Å, streaming over slabs, wiring in the segmenter."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from cryoet_monai.inference import TomogramSegmenter
from cryoet_monai.inference.postprocess import relabel_unpaired_double_membranes
from cryoet_monai.io.mrc import read_mrc, save_mrc

DOUBLE, SINGLE = 3, 4


def _bands(shape: tuple[int, int, int], rows: list[int], width: int, label: int) -> np.ndarray:
    """Horizontal bilayers ``width`` pixels thick starting at ``rows`` in every plane."""
    seg = np.zeros(shape, dtype=np.uint8)
    for r in rows:
        seg[:, r : r + width, 8:-8] = label
    return seg


@pytest.mark.parametrize("pixel_size", [10.0, 5.0])
@pytest.mark.parametrize("binned_pixel", [20.0, 0.0])
def test_partner_within_the_gap_keeps_a_double_membrane(pixel_size: float, binned_pixel: float) -> None:
    # two 40 Å bilayers with a 200 Å lumen: a double membrane at any pixel size, binned or not
    w, gap = round(40 / pixel_size), round(200 / pixel_size)
    seg = _bands((3, 160, 160), [40, 40 + w + gap], w, DOUBLE)
    before = seg.copy()
    assert relabel_unpaired_double_membranes(seg, pixel_size, DOUBLE, SINGLE, binned_pixel=binned_pixel) == 0
    np.testing.assert_array_equal(seg, before)


@pytest.mark.parametrize("binned_pixel", [20.0, 0.0])
def test_lone_or_distant_bilayers_become_single_membrane(binned_pixel: float) -> None:
    # one bilayer alone, and a pair 800 Å apart (wider than the 500 Å largest double-membrane gap)
    lone = _bands((2, 120, 120), [60], 4, DOUBLE)
    far = _bands((2, 200, 120), [40, 124], 4, DOUBLE)
    for seg in (lone, far):
        n_double = int((seg == DOUBLE).sum())
        moved = relabel_unpaired_double_membranes(seg, 10.0, DOUBLE, SINGLE, binned_pixel=binned_pixel)
        assert moved == n_double
        assert not (seg == DOUBLE).any() and (seg == SINGLE).sum() == n_double
    # the same 800 Å pair counts as partners once max_gap allows it
    far = _bands((2, 200, 120), [40, 124], 4, DOUBLE)
    assert relabel_unpaired_double_membranes(far, 10.0, DOUBLE, SINGLE, max_gap=900.0) == 0


def test_a_single_membrane_partner_counts_and_other_labels_stay() -> None:
    # a double-membrane bilayer whose partner was predicted single: both bilayers keep their labels
    seg = _bands((2, 120, 120), [40], 4, DOUBLE) + _bands((2, 120, 120), [64], 4, SINGLE)
    seg[:, 100:110, 20:40] = 1  # a microtubule far away: untouched
    before = seg.copy()
    assert relabel_unpaired_double_membranes(seg, 10.0, DOUBLE, SINGLE) == 0
    np.testing.assert_array_equal(seg, before)
    # a lone double-membrane bilayer next to the pair is relabelled; the pair and label 1 are not
    seg[:, 4:8, 8:-8] = DOUBLE
    moved = relabel_unpaired_double_membranes(seg, 10.0, DOUBLE, SINGLE, max_gap=300.0)
    assert moved == 2 * 4 * 104
    assert (seg[:, 4:8, 8:-8] == SINGLE).all()
    np.testing.assert_array_equal(seg[:, 30:], before[:, 30:])


def test_a_plane_full_of_double_membrane_keeps_it() -> None:
    seg = np.full((2, 40, 40), DOUBLE, dtype=np.uint8)  # no background pixel to measure from
    assert relabel_unpaired_double_membranes(seg, 10.0, DOUBLE, SINGLE) == 0 and (seg == DOUBLE).all()


def test_streaming_over_slabs_equals_one_slab() -> None:
    rng = np.random.default_rng(0)
    seg = np.where(rng.random((9, 96, 96)) < 0.01, 2, 0).astype(np.uint8)  # ribosome-like specks
    for z in range(9):  # a lone bilayer in odd planes, a pair in even ones
        seg[z, 30:34, 10:80] = DOUBLE
        if z % 2 == 0:
            seg[z, 50:54, 10:80] = DOUBLE
    a, b = seg.copy(), seg.copy()
    assert relabel_unpaired_double_membranes(a, 10.0, DOUBLE, SINGLE, slab=2) == \
        relabel_unpaired_double_membranes(b, 10.0, DOUBLE, SINGLE, slab=16) > 0
    np.testing.assert_array_equal(a, b)
    assert (a[1::2] == DOUBLE).sum() == 0 and (a[0::2, 30:34, 10:80] == DOUBLE).all()


@pytest.mark.parametrize("pixel_size", [10.0, 7.0, 14.0])
def test_both_distance_transforms_give_the_same_labels(pixel_size: float) -> None:
    pytest.importorskip("edt", reason="edt (the cpu extra) not installed")
    # curved bilayers at random offsets: pairs at every gap from touching to beyond max_gap
    yy, xx = np.mgrid[:160, :160]
    seg = np.zeros((6, 160, 160), np.uint8)
    rng = np.random.default_rng(3)
    for z in range(6):
        for _ in range(5):
            cy, cx, r = rng.uniform(0, 160, 2).tolist() + [rng.uniform(10, 70)]
            ring = np.abs(np.hypot(yy - cy, xx - cx) - r) < rng.uniform(1.5, 3.0)
            seg[z][ring] = rng.choice([DOUBLE, SINGLE])
    a, b = seg.copy(), seg.copy()
    moved = relabel_unpaired_double_membranes(a, pixel_size, DOUBLE, SINGLE, distance="edt")
    assert moved == relabel_unpaired_double_membranes(b, pixel_size, DOUBLE, SINGLE, distance="scipy") > 0
    np.testing.assert_array_equal(a, b)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="distance must be"):
        relabel_unpaired_double_membranes(np.zeros((1, 4, 4), np.uint8), 10.0, DOUBLE, SINGLE, distance="cv2")
    with pytest.raises(ValueError, match=r"\(Z, Y, X\) volume"):
        relabel_unpaired_double_membranes(np.zeros((4, 4), np.uint8), 10.0, DOUBLE, SINGLE)
    with pytest.raises(ValueError, match="positive pixel size"):
        relabel_unpaired_double_membranes(np.zeros((1, 4, 4), np.uint8), 0.0, DOUBLE, SINGLE)


class _LoneBilayerNet(nn.Module):
    """Predicts double membrane where the input is dark, background elsewhere (2-D, 1 channel)."""

    spatial_dims = 2
    size_divisible = 16

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dark = (-x).clamp(min=0) * 20 + self.bias
        zero = torch.zeros_like(x)
        return torch.cat([zero + 1, zero, zero, dark, zero, zero], dim=1)


def test_segmenter_relabels_a_lone_bilayer(tmp_path: Path) -> None:
    vol = np.zeros((4, 64, 64), np.float32)
    vol[:, 30:34, 8:56] = -3.0  # one dark bilayer, no partner
    vol += np.random.default_rng(1).normal(0, 0.01, vol.shape).astype(np.float32)
    src = tmp_path / "lone.mrc"
    save_mrc(src, vol, voxel_size=10.0)

    def run(out: str, **kwargs) -> tuple[np.ndarray, dict]:
        seg = TomogramSegmenter(_LoneBilayerNet(), precision="fp32", progress=False, model_voxel_size=10.0,
                                invert="no", sample_extent=False, **kwargs)
        (result,) = seg(src, tmp_path / out)
        return np.asarray(read_mrc(result["seg"])[0]), result

    plain, plain_result = run("plain")
    ruled, ruled_result = run("ruled", double_membrane_max_gap=500.0)
    assert (plain == DOUBLE).sum() > 100 and not (plain == SINGLE).any()
    np.testing.assert_array_equal(ruled, np.where(plain == DOUBLE, SINGLE, plain))
    fractions = ruled_result["class_fractions"]
    assert fractions["double_membrane"] == 0.0
    # the summary says what the post-processing changed
    assert ruled_result["unpaired_double_membrane_voxels_relabelled"] == int((plain == DOUBLE).sum())
    assert plain_result["unpaired_double_membrane_voxels_relabelled"] == 0
    assert plain_result["small_component_voxels_removed"] == 0
    (_, speck_result) = run("speck", min_component_size=10**6)
    assert speck_result["small_component_voxels_removed"] == int((plain == DOUBLE).sum())
    assert speck_result["class_fractions"]["background"] == 1.0
    assert fractions["single_membrane"] == pytest.approx(plain_result["class_fractions"]["double_membrane"])
    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="double_membrane_max_gap must be a length in Å"):
            TomogramSegmenter(_LoneBilayerNet(), progress=False, double_membrane_max_gap=bad)
    off = TomogramSegmenter(_LoneBilayerNet(), progress=False, double_membrane_max_gap=0)
    assert off.membrane_labels is None and off.double_membrane_max_gap is None
    # a model without both membrane classes: the rule is off
    assert TomogramSegmenter(_LoneBilayerNet(), progress=False, num_classes=4,
                             double_membrane_max_gap=500.0).membrane_labels is None


def test_double_membrane_max_gap_from_the_command_line_and_the_bundle() -> None:
    """``segment --double-membrane-max-gap A`` parses lengths >= 0 (0 = off); the bundle's config turns the
    rule on at 500 Å for its six classes."""
    from cryoet_monai.cli import build_parser
    from cryoet_monai.inference.cli import build_segmenter

    def parse(*extra: str):
        return build_parser().parse_args(["segment", "t.mrc", "-o", "out", *extra])

    assert parse("--double-membrane-max-gap", "300").double_membrane_max_gap == 300.0
    assert parse("--double-membrane-max-gap", "0").double_membrane_max_gap == 0.0
    assert parse().double_membrane_max_gap is None
    for bad in ("-5", "nan"):
        with pytest.raises(SystemExit):
            parse("--double-membrane-max-gap", bad)
    parser = build_segmenter(None, progress=False, invert="no", backend="torch")
    bundle = parser.get_parsed_content("segmenter")
    assert bundle.double_membrane_max_gap == 500.0 and bundle.membrane_labels == (DOUBLE, SINGLE)
    off = build_segmenter(None, progress=False, invert="no", backend="torch",
                          double_membrane_max_gap=None).get_parsed_content("segmenter")
    assert off.membrane_labels is None
