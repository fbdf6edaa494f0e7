"""Pieces behind the transferable model: precision rule, style augmentation, 2.5-D input,
transfer scoring, and the shipped model on the real microtubule crops."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from cryoet_monai import PaperUNet
from cryoet_monai.engines import AutocastInferer
from cryoet_monai.evaluation.transfer import (
    evaluate_real_crops,
    evaluate_styles,
    score_volume,
    style_tomograms,
    summarise_scores,
)
from cryoet_monai.inference import TomogramSegmenter
from cryoet_monai.io.mrc import read_mrc, save_mrc
from cryoet_monai.precision import cpu_has_native_bf16, parse_bool, resolve_autocast_dtype
from cryoet_monai.transforms import (
    RandBandPass,
    RandBandPassd,
    RandSpectralNoise,
    SlicesToChannelsd,
    StackSlices,
)

pytestmark = pytest.mark.usefixtures("single_thread")


def test_precision_rule_is_native_or_fp32():
    auto = resolve_autocast_dtype("auto", "cpu")
    assert auto == (torch.bfloat16 if cpu_has_native_bf16() else None)
    assert resolve_autocast_dtype("fp32", "cpu") is None
    assert resolve_autocast_dtype("bf16", "cpu") == torch.bfloat16
    with pytest.raises(ValueError, match="precision"):
        resolve_autocast_dtype("int4", "cpu")
    # the training inferer follows the same rule
    assert AutocastInferer(device_type="cpu").enabled == (auto is not None)


@pytest.mark.parametrize("cap, native", [("AVX2", False), ("avx512_core_vnni", False), ("ALL", None),
                                         ("AVX512_CORE_BF16", None)])
def test_precision_rule_honours_the_onednn_isa_cap(monkeypatch, cap, native):
    """Capped below AVX512_CORE_BF16 (how an AVX2-only CPU is emulated), oneDNN emulates bf16: fp32."""
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    uncapped = cpu_has_native_bf16()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    assert cpu_has_native_bf16() is (uncapped if native is None else native)
    if native is False:
        assert resolve_autocast_dtype("auto", "cpu") is None
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    monkeypatch.setenv("DNNL_MAX_CPU_ISA", cap)  # the older name
    assert cpu_has_native_bf16() is (uncapped if native is None else native)


@pytest.mark.parametrize("value, expected", [(True, True), ("false", False), ("True", True), ("0", False),
                                             (1, True), ("off", False)])
def test_config_booleans_are_parsed_strictly(value, expected):
    assert parse_bool(value, "amp") is expected
    assert AutocastInferer(enabled=value, dtype=torch.bfloat16).enabled is expected


@pytest.mark.parametrize("value", ["flase", "2", 2, None, "yes please"])
def test_bad_config_booleans_are_refused(value):
    with pytest.raises(ValueError, match="amp: expected a boolean"):
        AutocastInferer(enabled=value)


def _power(x: torch.Tensor, lo: float, hi: float) -> float:
    spec = torch.fft.rfft2(x).abs() ** 2
    ky = torch.fft.fftfreq(x.shape[-2])[:, None]
    kx = torch.fft.rfftfreq(x.shape[-1])[None, :]
    k = torch.sqrt(ky**2 + kx**2)
    return float(spec[..., (k >= lo) & (k < hi)].mean())


def test_band_pass_damps_high_frequencies_and_keeps_unit_variance():
    x = torch.randn(3, 96, 96)
    t = RandBandPass(prob=1.0, lowpass_range=(5.0, 5.0), highpass_range=(400.0, 400.0),
                     boost_range=(0.0, 0.0))
    y = t(x)
    assert y.shape == x.shape and abs(float(y.mean())) < 1e-5 and abs(float(y.std()) - 1) < 1e-4
    # a 5-pixel low-pass: power beyond 0.2 cycles/pixel falls by orders of magnitude against below 0.05
    assert _power(y, 0.3, 0.5) / _power(y, 0.02, 0.05) < 0.01
    assert _power(x, 0.3, 0.5) / _power(x, 0.02, 0.05) > 0.5
    # the dictionary twin draws once for all keys and is reproducible
    d = RandBandPassd(["a", "b"], prob=1.0).set_random_state(3)
    out = d({"a": x, "b": x.clone()})
    assert torch.allclose(out["a"], out["b"])
    again = RandBandPassd(["a"], prob=1.0).set_random_state(3)({"a": x})
    assert torch.allclose(out["a"], again["a"])


def test_spectral_noise_colour_follows_alpha():
    x = torch.zeros(1, 128, 128)
    x[0, 64, 64] = 1.0  # a nearly empty image: the output is mostly the noise
    red = RandSpectralNoise(prob=1.0, std_range=(5.0, 5.0), alpha_range=(-2.0, -2.0)).set_random_state(0)(x)
    blue = RandSpectralNoise(prob=1.0, std_range=(5.0, 5.0), alpha_range=(1.0, 1.0)).set_random_state(0)(x)
    ratio = lambda y: _power(y, 0.01, 0.05) / _power(y, 0.3, 0.5)  # noqa: E731
    assert ratio(red) > 100 * ratio(blue)


def test_stack_slices_and_training_crops():
    vol = torch.arange(6.0)[None, :, None, None].expand(1, 6, 2, 3)
    stacked = StackSlices(3)(vol)
    assert stacked.shape == (3, 6, 2, 3)
    assert stacked[:, :, 0, 0].tolist() == [[0, 0, 1, 2, 3, 4], [0, 1, 2, 3, 4, 5], [1, 2, 3, 4, 5, 5]]
    with pytest.raises(ValueError, match="odd"):
        StackSlices(4)
    labels = torch.arange(5)[None, :, None, None].expand(1, 5, 8, 8)
    crop = {"image": torch.randn(1, 5, 8, 8), "label": labels}
    out = SlicesToChannelsd("image", label_keys="label")(crop)
    assert out["image"].shape == (5, 8, 8) and out["label"].shape == (1, 8, 8)
    assert out["label"].unique().tolist() == [2]  # the centre slice's label


def test_2p5d_streaming_equals_whole_volume(tmp_path: Path):
    """Slab by slab (halo = k // 2 of context) gives exactly the labels of one pass over the volume."""
    torch.manual_seed(0)
    net = PaperUNet(spatial_dims=2, in_channels=5, out_channels=6, features=[8, 8, 16, 16, 32]).eval()
    rng = np.random.default_rng(0)
    image = rng.standard_normal((13, 32, 48)).astype(np.float32)
    path = tmp_path / "t.mrc"
    save_mrc(path, image, voxel_size=10.0)
    seg = TomogramSegmenter(net, model_voxel_size=10.0, progress=False, slab_size=3, precision="fp32")
    assert seg.context == 5 and seg.halo == 2
    result = seg.segment(path, tmp_path / "out")
    labels, _ = read_mrc(result["seg"], mmap=False)
    norm = seg.normalizer.fit(image, name=str(path))
    whole = seg.predict(norm(image, name=str(path))).argmax(0).numpy()
    np.testing.assert_array_equal(labels, whole)


def test_score_volume_tolerant_f1_and_absent_classes():
    label = np.zeros((4, 32, 32), np.uint8)
    label[:, 10:12, :] = 4  # a membrane
    pred = np.zeros_like(label)
    pred[:, 12:14, :] = 4  # shifted by two voxels: a hit within tolerance 2
    pred[:, 20:22, 5:10] = 2  # ribosome voxels where there is none
    s = score_volume(pred, label, tolerance=2)
    assert s["f1"] == {"single_membrane": pytest.approx(1.0)}
    assert s["absent_fraction"]["ribosome"] == pytest.approx(4 * 2 * 5 / label.size)
    assert score_volume(pred, label, tolerance=0)["f1"]["single_membrane"] == 0.0


def test_scores_pool_over_the_tomograms_where_a_class_is_present():
    scores = [{"f1": {"microtubule": 0.8, "ribosome": 0.4}, "absent_fraction": {"carbon_edge": 0.01}},
              {"f1": {"microtubule": 0.6}, "absent_fraction": {"ribosome": 0.002, "carbon_edge": 0.0}}]
    pooled = summarise_scores(scores)
    assert pooled["f1"]["microtubule"] == pytest.approx(0.7)
    assert pooled["f1"]["ribosome"] == pytest.approx(0.4)
    assert pooled["f1"]["carbon_edge"] is None
    assert pooled["mean_f1"] == pytest.approx(0.55) and pooled["min_f1"] == pytest.approx(0.4)
    assert pooled["max_absent_fraction"] == pytest.approx(0.01)
    assert summarise_scores([])["mean_f1"] is None


def test_style_families_are_scored_on_their_own_seeded_tomograms(tmp_path: Path):
    """evaluate_styles segments the tomograms of style_tomograms (same seeds) and pools their scores."""
    families = {"a": (10.0, {"mode": "fourier"}), "b": (10.0, {"mode": "fourier", "snr_range": (0.3, 1.0)})}
    torch.manual_seed(0)
    net = PaperUNet(2, 1, 6, features=(4, 8, 16, 32, 64), dropout=0.0)
    seg = TomogramSegmenter(net, progress=False, invert="no", precision="fp32", model_voxel_size=10.0)
    report = evaluate_styles(seg, tmp_path, families, n_per_family=2, shape=(6, 48, 48), seed=7)
    assert list(report["families"]) == ["a", "b"]
    expected = {"a": [], "b": []}
    for family, i, _, image, label in style_tomograms(families, 2, (6, 48, 48), 7):
        written = np.asarray(read_mrc(tmp_path / "tomograms" / f"{family}_{i}.mrc")[0])
        np.testing.assert_array_equal(written, image)  # the tomogram segmented is the seeded one
        pred = np.asarray(read_mrc(tmp_path / "predictions" / f"{family}_{i}_seg.mrc")[0])
        expected[family].append(score_volume(pred, label))
    for family, scores in expected.items():
        got = report["families"][family]
        assert got["f1"] == summarise_scores(scores)["f1"] and got["voxel_size"] == 10.0
        assert got["mean_f1"] == summarise_scores(scores)["mean_f1"]
    assert (tmp_path / "transfer.json").is_file()


def _shipped_segmenter(repo_root: Path) -> TomogramSegmenter:
    parser = ConfigParser()
    parser.read_meta(str(repo_root / "configs" / "metadata.json"))
    parser.read_config(str(repo_root / "configs" / "inference.json"))
    parser["model_path"] = str(repo_root / "models" / "model.pt")
    parser["progress"] = False
    return parser.get_parsed_content("segmenter")


@pytest.mark.slow
def test_shipped_model_finds_real_microtubules(repo_root: Path, mrc_corpus: Path, tmp_path: Path):
    """The two real crops of the shared corpus (evaluation only: never trained or tuned on)."""
    if not (mrc_corpus / "real").is_dir():
        pytest.skip("no real/ crops in the corpus")
    scores = evaluate_real_crops(_shipped_segmenter(repo_root), mrc_corpus, tmp_path)
    assert len(scores) == 2
    for name, f1 in scores.items():
        assert f1 >= REAL_MT_MIN_F1, (name, f1)


#: tolerant (2-voxel) microtubule F1 required on each real crop: the issue's bar. The shipped model
#: (v7, chosen on synthetic validation only) measures 0.91 and 0.92 through the default path (model
#: card), so the bar holds with a 0.06 margin for CPUs whose int8 kernels differ (v5: 0.89 and 0.86,
#: v4: 0.84 and 0.75). Never tuned on these crops.
REAL_MT_MIN_F1 = 0.85


def _tiny_segmenter(**kwargs) -> TomogramSegmenter:
    torch.manual_seed(0)
    net = PaperUNet(spatial_dims=2, in_channels=1, out_channels=6, features=[8, 8, 16, 16, 32]).eval()
    return TomogramSegmenter(net, model_voxel_size=10.0, progress=False, precision="fp32", **kwargs)


def test_invert_yes_negates_the_input(tmp_path: Path):
    image = np.random.default_rng(1).standard_normal((6, 32, 32)).astype(np.float32)
    save_mrc(tmp_path / "a.mrc", image, voxel_size=10.0)
    save_mrc(tmp_path / "b.mrc", -image, voxel_size=10.0)
    plain = _tiny_segmenter(invert="no").segment(tmp_path / "a.mrc", tmp_path / "o1")
    flipped = _tiny_segmenter(invert="yes").segment(tmp_path / "b.mrc", tmp_path / "o2")
    assert flipped["inverted"] and not plain["inverted"]
    np.testing.assert_array_equal(read_mrc(plain["seg"])[0], read_mrc(flipped["seg"])[0])
    with pytest.raises(ValueError, match="invert must be"):
        _tiny_segmenter(invert="sometimes")


def test_unset_one_angstrom_header_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture):
    image = np.random.default_rng(1).standard_normal((6, 32, 32)).astype(np.float32)
    save_mrc(tmp_path / "unset.mrc", image, voxel_size=1.0)
    seg = _tiny_segmenter()
    from cryoet_monai.inference import InferenceError

    with pytest.raises(InferenceError, match=r"unset\.mrc: header voxel size is 1\.0 Å.*--voxel-size"):
        seg.segment(tmp_path / "unset.mrc", tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing written
    # with the voxel size given it runs
    assert _tiny_segmenter(voxel_size=10.0).segment(tmp_path / "unset.mrc", tmp_path / "out")["seg"]


def test_preview_png_and_summary_json(tmp_path: Path):
    import json

    image = np.random.default_rng(2).standard_normal((10, 48, 64)).astype(np.float32)
    save_mrc(tmp_path / "t.mrc", image, voxel_size=10.0)
    seg = _tiny_segmenter(preview=True, save_uncertainty=True)
    result = seg.segment(tmp_path / "t.mrc", tmp_path / "out")
    png, summary = Path(result["preview"]), Path(result["summary"])
    assert png.name == "t_preview.png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads(summary.read_text())
    assert data["shape"] == [10, 48, 64] and data["voxel_size"] == [10.0, 10.0, 10.0]
    assert abs(sum(data["class_fractions"].values()) - 1) < 1e-6 and 0 <= data["mean_uncertainty"] <= 1
    unc, _ = read_mrc(result["uncertainty"], mmap=False)
    assert data["mean_uncertainty"] == pytest.approx(float(unc.astype(np.float64).mean()), abs=1e-3)
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.endswith(".tmp")]


def test_tiff_input_gives_the_labels_of_the_same_mrc(tmp_path: Path):
    import tifffile

    image = np.random.default_rng(3).standard_normal((8, 48, 48)).astype(np.float32)
    save_mrc(tmp_path / "a.mrc", image, voxel_size=10.0)
    # ImageJ hyperstack metadata: 1 nm pixels in-plane, 1 nm spacing in z = 10 Å
    tifffile.imwrite(tmp_path / "b.tif", image, imagej=True, resolution=(1.0, 1.0),
                     metadata={"unit": "nm", "spacing": 1.0})
    tifffile.imwrite(tmp_path / "nosize.tif", image)
    seg = _tiny_segmenter(invert="no")
    a = seg.segment(tmp_path / "a.mrc", tmp_path / "out")
    b = seg.segment(tmp_path / "b.tif", tmp_path / "out")
    assert b["voxel_size"] == pytest.approx((10.0, 10.0, 10.0))
    np.testing.assert_array_equal(read_mrc(a["seg"])[0], read_mrc(b["seg"])[0])
    from cryoet_monai.inference import InferenceError, find_inputs

    with pytest.raises(InferenceError, match=r"nosize\.tif: header voxel size .*--voxel-size"):
        seg.segment(tmp_path / "nosize.tif", tmp_path / "out")
    assert {p.name for p in find_inputs(tmp_path)} == {"a.mrc", "b.tif", "nosize.tif"}


def test_ome_zarr_input_gives_the_labels_of_the_same_mrc(tmp_path: Path):
    """An OME-Zarr pyramid (NGFF 0.5, scale in nm): the level nearest the model's 10 Å is read,
    with its voxel size in Å, and segments like the same volume stored as MRC."""
    zarr = pytest.importorskip("zarr")
    write_multiscale = pytest.importorskip("ome_zarr.writer").write_multiscale

    from cryoet_monai.inference import find_inputs

    image = np.random.default_rng(4).standard_normal((8, 96, 96)).astype(np.float32)
    half = image[:, ::2, ::2].copy()  # stands in for the 20 Å level
    root = zarr.open_group(str(tmp_path / "tomo.zarr"), mode="w")
    axes = [{"name": n, "type": "space", "unit": "nanometer"} for n in "zyx"]
    scales = [[{"type": "scale", "scale": [0.5, 0.5, 0.5]}], [{"type": "scale", "scale": [1.0, 1.0, 1.0]}],
              [{"type": "scale", "scale": [1.0, 2.0, 2.0]}]]
    write_multiscale([image, image, half], root, axes=axes, coordinate_transformations=scales)
    save_mrc(tmp_path / "same.mrc", image, voxel_size=10.0)
    seg = _tiny_segmenter(invert="no")
    z = seg.segment(tmp_path / "tomo.zarr", tmp_path / "out")
    m = seg.segment(tmp_path / "same.mrc", tmp_path / "out")
    assert z["voxel_size"] == pytest.approx((10.0, 10.0, 10.0))  # level 1 (1 nm), not 0.5 nm or 2 nm
    np.testing.assert_array_equal(read_mrc(z["seg"])[0], read_mrc(m["seg"])[0])
    assert {p.name for p in find_inputs(tmp_path)} == {"tomo.zarr", "same.mrc"}


def test_ome_zarr_output_is_ngff_labels_with_names_colours_and_scale(tmp_path: Path):
    pytest.importorskip("zarr")
    reader = pytest.importorskip("ome_zarr.reader")
    from ome_zarr.io import parse_url

    image = np.random.default_rng(5).standard_normal((6, 40, 48)).astype(np.float32)
    save_mrc(tmp_path / "t.mrc", image, voxel_size=10.0, origin=(5.0, 0.0, 0.0))
    mrc = _tiny_segmenter(invert="no").segment(tmp_path / "t.mrc", tmp_path / "a")
    zarr_seg = _tiny_segmenter(invert="no", output_format="zarr", preview=True)
    zr = zarr_seg.segment(tmp_path / "t.mrc", tmp_path / "b")
    assert Path(zr["seg"]).name == "t_seg.zarr" and Path(zr["preview"]).is_file()
    nodes = list(reader.Reader(parse_url(str(Path(zr["seg"]) / "labels" / "segmentation")))())
    node = nodes[0]
    data = np.asarray(node.data[0])
    assert data.shape == (6, 40, 48) and data.dtype == np.uint8
    np.testing.assert_array_equal(data, read_mrc(mrc["seg"])[0])
    ms = node.metadata
    assert [a["unit"] for a in ms["axes"]] == ["angstrom"] * 3
    transforms = ms["coordinateTransformations"][0]
    assert transforms[0]["scale"] == [10.0, 10.0, 10.0] and transforms[1]["translation"] == [5.0, 0.0, 0.0]
    label_meta = node.zarr.root_attrs.get("image-label") or node.zarr.root_attrs["ome"]["image-label"]
    names = {p["label-value"]: p["class"] for p in label_meta["properties"]}
    assert names[2] == "ribosome" and len(label_meta["colors"]) == 5
    assert not [p for p in (tmp_path / "b").iterdir() if p.name.startswith(".")]


def test_napari_manifest_and_reader(tmp_path: Path, repo_root: Path):
    npe2 = pytest.importorskip("npe2")
    from cryoet_monai.napari import get_reader

    manifest = npe2.PluginManifest.from_file(repo_root / "cryoet_monai" / "napari" / "napari.yaml")
    assert manifest.name == "cryoet-monai" and manifest.contributions.readers
    image = np.random.default_rng(6).standard_normal((6, 32, 32)).astype(np.float32)
    save_mrc(tmp_path / "t.mrc", image, voxel_size=12.0)
    result = _tiny_segmenter(invert="no", save_probs=True, save_uncertainty=True, voxel_size=12.0,
                             resample=False).segment(tmp_path / "t.mrc", tmp_path / "out")
    assert get_reader(str(tmp_path / "t.mrc")) is None  # not ours: napari asks other readers
    reader = get_reader([result["seg"], result["probs"], result["uncertainty"]])
    layers = reader([result["seg"], result["probs"], result["uncertainty"]])
    kinds = [kind for _, _, kind in layers]
    assert kinds == ["labels"] + ["image"] * 6 + ["image"]
    data, meta, _ = layers[0]
    assert np.array_equal(np.asarray(data), read_mrc(result["seg"])[0])
    assert meta["scale"] == (12.0, 12.0, 12.0)
    assert meta["features"]["class"][2] == "ribosome" and meta["colormap"][0][3] == 0.0
    assert layers[3][1]["name"].endswith("ribosome")


def test_class_gains_change_the_argmax_only(tmp_path: Path):
    image = np.random.default_rng(7).standard_normal((4, 32, 32)).astype(np.float32)
    save_mrc(tmp_path / "t.mrc", image, voxel_size=10.0)
    plain = _tiny_segmenter(invert="no", save_probs=True).segment(tmp_path / "t.mrc", tmp_path / "a")
    boosted = _tiny_segmenter(invert="no", save_probs=True, class_gains=[1, 1, 1, 1, 50, 1])
    b = boosted.segment(tmp_path / "t.mrc", tmp_path / "b")
    probs = np.asarray(read_mrc(plain["probs"])[0], np.float32)
    np.testing.assert_array_equal(np.asarray(read_mrc(b["probs"])[0]), probs.astype(np.float16))
    expected = (probs * np.array([1, 1, 1, 1, 50, 1], np.float32)[:, None, None, None]).argmax(0)
    assert (np.asarray(read_mrc(b["seg"])[0]) == expected).mean() > 0.999  # fp16 probabilities on disk
    with pytest.raises(ValueError, match="class_gains needs 6 positive numbers"):
        _tiny_segmenter(class_gains=[1, 2])


@pytest.mark.slow
def test_inverted_contrast_gives_the_same_labels_under_invert_auto(tmp_path: Path, repo_root: Path):
    from cryoet_monai.data.synthetic import generate_tomogram

    image, _ = generate_tomogram((32, 256, 256), 10.0, 31)
    save_mrc(tmp_path / "dark.mrc", image, voxel_size=10.0)
    save_mrc(tmp_path / "bright.mrc", -image, voxel_size=10.0)
    seg = _shipped_segmenter(repo_root)  # invert: auto
    dark, bright = (seg.segment(tmp_path / f"{n}.mrc", tmp_path / "out") for n in ("dark", "bright"))
    assert not dark["inverted"] and bright["inverted"]
    a, b = (np.asarray(read_mrc(r["seg"])[0]) for r in (dark, bright))
    assert (a == b).mean() >= 0.95
