"""Whole-tomogram inference: streaming vs whole-volume, geometry, odd sizes, TTA, precision, bad input."""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from scipy import ndimage

from cryoet_monai import PaperUNet
from cryoet_monai.data.synthetic import generate_tomogram
from cryoet_monai.engines.data import write_datalist
from cryoet_monai.inference import (
    InferenceError,
    TomogramSegmenter,
    find_inputs,
    output_stem,
    remove_small_components,
    shard,
)
from cryoet_monai.inference.predictor import fold_batch_norm
from cryoet_monai.io.mrc import is_mrc_path, mrc_stem, read_mrc, save_mrc

FEATURES = (4, 8, 16, 32, 64)
# documented bf16-vs-fp32 tolerance (docs/inference.md): probabilities within 0.05, labels equal
# wherever the fp32 top-1/top-2 probability margin is at least 0.1
BF16_MAX_ABS_PROB = 0.05
BF16_SAFE_MARGIN = 0.1

pytestmark = pytest.mark.usefixtures("single_thread")


def _net(spatial_dims: int = 2, seed: int = 0) -> PaperUNet:
    torch.manual_seed(seed)
    return PaperUNet(spatial_dims, 1, 6, features=FEATURES, dropout=0.0)


def _smooth(shape, seed: int = 0, sigma: float = 2.0) -> np.ndarray:
    """Smooth random structure in raw (un-normalised) units, like a reconstruction."""
    rng = np.random.default_rng(seed)
    vol = ndimage.gaussian_filter(rng.normal(size=shape), sigma)
    return (vol / vol.std() * 40.0 + 120.0).astype(np.float32)


def _tomogram(shape, seed: int = 0) -> np.ndarray:
    """A synthetic tomogram from the project's generator."""
    return generate_tomogram(shape=shape, voxel_size=10.0, seed=seed)[0]


class _ConvNet(nn.Module):
    """A one-layer 3x3 convolution: confident away from decision boundaries, cheap, 2-D."""

    spatial_dims = 2
    size_divisible = 16

    def __init__(self, asymmetry: float = 1.0, scale: float = 8.0, seed: int = 0) -> None:
        """``asymmetry`` 0: a kernel invariant under in-plane flips/rotations; 1: a random kernel."""
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        w = torch.randn(6, 1, 3, 3, generator=g)
        # the average over the dihedral group of the plane is an invariant kernel
        symmetric = torch.stack(
            [torch.rot90(v, k, (-2, -1)) for v in (w, w.flip(-1)) for k in range(4)]
        ).mean(0)
        w = symmetric + asymmetry * (w - symmetric)
        self.conv = nn.Conv2d(1, 6, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.copy_(w * scale)
            self.conv.bias.copy_(torch.linspace(-1, 1, 6, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def _segmenter(net: nn.Module, **kwargs) -> TomogramSegmenter:
    kwargs.setdefault("precision", "fp32")
    kwargs.setdefault("progress", False)
    kwargs.setdefault("model_voxel_size", 10.0)
    return TomogramSegmenter(net, **kwargs)


def _whole(seg: TomogramSegmenter, path: Path, scale=(1.0, 1.0, 1.0)) -> torch.Tensor:
    """Reference: normalise and predict the whole volume in one inferer call."""
    vol, _ = read_mrc(path, mmap=False)
    norm = seg.normalizer.fit(vol)
    return seg.predict(norm(vol.astype(np.float32)), scale)


@pytest.fixture
def model_path(tmp_path: Path) -> Path:
    path = tmp_path / "model.pt"
    torch.save(_net().state_dict(), path)
    return path


def test_streaming_equals_whole_volume(tmp_path: Path, model_path: Path) -> None:
    vol = _tomogram((20, 64, 64), seed=1)
    src = tmp_path / "tomo.mrc"
    save_mrc(src, vol, voxel_size=(9.8, 10.0, 10.2), origin=(30.0, -20.0, 10.0))
    seg = _segmenter(
        _net(seed=1),
        model_path=model_path,  # the saved weights (seed 0) replace the seed-1 initialisation
        roi_size=(32, 32),
        overlap=0.25,
        slab_size=3,
        sw_batch_size=5,
        save_probs=True,
        save_uncertainty=True,
    )
    (result,) = seg(src, tmp_path / "out")
    labels, meta = read_mrc(result["seg"])
    probs, pmeta = read_mrc(result["probs"])
    unc, umeta = read_mrc(result["uncertainty"])
    assert labels.shape == vol.shape and probs.shape == (6, *vol.shape) and unc.shape == vol.shape
    for m in (meta, pmeta, umeta):
        np.testing.assert_allclose(m["voxel_size"], (9.8, 10.0, 10.2), rtol=1e-6)
        np.testing.assert_allclose(m["origin"], (30.0, -20.0, 10.0), atol=1e-4)
    assert probs.dtype == np.float16

    ref = _whole(seg, src)  # same weights: the segmenter loaded model_path into its network
    np.testing.assert_allclose(probs.astype(np.float32), ref.numpy(), atol=2e-3)
    assert (np.asarray(labels) == ref.argmax(0).numpy()).mean() > 0.999
    p = ref.clamp_min(1e-12)
    entropy = -(p * p.log()).sum(0) / np.log(6)
    np.testing.assert_allclose(unc.astype(np.float32), entropy.numpy(), atol=2e-3)
    fractions = result["class_fractions"]
    assert abs(sum(fractions.values()) - 1.0) < 1e-9
    counts = np.bincount(np.asarray(labels).ravel(), minlength=6)
    assert fractions["background"] == pytest.approx(counts[0] / labels.size)


def test_3d_slabs_with_halo_match_whole_volume(tmp_path: Path) -> None:
    vol = _smooth((24, 32, 32), seed=2)
    src = tmp_path / "tomo3d.mrc"
    save_mrc(src, vol, voxel_size=10.0)
    seg = _segmenter(_net(3, seed=2), roi_size=(16, 32, 32), overlap=0.5, slab_size=6, save_probs=True)
    (result,) = seg(src, tmp_path / "out")
    probs, _ = read_mrc(result["probs"])
    ref = _whole(seg, src)
    # different window placements, blended: close but not bit-identical
    diff = np.abs(probs.astype(np.float32) - ref.numpy())
    assert diff.mean() < 2e-3 and diff.max() < 0.05
    assert (np.asarray(read_mrc(result["seg"])[0]) == ref.argmax(0).numpy()).mean() > 0.97


@pytest.mark.parametrize(
    "spatial_dims, shape, roi",
    [(2, (37, 301, 299), (-1, -1)), (2, (20, 20, 20), (512, 512)), (3, (20, 20, 20), (32, 64, 64))],
)
def test_odd_and_tiny_sizes(tmp_path: Path, spatial_dims: int, shape, roi) -> None:
    vol = _smooth(shape, seed=3)
    src = tmp_path / "odd.mrc"
    save_mrc(src, vol, voxel_size=10.0, origin=(1.0, 2.0, 3.0))
    seg = _segmenter(_net(spatial_dims), roi_size=roi, slab_size=4)
    (result,) = seg(src, tmp_path)
    labels, meta = read_mrc(result["seg"])
    assert labels.shape == shape and meta["voxel_size"] == (10.0, 10.0, 10.0)
    np.testing.assert_allclose(meta["origin"], (1.0, 2.0, 3.0), atol=1e-4)
    if spatial_dims == 2:  # 2-D: slab-wise labels are exactly the whole-volume ones
        ref = _whole(seg, src).argmax(0).numpy()
        assert (np.asarray(labels) == ref).mean() > 0.999
    assert set(np.unique(labels)) <= set(range(6))


def test_tta_equivariant_network_is_unchanged(tmp_path: Path) -> None:
    vol = _smooth((4, 48, 40), seed=4)  # non-square: rotations change the window shape
    src = tmp_path / "t.mrc"
    save_mrc(src, vol, voxel_size=10.0)
    net = _ConvNet(asymmetry=0.0)
    plain = _whole(_segmenter(net), src)
    tta = _whole(_segmenter(net, tta=True), src)
    np.testing.assert_allclose(tta.numpy(), plain.numpy(), atol=1e-5)  # the inverse transforms are right


def test_tta_changes_labels_only_where_uncertain(tmp_path: Path) -> None:
    vol = _smooth((4, 64, 64), seed=5, sigma=1.5)
    src = tmp_path / "t.mrc"
    save_mrc(src, vol, voxel_size=10.0)
    # a nearly (not exactly) rotation-equivariant model, like a trained one
    net = _ConvNet(asymmetry=0.1)
    plain = _whole(_segmenter(net), src)
    tta = _whole(_segmenter(net, tta=8), src)
    changed = (plain.argmax(0) != tta.argmax(0)).numpy()
    assert 0.01 < changed.mean() < 0.2
    top2 = plain.topk(2, dim=0).values
    margin = (top2[0] - top2[1]).numpy()
    # labels flip where the plain prediction was a near tie, not where it was confident ...
    assert np.median(margin[changed]) < 0.3 and np.median(margin[~changed]) > 0.9
    assert np.quantile(margin[changed], 0.95) < 0.8
    # ... and where the uncertainty map (entropy of the TTA mean) is high
    p = tta.clamp_min(1e-12)
    entropy = (-(p * p.log()).sum(0) / np.log(6)).numpy()
    assert entropy[changed].mean() > 3 * entropy[~changed].mean()


def test_bf16_matches_fp32_within_tolerance(tmp_path: Path) -> None:
    vol = _tomogram((8, 64, 64), seed=6)
    src = tmp_path / "t.mrc"
    save_mrc(src, vol, voxel_size=10.0)
    net = _net(seed=6)
    fp32 = _whole(_segmenter(net, precision="fp32"), src)
    bf16 = _whole(_segmenter(net, precision="bf16"), src)
    assert _segmenter(net, precision="bf16").autocast_dtype == torch.bfloat16
    diff = (fp32 - bf16).abs()
    assert 0 < diff.max() <= BF16_MAX_ABS_PROB  # bf16 really ran, and stayed close
    top2 = fp32.topk(2, dim=0).values
    safe = (top2[0] - top2[1]) >= BF16_SAFE_MARGIN
    assert torch.equal(fp32.argmax(0)[safe], bf16.argmax(0)[safe])


def test_resampling_to_model_voxel_size(tmp_path: Path) -> None:
    net = _ConvNet()
    coarse = _smooth((3, 48, 48), seed=7, sigma=1.5)
    fine = ndimage.zoom(coarse, (1, 2, 2), order=1).astype(np.float32)  # same object at 5 Å
    save_mrc(tmp_path / "coarse.mrc", coarse, voxel_size=10.0)
    save_mrc(tmp_path / "fine.mrc", fine, voxel_size=5.0)
    seg = _segmenter(net)
    (r_coarse, r_fine) = seg([tmp_path / "coarse.mrc", tmp_path / "fine.mrc"], tmp_path / "out")
    assert not r_coarse["resampled"] and r_fine["resampled"]
    lab_c = np.asarray(read_mrc(r_coarse["seg"])[0])
    lab_f = np.asarray(read_mrc(r_fine["seg"])[0])
    assert lab_f.shape == fine.shape
    agree = (lab_f[:, ::2, ::2] == lab_c).mean()
    # opt-out: the 5 Å file predicted as is sees different structure sizes
    (r_raw,) = _segmenter(net, resample=False)(tmp_path / "fine.mrc", tmp_path / "raw")
    assert not r_raw["resampled"]
    agree_raw = (np.asarray(read_mrc(r_raw["seg"])[0])[:, ::2, ::2] == lab_c).mean()
    assert agree > 0.88 and agree > agree_raw + 0.08  # measured: 0.92 vs 0.80


def test_bad_files_are_reported_and_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture
) -> None:
    good = tmp_path / "good.mrc"
    save_mrc(good, _smooth((4, 32, 32)), voxel_size=10.0)
    garbage = tmp_path / "garbage.mrc"
    garbage.write_bytes(b"not an mrc file at all" * 10)
    flat = tmp_path / "flat.mrc"
    save_mrc(flat, _smooth((1, 32, 32))[0], voxel_size=10.0)  # a 2-D image
    novs = tmp_path / "novoxel.mrc"
    save_mrc(novs, _smooth((4, 32, 32)), voxel_size=10.0)
    import mrcfile

    with mrcfile.open(novs, "r+") as m:  # a header voxel size of 0
        m.voxel_size = 0.0
    missing = tmp_path / "missing.mrc"
    seg = _segmenter(_net())
    results = seg([garbage, good, flat, novs, missing], tmp_path / "out")
    by_name = {Path(r["input"]).name: r for r in results}
    assert "error" not in by_name["good.mrc"] and Path(by_name["good.mrc"]["seg"]).is_file()
    for name in ("garbage.mrc", "flat.mrc", "novoxel.mrc", "missing.mrc"):
        assert name in by_name[name]["error"]
    assert "voxel size" in by_name["novoxel.mrc"]["error"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good_seg.mrc"]
    captured = capsys.readouterr()
    out = captured.out
    assert out.count("ERROR") == 4 and "good.mrc: 4x32x32" in out
    # one line per failure: nothing about the skipped files at WARNING or above in the log
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and "skipped" in r.getMessage()]
    assert "garbage.mrc" not in captured.err
    # the user's voxel size makes the 0-voxel-size file usable
    (r,) = _segmenter(_net(), voxel_size=10.0)(novs, tmp_path / "out2")
    assert read_mrc(r["seg"])[1]["voxel_size"] == (10.0, 10.0, 10.0)
    with pytest.raises(InferenceError, match="no tomogram could be segmented"):
        seg([garbage], tmp_path / "out3")


class _Interrupted(Exception):
    pass


def test_interrupted_run_leaves_no_output(tmp_path: Path) -> None:
    src = tmp_path / "t.mrc"
    save_mrc(src, _smooth((12, 32, 32)), voxel_size=10.0)
    net = _net()
    calls = {"n": 0}

    def hook(module, inputs):  # fail on the third forward pass, mid-tomogram
        calls["n"] += 1
        if calls["n"] == 3:
            raise _Interrupted

    net.register_forward_pre_hook(hook)
    seg = _segmenter(net, slab_size=2, sw_batch_size=2, save_probs=True, save_uncertainty=True)
    out = tmp_path / "out"
    with pytest.raises(_Interrupted):
        seg.segment(src, out)
    assert calls["n"] == 3 and list(out.iterdir()) == []  # neither final nor temporary files


_LABELLERS = ["scipy", pytest.param("cc3d", marks=pytest.mark.skipif(
    importlib.util.find_spec("cc3d") is None, reason="connected-components-3d (cpu extra) not installed"))]


@pytest.mark.parametrize("labeller", _LABELLERS)
@pytest.mark.parametrize("dtype", [np.uint8, np.int16])
@pytest.mark.parametrize("thresholds", [[0, 5, 20, 0, 3, 50], [0, 4, 4, 4, 4, 4]])
def test_remove_small_components_matches_whole_volume_labelling(labeller: str, dtype: type,
                                                                 thresholds: list[int]) -> None:
    rng = np.random.default_rng(8)
    seg = ((ndimage.uniform_filter(rng.random((23, 20, 21)), 3) * 12).astype(np.uint8) % 6).astype(dtype)
    seg[0, 0, :3] = 7  # a value outside the classes: left untouched, never labelled
    expected = seg.copy()
    for c in range(1, 6):
        if thresholds[c]:
            lab, _ = ndimage.label(seg == c)
            sizes = np.bincount(lab.ravel())
            expected[(lab > 0) & (sizes[lab] < thresholds[c])] = 0
    got = seg.copy()
    counts = remove_small_components(got, thresholds, slab=4, labeller=labeller)
    assert (got != seg).any() and (got[0, 0, :3] == 7).all()
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(counts, np.bincount(expected.ravel(), minlength=8)[:6])


def test_remove_small_components_rejects_an_unknown_labeller() -> None:
    with pytest.raises(ValueError, match="labeller must be"):
        remove_small_components(np.zeros((2, 4, 4), np.uint8), 3, labeller="skimage")


def test_min_component_size_in_segmenter(tmp_path: Path) -> None:
    src = tmp_path / "t.mrc"
    save_mrc(src, _smooth((6, 32, 32), seed=9, sigma=1.0), voxel_size=10.0)
    net = _ConvNet()
    (plain,) = _segmenter(net)(src, tmp_path / "a")
    (clean,) = _segmenter(net, min_component_size=30)(src, tmp_path / "b")
    a, b = np.asarray(read_mrc(plain["seg"])[0]), np.asarray(read_mrc(clean["seg"])[0])
    expected = a.astype(np.uint8).copy()
    remove_small_components(expected, 30)
    np.testing.assert_array_equal(b, expected)
    assert (a != b).any() and clean["class_fractions"]["background"] > plain["class_fractions"]["background"]


def test_find_inputs_and_shard(tmp_path: Path) -> None:
    for name in ("b.mrc", "a.rec", "c.mrc.gz", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    assert [p.name for p in find_inputs(tmp_path)] == ["a.rec", "b.mrc", "c.mrc.gz"]
    assert [p.name for p in find_inputs(str(tmp_path / "*.mrc"))] == ["b.mrc"]
    datalist = tmp_path / "sub" / "datalist.json"
    datalist.write_text(
        json.dumps({"training": [{"image": "x.mrc"}], "test": [{"image": "../b.mrc"}, "y.mrc"]})
    )
    assert find_inputs(datalist) == [tmp_path / "sub" / "../b.mrc", tmp_path / "sub" / "y.mrc"]
    assert [output_stem(p) for p in ("t1.mrc.gz", "t2.rec", "t.3.mrc")] == ["t1", "t2", "t.3"]
    files = [Path(f"{i}.mrc") for i in range(5)]
    assert shard(files, 1, 2) == [Path("1.mrc"), Path("3.mrc")]
    assert sorted(shard(files, 0, 3) + shard(files, 1, 3) + shard(files, 2, 3)) == sorted(files)


def test_torchrun_ranks_share_the_inputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for i in range(3):
        save_mrc(tmp_path / f"t{i}.mrc", _smooth((2, 16, 16), seed=i), voxel_size=10.0)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    results = _segmenter(_ConvNet())(tmp_path, tmp_path / "out")
    assert [Path(r["input"]).name for r in results] == ["t1.mrc"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["t1_seg.mrc"]


def test_checkpoint_of_another_network_is_a_clear_error(tmp_path: Path) -> None:
    """A model.pt trained with other widths than network_def names the file, not a torch traceback."""
    path = tmp_path / "wide.pt"
    torch.manual_seed(0)
    torch.save(PaperUNet(2, 1, 6, features=(8, 16, 32, 64, 128)).state_dict(), path)
    with pytest.raises(InferenceError, match=r"wide\.pt: the checkpoint does not fit.*network_def"):
        _segmenter(_net(), model_path=path)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_fold_batch_norm_keeps_the_function(spatial_dims: int) -> None:
    """Every batch norm of a PaperUNet is folded into its conv; eval-mode logits stay the same, the
    input network is not modified, and other norms are left alone."""
    net = _net(spatial_dims, seed=1)
    shape = (2, 1, *([16] * spatial_dims))
    with torch.no_grad():  # running statistics other than (0, 1), so that folding changes the weights
        for _ in range(2):
            net(3.0 * torch.randn(shape) + 1.0)
    net.eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    norms = (nn.BatchNorm2d, nn.BatchNorm3d)
    n_norms = sum(isinstance(m, norms) for m in net.modules())
    assert n_norms == 4 * len(FEATURES) - 2  # two per double conv, encoder and decoder

    folded = fold_batch_norm(net)
    assert not any(isinstance(m, norms) for m in folded.modules())
    n_identity = sum(isinstance(m, nn.Identity) for m in folded.modules())
    assert n_identity == n_norms + sum(isinstance(m, nn.Identity) for m in net.modules())
    assert net.state_dict().keys() == before.keys()
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    x = torch.randn(1, 1, *([32] * spatial_dims))
    with torch.no_grad():
        torch.testing.assert_close(folded(x), net(x), rtol=1e-4, atol=1e-5)

    grouped = PaperUNet(spatial_dims, 1, 6, features=FEATURES, norm=("group", {"num_groups": 2}))
    assert [type(m) for m in fold_batch_norm(grouped).modules()] == [type(m) for m in grouped.modules()]


def test_every_reader_suffix_is_found_and_named(tmp_path: Path) -> None:
    """Folder inputs take every suffix the reader takes (+ .gz/.bz2); output names drop all of it."""
    vol = _smooth((3, 16, 16), seed=3)
    names = ["a.ccp4", "b.rec.bz2", "c.st.gz", "d.mrc.gz"]
    for name in names:  # save_mrc compresses by suffix
        save_mrc(_mkdir(tmp_path / "in") / name, vol, voxel_size=10.0)
    (tmp_path / "in" / "notes.txt").write_text("not a tomogram")
    assert [p.name for p in find_inputs(tmp_path / "in")] == names
    assert [mrc_stem(n) for n in names] == ["a", "b", "c", "d"] and not is_mrc_path("notes.txt")
    save_mrc(tmp_path / "ref.mrc", vol, voxel_size=10.0)
    seg = _segmenter(_ConvNet())
    (ref,) = seg(tmp_path / "ref.mrc", tmp_path / "ref")
    results = seg(tmp_path / "in", tmp_path / "out")
    assert all("error" not in r for r in results)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "a_seg.mrc",
        "b_seg.mrc",
        "c_seg.mrc",
        "d_seg.mrc",
    ]
    expected = np.asarray(read_mrc(ref["seg"])[0])
    for r in results:
        np.testing.assert_array_equal(np.asarray(read_mrc(r["seg"])[0]), expected)
    # the training datalist pairs the same suffixes by the same stem
    for folder, name in (
        ("images", "t1.ccp4"),
        ("images", "t2.rec.bz2"),
        ("labels", "t1.mrc"),
        ("labels", "t2.st.gz"),
    ):
        save_mrc(
            _mkdir(tmp_path / "ds" / folder) / name,
            vol if folder == "images" else (vol > 120).astype(np.uint8),
        )
    content = json.loads(write_datalist(tmp_path / "ds", val_fraction=0.5).read_text())
    pairs = sorted((e["image"], e["label"]) for e in content["training"] + content["validation"])
    assert pairs == [("images/t1.ccp4", "labels/t1.mrc"), ("images/t2.rec.bz2", "labels/t2.st.gz")]


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_output_name_collisions_are_refused_before_writing(tmp_path: Path) -> None:
    for name in ("a/tomo.mrc", "b/tomo.mrc", "c/x.mrc", "c/x.rec"):
        save_mrc(_mkdir((tmp_path / name).parent) / Path(name).name, _smooth((2, 16, 16)), voxel_size=10.0)
    seg = _segmenter(_ConvNet())
    out = tmp_path / "out"
    with pytest.raises(InferenceError, match=r"tomo_seg\.mrc <- .*a/tomo\.mrc, .*b/tomo\.mrc"):
        seg([tmp_path / "a" / "tomo.mrc", tmp_path / "b" / "tomo.mrc"], out)
    with pytest.raises(InferenceError, match=r"x_seg\.mrc <- .*c/x\.mrc, .*c/x\.rec"):
        seg(tmp_path / "c", out)
    assert not out.exists()
    # the same file under two spellings is not a clash
    results = seg([tmp_path / "a" / "tomo.mrc", tmp_path / "b" / ".." / "a" / "tomo.mrc"], out)
    assert [p.name for p in out.iterdir()] == ["tomo_seg.mrc"] and all("error" not in r for r in results)


def test_empty_folder_and_unmatched_glob_are_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    empty = _mkdir(tmp_path / "empty")
    (empty / "readme.txt").write_text("no tomograms here")
    pattern = str(tmp_path / "nothing*.mrc")
    assert find_inputs([empty, pattern]) == [empty, Path(pattern)]
    good = tmp_path / "good.mrc"
    save_mrc(good, _smooth((2, 16, 16)), voxel_size=10.0)
    seg = _segmenter(_ConvNet())
    results = seg([empty, good, pattern], tmp_path / "out")
    errors = {r["input"]: r["error"] for r in results if "error" in r}
    assert "folder contains no MRC tomograms" in errors[str(empty)]
    assert "no file matches this pattern" in errors[pattern]
    assert [Path(r["input"]).name for r in results if "error" not in r] == ["good.mrc"]
    assert capsys.readouterr().out.count("ERROR  skipped") == 2
    with pytest.raises(InferenceError, match="no tomogram could be segmented"):
        seg(empty, tmp_path / "out2")
    with pytest.raises(InferenceError, match="no input tomograms"):
        seg([], tmp_path / "out3")


@pytest.mark.parametrize(
    "voxel_size", [0.0, -10.0, float("nan"), float("inf"), (10.0, 0.0, 10.0), (1.0, 2.0)]
)
def test_bad_voxel_size_is_refused(voxel_size) -> None:
    match = "one value or" if voxel_size == (1.0, 2.0) else "positive and finite"
    with pytest.raises(InferenceError, match=match):
        _segmenter(_ConvNet(), voxel_size=voxel_size)


def test_bad_options_are_refused_with_clear_errors() -> None:
    with pytest.raises(ValueError, match=r"overlap must be in \[0, 1\)"):
        _segmenter(_ConvNet(), overlap=1.5)
    with pytest.raises(ValueError, match="tta must be a count of 1 to 8"):
        _segmenter(_ConvNet(), tta=20)
    with pytest.raises(ValueError, match="roi_size .* must have 1 or 2 entries"):
        _segmenter(_ConvNet(), roi_size=(32, 32, 32))
    assert _segmenter(_ConvNet(), roi_size=[32]).roi_size == (32, 32)
    assert _segmenter(_ConvNet(), tta=False).predictor is not None
    if not torch.cuda.is_available():
        with pytest.raises(InferenceError, match="CUDA requested .* but torch has no CUDA device"):
            _segmenter(_ConvNet(), device="cuda")
