"""Inferers as parts: one object per kind of network, chosen by the config (or by default from the network),
and model folders that name the inferer of their network's kind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cryoet_monai import PaperUNet
from cryoet_monai.data.synthetic import generate_tomogram
from cryoet_monai.inference import (
    SliceInferer2D,
    SliceStackInferer,
    TomogramSegmenter,
    WindowInferer3D,
    default_inferer,
    network_kind,
)
from cryoet_monai.inference.cli import build_segmenter
from cryoet_monai.io.mrc import read_mrc, save_mrc
from cryoet_monai.model_folder import DEFAULT_ROI_3D, write_model_configs
from tests.conftest import FEATURES, SHIPPED_IN_CHANNELS

pytestmark = pytest.mark.usefixtures("single_thread")


def _net(spatial_dims: int, in_channels: int = 1) -> PaperUNet:
    torch.manual_seed(0)
    return PaperUNet(spatial_dims, in_channels, 6, features=FEATURES, dropout=0.0)


class ForcedClassInferer(SliceStackInferer):
    """A custom inferer a config can name: every voxel certain of class ``label`` (the network unused)."""

    def __init__(self, label: int = 3, num_classes: int = 6, **kwargs) -> None:
        super().__init__(**kwargs)
        self.label, self.num_classes = int(label), int(num_classes)

    def __call__(self, inputs, network, planes=None):
        z = inputs.shape[2] if planes is None else planes[1] - planes[0]
        probs = torch.zeros(1, self.num_classes, z, *inputs.shape[3:])
        probs[:, self.label] = 1.0
        return probs


def test_default_inferer_follows_the_network_kind() -> None:
    two, stack, three = _net(2), _net(2, 5), _net(3)
    assert network_kind(two) == (2, 1) and network_kind(stack) == (2, 5) and network_kind(three) == (3, 1)
    assert type(default_inferer(two)) is SliceInferer2D and default_inferer(two).halo == 0
    assert type(default_inferer(stack)) is SliceStackInferer and default_inferer(stack).halo == 2
    window = default_inferer(three, roi_size=(8, 32, 32))
    assert type(window) is WindowInferer3D and window.halo == 4 and not window.slice_wise
    whole = default_inferer(three, roi_size=-1)
    assert whole.halo == 0 and whole.slab_depth(40, 8) == 40  # a whole-depth window: one slab
    # the window never exceeds the block; batch size from the voxel budget
    assert window.window((6, 20, 64)) == (6, 20, 32)
    assert SliceInferer2D(batch_pixels=4096).batch_size((32, 32), torch.device("cpu")) == 4
    with pytest.raises(ValueError, match="must have 1 or 3 entries"):
        WindowInferer3D(roi_size=(16, 16))
    with pytest.raises(ValueError, match="odd number"):
        SliceStackInferer(4)


def test_given_inferer_must_fit_the_network_and_gives_the_same_labels() -> None:
    with pytest.raises(ValueError, match="WindowInferer3D runs 3-D networks.*the network is 2-D"):
        TomogramSegmenter(_net(2), inferer=WindowInferer3D(), progress=False)
    with pytest.raises(ValueError, match="SliceStackInferer runs 2-D networks with 3 slice"):
        TomogramSegmenter(_net(2, 5), inferer=SliceStackInferer(3), progress=False)
    volume = generate_tomogram((6, 32, 48), 10.0, 3, mode="fourier")[0]
    common = dict(progress=False, invert="no", precision="fp32", model_voxel_size=10.0)
    default = TomogramSegmenter(_net(2, 5), roi_size=(32, 32), overlap=0.5, **common)
    given = TomogramSegmenter(_net(2, 5), inferer=SliceStackInferer(5, roi_size=32, overlap=0.5), **common)
    assert given.halo == default.halo == 2 and given.roi_size == (32, 32)
    assert np.array_equal(default.segment_array(volume, 10.0)[0], given.segment_array(volume, 10.0)[0])


def test_inference_config_runs_with_an_overridden_inferer(tmp_path: Path, tiny_bundle: Path, repo_root: Path):
    """inference.json's ``inferer`` is a part: override its arguments on the command line, or replace it."""
    src = tmp_path / "in" / "t1.mrc"
    src.parent.mkdir()
    volume = generate_tomogram((6, 32, 48), 10.0, 3, mode="fourier")[0]
    save_mrc(src, volume, voxel_size=10.0)
    out = tmp_path / "out"
    cmd = [
        sys.executable, "-m", "monai.bundle", "run", "--config_file",
        str(tiny_bundle / "configs" / "inference.json"), "--bundle_root", str(tiny_bundle),
        "--input", str(src), "--output_dir", str(out), "--progress", "false", "--invert", "no",
        "--inferer#mode", "constant", "--inferer#roi_size", "[16, 32]", "--inferer#overlap", "0.5",
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(repo_root))
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=repo_root, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    labels = np.asarray(read_mrc(out / "t1_seg.mrc")[0])
    # the same weights with that inferer given in Python
    torch.manual_seed(0)
    net = PaperUNet(2, SHIPPED_IN_CHANNELS, 6, features=FEATURES)
    inferer = SliceStackInferer(SHIPPED_IN_CHANNELS, roi_size=(16, 32), overlap=0.5, mode="constant")
    ref = TomogramSegmenter(net, model_path=tiny_bundle / "models" / "model.pt", inferer=inferer,
                            model_voxel_size=10.0, progress=False, invert="no", slab_size=16,
                            double_membrane_max_gap=500.0)  # the config's post-processing
    assert np.array_equal(ref.segment_array(volume, 10.0)[0], labels)

    # a custom inferer object in place of the config's
    parser = build_segmenter(tiny_bundle, input=str(src), output_dir=str(tmp_path / "forced"), progress=False,
                             invert="no")
    parser["inferer"] = ForcedClassInferer(label=3, context=SHIPPED_IN_CHANNELS)
    segmenter = parser.get_parsed_content("segmenter")
    (result,) = segmenter(parser.get_parsed_content("input"), parser.get_parsed_content("output_dir"))
    forced = np.asarray(read_mrc(result["seg"])[0])
    assert forced.shape == volume.shape and (forced == 3).all()


@pytest.mark.parametrize("spatial_dims, in_channels", [(2, 1), (2, 5), (3, 1)])
def test_model_folders_name_the_inferer_of_their_kind(tmp_path: Path, repo_root: Path, spatial_dims: int,
                                                      in_channels: int) -> None:
    """2-D, 2.5-D and 3-D run folders get a consistent inference.json: the inferer of their kind."""
    net = _net(spatial_dims, in_channels)
    folder = tmp_path / "run"
    (folder / "models").mkdir(parents=True)
    torch.save(net.state_dict(), folder / "models" / "model.pt")
    roi = [16, 32, 32] if spatial_dims == 3 else None
    write_model_configs(folder, net, repo_root / "configs" / "inference.json", roi_size=roi)
    config = json.loads((folder / "configs" / "inference.json").read_text())
    expected = WindowInferer3D if spatial_dims == 3 else SliceStackInferer
    assert config["inferer"]["_target_"].rsplit(".", 1)[1] == expected.__name__
    assert config["roi_size"] == (roi or [-1, -1]) and config["inferer"]["roi_size"] == "@roi_size"
    parser = build_segmenter(folder, progress=False, invert="no", backend="torch")
    segmenter = parser.get_parsed_content("segmenter")
    assert type(segmenter.inferer) is expected and segmenter.context == in_channels
    labels, result = segmenter.segment_array(generate_tomogram((8, 32, 32), 10.0, 1)[0], 10.0)
    assert labels.shape == (8, 32, 32) and result["shape"] == (8, 32, 32)
    if spatial_dims == 3:  # no 3-D roi given: the folder still gets a 3-D window
        write_model_configs(folder, net, repo_root / "configs" / "inference.json")
        assert json.loads((folder / "configs" / "inference.json").read_text())["roi_size"] == DEFAULT_ROI_3D


class PlaneCounter(torch.nn.Module):
    """A 2.5-D stand-in network that records how many planes it was asked for: class scores that vary
    with the input, so interpolated planes differ from predicted ones."""

    def __init__(self, context: int) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(context, 6, 3, padding=1)
        self.in_channels, self.spatial_dims, self.planes = context, 2, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.planes += x.shape[0]
        return self.conv(x)


def test_plane_stride_predicts_every_sth_plane_and_interpolates_the_others() -> None:
    """plane_stride s: the network sees planes 0, s, 2s, ... and the last of a block; the planes between
    are the linear blend of their neighbours (still distributions), the predicted ones unchanged."""
    torch.manual_seed(0)
    net = PlaneCounter(5).eval()
    block = torch.randn(1, 1, 9, 16, 16)
    softmax = lambda x: torch.softmax(net(x), 1)  # noqa: E731 - the window predictor's contract
    every = SliceStackInferer(5)(block, softmax)
    assert net.planes == 9
    net.planes = 0
    strided = SliceStackInferer(5, plane_stride=3)(block, softmax)
    assert net.planes == 4  # planes 0, 3, 6, 8
    assert strided.shape == every.shape
    for z in (0, 3, 6, 8):
        torch.testing.assert_close(strided[:, :, z], every[:, :, z])
    torch.testing.assert_close(strided[:, :, 4], every[:, :, 3] * 2 / 3 + every[:, :, 6] / 3)
    torch.testing.assert_close(strided[:, :, 7], (every[:, :, 6] + every[:, :, 8]) / 2)
    torch.testing.assert_close(strided.sum(1), torch.ones(1, 9, 16, 16))
    assert not torch.allclose(strided[:, :, 4], every[:, :, 4])  # really interpolated
    # only the planes kept are predicted; one plane alone is predicted as it is
    net.planes = 0
    kept = SliceStackInferer(5, plane_stride=2)(block, softmax, planes=(2, 7))
    assert kept.shape[2] == 5 and net.planes == 3  # planes 2, 4, 6
    torch.testing.assert_close(kept[:, :, 2], every[:, :, 4])
    torch.testing.assert_close(SliceStackInferer(5, plane_stride=2)(block, softmax, planes=(5, 6)),
                               every[:, :, 5:6])
    # slabs of m * s + 1 planes: both ends predicted, no plane predicted twice
    assert SliceStackInferer(5, plane_stride=2).slab_depth(184, 16) == 17
    assert SliceStackInferer(5, plane_stride=1).slab_depth(184, 16) == 16
    with pytest.raises(ValueError, match="plane_stride must be >= 1"):
        SliceInferer2D(plane_stride=0)


def test_a_reused_first_plane_is_not_predicted_again() -> None:
    """``first``: the plane a previous slab already predicted is taken as given; the planes up to the
    next predicted one interpolate from it. Inferers that blend halos refuse it."""
    torch.manual_seed(0)
    net = PlaneCounter(5).eval()
    block = torch.randn(1, 1, 9, 16, 16)
    softmax = lambda x: torch.softmax(net(x), 1)  # noqa: E731 - the window predictor's contract
    strided = SliceStackInferer(5, plane_stride=2)(block, softmax)
    net.planes = 0
    given = torch.full((1, 6, 16, 16), 1.0 / 6)
    reused = SliceStackInferer(5, plane_stride=2)(block, softmax, first=given)
    assert net.planes == 4  # planes 2, 4, 6, 8; not 0
    torch.testing.assert_close(reused[:, :, 0], given)
    torch.testing.assert_close(reused[:, :, 1], (given + strided[:, :, 2]) / 2)
    torch.testing.assert_close(reused[:, :, 2:], strided[:, :, 2:])
    net.planes = 0
    every = SliceStackInferer(5)(block, softmax, planes=(3, 6), first=given)
    assert net.planes == 2 and every.shape[2] == 3
    torch.testing.assert_close(every[:, :, 0], given)
    alone = SliceStackInferer(5, plane_stride=2)(block, softmax, planes=(3, 4), first=given)
    torch.testing.assert_close(alone[:, :, 0], given)
    with pytest.raises(ValueError, match="cannot reuse a plane"):
        WindowInferer3D(roi_size=(4, 16, 16))(block, softmax, first=given)


def test_strided_slabs_share_their_end_planes(tmp_path: Path) -> None:
    """With plane_stride s, consecutive slabs share an end plane: every s-th plane of the tomogram is
    predicted once, and slab by slab gives the probabilities of one slab over the whole volume."""
    from cryoet_monai.inference.engine import slab_ranges

    assert list(slab_ranges(23, 5, 2, shared=True)) == [
        (0, 5, 0, 7), (4, 9, 2, 11), (8, 13, 6, 15), (12, 17, 10, 19), (16, 21, 14, 23), (20, 23, 18, 23)]
    assert [r[:2] for r in slab_ranges(21, 5, 0, shared=True)] == [
        (0, 5), (4, 9), (8, 13), (12, 17), (16, 21)]
    assert [r[:2] for r in slab_ranges(10, 5, 0, 3, 4, shared=True)] == [(3, 4)]
    assert list(slab_ranges(10, 5, 0, 3, 3, shared=True)) == []  # no planes, no slab
    assert [r[:2] for r in slab_ranges(10, 5, 0)] == [(0, 5), (5, 10)]
    src = tmp_path / "t.mrc"
    save_mrc(src, generate_tomogram((23, 32, 32), 10.0, 5, mode="fourier")[0], voxel_size=10.0)
    probs, planes = [], []
    for slab_size in (4, 64):  # slabs of 5 planes, or one slab
        torch.manual_seed(0)
        net = PlaneCounter(5).eval()
        seg = TomogramSegmenter(net, inferer=SliceStackInferer(5, plane_stride=2), slab_size=slab_size,
                                progress=False, invert="no", precision="fp32", model_voxel_size=10.0,
                                sample_extent=False, save_probs=True, fold_bn=False)
        result = seg.segment(src, tmp_path / f"slab{slab_size}")
        probs.append(np.asarray(read_mrc(result["probs"])[0], dtype=np.float32))
        planes.append(net.planes)
        assert seg.network_planes(23) == net.planes  # the plan counts what the segmenter runs
        assert seg.slab_plan(23, (0.5, 1.0, 1.0))[1] is False  # resampled: independent slabs
    assert planes == [12, 12]  # planes 0, 2, ..., 22 (independent slabs of 5 would predict 14)
    np.testing.assert_allclose(probs[0], probs[1], atol=1e-3)
    assert probs[0].shape == (6, 23, 32, 32)
    # a custom inferer whose __call__ does not take ``first`` keeps independent slabs
    forced = ForcedClassInferer(label=2, context=5, plane_stride=2)
    assert SliceStackInferer(5, plane_stride=2).reuses_first_plane and not forced.reuses_first_plane
    assert not WindowInferer3D().reuses_first_plane
    seg = TomogramSegmenter(PlaneCounter(5).eval(), inferer=forced, slab_size=4, progress=False, invert="no",
                            precision="fp32", model_voxel_size=10.0, sample_extent=False, fold_bn=False)
    assert (seg.segment_array(np.asarray(read_mrc(src)[0]), 10.0)[0] == 2).all()
    assert seg.network_planes(23) == 14 and seg.network_planes(23, 3, 8) == 3  # planes 3, 5, 7
    assert forced.run_planes(5) == [0, 2, 4] and forced.run_planes(5, reuse_first=True) == [2, 4]
    assert WindowInferer3D().run_planes(5) is None and SliceStackInferer(5).run_planes(3, True) == [1, 2]


def test_plane_stride_from_the_command_line_options() -> None:
    """``segment --plane-stride S`` is parsed (S >= 1) and, as the ``plane_stride`` override ``segment``
    passes on, reaches the bundle's inferer (default 2, every other plane)."""
    from cryoet_monai.cli import build_parser

    args = build_parser().parse_args(["segment", "t.mrc", "-o", "out", "--plane-stride", "3"])
    assert args.plane_stride == 3
    assert build_parser().parse_args(["segment", "t.mrc", "-o", "out"]).plane_stride is None
    with pytest.raises(SystemExit):
        build_parser().parse_args(["segment", "t.mrc", "-o", "out", "--plane-stride", "0"])
    parser = build_segmenter(None, plane_stride=3, progress=False, invert="no", backend="torch")
    segmenter = parser.get_parsed_content("segmenter")
    assert segmenter.inferer.plane_stride == 3 and "plane_stride=3" in repr(segmenter.inferer)
    assert build_segmenter(None, progress=False).get_parsed_content("segmenter").inferer.plane_stride == 2
