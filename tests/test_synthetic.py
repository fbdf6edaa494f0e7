"""Synthetic tomogram generator: physical scale, imaging model, determinism, files, CLI.

Volumes are tiny (<= 48 x 96 x 96 at 10 Å); the whole file runs in well under a minute on 2 cores.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from cryoet_monai.data.phantom import IceSlab
from cryoet_monai.data.synthetic import (
    SyntheticDataError,
    build_phantom,
    generate_tomogram,
    sample_params,
    write_synthetic_dataset,
)

SHAPE = (32, 96, 96)
ALL = dict.fromkeys(("microtubule", "ribosome", "double_membrane", "single_membrane", "carbon_edge"), 1.0)


def only(name: str) -> dict[str, float]:
    return {k: float(k == name) for k in ALL}


def test_every_class_present_at_plausible_fractions():
    for seed in (1, 4):
        _, label = generate_tomogram((48, 128, 128), 10.0, seed, class_mix=ALL)
        frac = np.bincount(label.reshape(-1), minlength=6) / label.size
        assert frac.size == 6, f"labels outside 0..5: {np.unique(label)}"
        assert frac[0] > 0.7, f"seed {seed}: background {frac[0]:.3f}"
        assert np.all(frac[1:] > 0.002), f"seed {seed}: a class is missing: {np.round(frac, 4)}"
        assert np.all(frac[1:] < 0.12), f"seed {seed}: a class is implausibly large: {np.round(frac, 4)}"
    # the default class mix: every class in most tomograms, carbon in some but not all
    present = np.zeros(6, int)
    for seed in range(8):
        _, label = generate_tomogram((16, 64, 64), 10.0, 100 + seed)
        present += np.bincount(label.reshape(-1), minlength=6)[:6] > 0
    assert np.all(present[1:5] >= 5), present
    assert 1 <= present[5] <= 7, present


def test_microtubules_labelled_over_cross_section_hollow_in_image():
    shape = (64, 96, 96)
    image, label, info = generate_tomogram(
        shape, 10.0, 0, class_mix=only("microtubule"), snr=math.inf, gold=False, ice_fraction=0.95,
        return_info=True,
    )
    slab = IceSlab(**info["slab"])
    axis_vals, wall_vals = [], []
    for mt in info["microtubules"]:
        assert 240 <= 2 * mt["r_out"] <= 260 and 140 <= 2 * mt["r_in"] <= 160  # 25 nm / 15 nm
        path = mt["path"]
        segments = [(path[i] * (1 - f) + path[i + 1] * f, path[i + 1] - path[i])
                    for i in range(len(path) - 1) for f in (0.25, 0.5, 0.75)]
        for p, t in segments:
            t = t / np.linalg.norm(t)
            perp = np.cross(t, [0.0, 0.0, 1.0] if abs(t[2]) < 0.9 else [0.0, 1.0, 0.0])
            perp /= np.linalg.norm(perp)
            for side in (perp, -perp, np.cross(t, perp), -np.cross(t, perp)):
                wall = p + side * (mt["r_in"] + mt["r_out"]) / 2
                if not all(0 <= q[i] <= (shape[i] - 1) * 10 for q in (p, wall) for i in range(3)):
                    continue
                if slab.depth(*p) < 130 or slab.depth(*wall) < 30:
                    continue
                ia, iw = (tuple(np.rint(q / 10).astype(int)) for q in (p, wall))
                assert label[ia] == 1, "microtubule lumen not labelled (annotators paint the cross-section)"
                assert label[iw] == 1, "microtubule wall not labelled"
                axis_vals.append(image[ia])
                wall_vals.append(image[iw])
    assert len(axis_vals) >= 10
    # raw polarity, dense = dark: the empty lumen is brighter than the protein wall
    assert np.mean(axis_vals) > np.mean(wall_vals) + 0.5, (np.mean(axis_vals), np.mean(wall_vals))


def _runs(values: np.ndarray, cls: int) -> list[tuple[int, int]]:
    padded = np.concatenate([[False], values == cls, [False]]).astype(int)
    edges = np.flatnonzero(np.diff(padded))
    return list(zip(edges[::2], edges[1::2]))


@pytest.mark.parametrize("voxel_size", [10.0, 7.0])
def test_double_membrane_spacing_and_gap(voxel_size):
    rng = np.random.default_rng(3)
    scene, imaging = sample_params(rng, voxel_size, class_mix=only("double_membrane"), snr=math.inf)
    shape = (64, 160, 160)
    cv, slab, info = build_phantom(shape, voxel_size, scene, imaging, rng)
    dm = info["double_membranes"][0]
    # 6 nm (mitochondrial envelope) to 50 nm (nuclear envelope) between the bilayers
    assert 105.0 <= dm["spacing"] <= 545.0
    # mid-surface points below labelled voxels, then walk along the normal reading labels
    vox = np.argwhere(cv.label == 3)[:: 50].astype(np.float32) * np.float32(voxel_size)
    d, n = dm["shape"].sdf(vox[:, 0], vox[:, 1], vox[:, 2], normals=True)
    normals = np.stack(n, axis=1)
    pts = vox - d[:, None] * normals
    ext = (np.asarray(shape) - 1) * voxel_size
    ok = np.all((pts > 100) & (pts < ext - 100), axis=1)
    half_span = dm["spacing"] / 2 + 60.0
    t = np.arange(-half_span, half_span + 0.5, 1.0)
    spacings = []
    for p, n in zip(pts[ok], normals[ok]):
        idx = np.rint((p + t[:, None] * n) / voxel_size).astype(int)
        if np.any(idx < 0) or np.any(idx >= np.asarray(shape)):
            continue
        line = cv.label[idx[:, 0], idx[:, 1], idx[:, 2]]
        runs = _runs(line, 3)
        if len(runs) != 2:  # hidden by the missing wedge (face-on) or cut by the ice surface
            continue
        (a0, a1), (b0, b1) = runs
        assert b0 > a1 and np.all(line[a1:b0] == 0), "no background gap between the two bilayers"
        spacings.append((t[b0] + t[b1 - 1] - t[a0] - t[a1 - 1]) / 2)
    assert len(spacings) >= 10
    assert abs(np.median(spacings) - dm["spacing"]) <= voxel_size, (np.median(spacings), dm["spacing"])


def test_membrane_labels_follow_visibility():
    """Face-on membrane patches (normal inside the missing wedge) are drawn but not labelled."""
    rng = np.random.default_rng(5)
    scene, imaging = sample_params(rng, 10.0, class_mix=only("single_membrane"), tilt_range=(-60, 60))
    cv, _, info = build_phantom((48, 96, 96), 10.0, scene, imaging, rng)
    zz, yy, xx = (np.nonzero(cv.label == 4)[i].astype(np.float32) * 10 for i in range(3))
    assert zz.size > 500
    normals = np.zeros((3, zz.size), np.float32)
    best = np.full(zz.size, np.inf, np.float32)
    for m in info["single_membranes"]:  # normal of the nearest membrane at each labelled voxel
        d, n = m["shape"].sdf(zz, yy, xx, normals=True)
        closer = np.abs(d) < best
        best[closer] = np.abs(d)[closer]
        normals[:, closer] = np.asarray(n)[:, closer]
    elevation = np.degrees(np.arctan2(np.abs(normals[0]), np.abs(normals[2])))
    face_on = (elevation > 60 + 10 + 2) & (np.abs(normals[1]) < 0.3)
    assert not face_on.any(), f"{face_on.sum()} labelled voxels face-on to the beam"


def _wedge_power_ratio(tilt_range, mode: str = "fourier") -> float:
    image, _ = generate_tomogram((48, 48, 48), 10.0, 1, tilt_range=tilt_range, tilt_step=2.0, lowpass=30.0,
                                 mode=mode)
    power = np.abs(np.fft.rfftn(image)) ** 2
    kz = np.fft.fftfreq(48)[:, None, None]
    ky = np.fft.fftfreq(48)[None, :, None]
    kx = np.fft.rfftfreq(48)[None, None, :]
    k = np.sqrt(kz**2 + ky**2 + kx**2)
    psi = np.degrees(np.arctan2(np.abs(kz), kx)) + 0 * ky  # angle from the kx axis in the (kz, kx) plane
    ring = (k > 0.1) & (k < 0.3)
    return float(power[ring & (psi > 75)].mean() / power[ring & (psi < 50)].mean())


@pytest.mark.parametrize("mode", ["fourier", "tilt_series"])
def test_missing_wedge_visible_in_spectrum(mode):
    # the tilt-series mode never builds a wedge: it comes out of projecting and back-projecting
    # (WBP leaks a little into the wedge through interpolation, as real reconstructions do)
    assert _wedge_power_ratio((-60, 60), mode) < (0.05 if mode == "fourier" else 0.1)
    assert _wedge_power_ratio((-85, 85), mode) > 0.3  # control: a nearly full tilt range fills it


def _snr_against(clean: np.ndarray, noisy: np.ndarray) -> float:
    zs = slice(clean.shape[0] // 4, 3 * clean.shape[0] // 4)  # well inside the ice
    c, n = clean[zs].ravel(), noisy[zs].ravel()
    slope = float(np.dot(c, n) / np.dot(c, c))
    return float((slope * c).var() / (n - slope * c).var())


def test_dose_sets_noise_level_in_tilt_series_mode():
    opts = dict(class_mix=only("ribosome"), gold=False, ice_fraction=0.95)
    clean, _ = generate_tomogram(SHAPE, 10.0, 4, snr=math.inf, **opts)
    low = _snr_against(clean, generate_tomogram(SHAPE, 10.0, 4, dose=30.0, **opts)[0])
    high = _snr_against(clean, generate_tomogram(SHAPE, 10.0, 4, dose=240.0, **opts)[0])
    # counting noise: SNR grows about linearly with the dose; per-voxel SNR of real tomograms
    assert 0.02 < low < high < 5.0, (low, high)
    assert 3.0 < high / low < 16.0, (low, high)


def test_tilt_order_sets_accumulated_dose():
    from cryoet_monai.data.tilt_series import TiltSeriesParams, tilt_angles

    angles, prior = tilt_angles(TiltSeriesParams(-60, 60, 3.0, order="dose_symmetric", dose_total=123.0))
    assert len(angles) == 41 and angles[20] == 0 and prior[20] == 0
    per = 123.0 / 41
    assert prior[21] == pytest.approx(per) and prior[19] == pytest.approx(2 * per)  # +3 then -3
    assert prior[0] == pytest.approx(40 * per) or prior[-1] == pytest.approx(40 * per)
    angles, prior = tilt_angles(TiltSeriesParams(-60, 60, 3.0, order="bidirectional", dose_total=123.0))
    assert prior[-1] == pytest.approx(20 * per) and prior[0] == pytest.approx(40 * per)
    assert np.all(np.diff(prior[20:]) > 0)


def test_snr_sets_noise_level():
    opts = dict(class_mix=only("ribosome"), gold=False, ice_fraction=0.95, mode="fourier")
    clean, label = generate_tomogram(SHAPE, 10.0, 4, snr=math.inf, **opts)
    noisy, _ = generate_tomogram(SHAPE, 10.0, 4, snr=0.5, **opts)
    zs = slice(SHAPE[0] // 4, 3 * SHAPE[0] // 4)  # well inside the ice
    c, n = clean[zs].ravel(), noisy[zs].ravel()
    slope = float(np.dot(c, n) / np.dot(c, c))
    noise = n - slope * c
    snr = (slope * c).var() / noise.var()
    assert 0.3 < snr < 0.8, snr
    assert np.corrcoef(c, n)[0, 1] > 0.4  # structures stay visible


def test_deterministic_for_a_seed():
    a_img, a_lab = generate_tomogram((16, 48, 48), 10.0, 11)
    b_img, b_lab = generate_tomogram((16, 48, 48), 10.0, 11)
    c_img, c_lab = generate_tomogram((16, 48, 48), 10.0, 12)
    assert a_img.dtype == np.float32 and a_lab.dtype == np.uint8
    assert a_img.tobytes() == b_img.tobytes() and a_lab.tobytes() == b_lab.tobytes()
    assert a_img.tobytes() != c_img.tobytes()
    assert abs(float(a_img.mean())) < 1e-4 and abs(float(a_img.std()) - 1) < 1e-3
    inv, _ = generate_tomogram((16, 48, 48), 10.0, 11, invert=True)
    np.testing.assert_allclose(inv, -a_img, atol=1e-5)


def test_bad_options_raise():
    with pytest.raises(SyntheticDataError, match="shape"):
        generate_tomogram((8, 8), 10.0, 0)
    with pytest.raises(SyntheticDataError, match="tilt_range"):
        generate_tomogram((16, 32, 32), 10.0, 0, tilt_range=(30, -30))
    with pytest.raises(SyntheticDataError, match="class_mix"):
        generate_tomogram((16, 32, 32), 10.0, 0, class_mix={"mitochondria": 1.0})
    with pytest.raises(SyntheticDataError, match="defocus"):
        generate_tomogram((16, 32, 32), 10.0, 0, defocus_um=3.0)
    with pytest.raises(SyntheticDataError, match="dose"):  # a fixed SNR is the Fourier mode's knob
        generate_tomogram((16, 32, 32), 10.0, 0, snr=1.0)
    with pytest.raises(SyntheticDataError, match="mode"):
        generate_tomogram((16, 32, 32), 10.0, 0, mode="xray")


def test_dataset_files_load_through_mrc_reader(tmp_path: Path):
    from monai.data import load_decathlon_datalist
    from monai.transforms import LoadImage

    from cryoet_monai.io.mrc import MRCReader, read_mrc

    out = tmp_path / "ds"
    kw = dict(shape=(16, 48, 64), voxel_size=12.0, storage_dtype="random")
    path = write_synthetic_dataset(out, 3, seed=5, **kw)
    assert path == out / "datalist.json"
    datalist = json.loads(path.read_text())
    assert [len(datalist[k]) for k in ("training", "validation", "test")] == [2, 1, 0]
    names = [e["image"] for k in ("training", "validation", "test") for e in datalist[k]]
    assert names == [f"images/synth_{i:04d}.mrc" for i in range(3)]  # split by whole tomogram
    record = json.loads((out / "synthetic.json").read_text())
    loader = LoadImage(reader=MRCReader(), image_only=True)
    for item in load_decathlon_datalist(path, data_list_key="training") + load_decathlon_datalist(
        path, data_list_key="validation"
    ):
        image, label = loader(item["image"]), loader(item["label"])
        assert tuple(image.shape) == (16, 48, 64) and tuple(label.shape) == (16, 48, 64)
        np.testing.assert_allclose(image.pixdim, [12.0, 12.0, 12.0])
        np.testing.assert_allclose(label.pixdim, [12.0, 12.0, 12.0])
        assert set(np.unique(label.numpy()).tolist()) <= set(range(6))
        assert float(image.std()) > 0
    # the stored pixels are the generated ones (float32 storage is exact)
    write_synthetic_dataset(tmp_path / "f32", 1, shape=(16, 48, 64), voxel_size=12.0, seed=5)
    rec32 = json.loads((tmp_path / "f32" / "synthetic.json").read_text())
    img, lab = generate_tomogram((16, 48, 64), 12.0, rec32["tomograms"][0]["seed"])
    stored, meta = read_mrc(tmp_path / "f32" / "images" / "synth_0000.mrc")
    np.testing.assert_array_equal(np.asarray(stored), img)
    assert meta["voxel_size"] == (12.0, 12.0, 12.0)
    stored_label = read_mrc(tmp_path / "f32" / "labels" / "synth_0000.mrc")[0]
    np.testing.assert_array_equal(np.asarray(stored_label), lab)
    # cache: the same call reuses the files, a different seed regenerates them
    mtime = (out / "images" / "synth_0000.mrc").stat().st_mtime_ns
    assert write_synthetic_dataset(out, 3, seed=5, **kw) == path
    assert (out / "images" / "synth_0000.mrc").stat().st_mtime_ns == mtime
    write_synthetic_dataset(out, 3, seed=6, **kw)
    assert json.loads((out / "synthetic.json").read_text())["params"]["seed"] == 6
    assert record["params"]["seed"] == 5
    with pytest.raises(SyntheticDataError, match="not a folder"):
        write_synthetic_dataset(out / "datalist.json", 1, shape=(16, 32, 32))


def test_cli_writes_pairs_and_datalist(tmp_path: Path, capsys):
    from cryoet_monai.cli import main
    from cryoet_monai.io.mrc import read_mrc

    out = tmp_path / "cli"
    assert main(["synth", str(out), "--n", "2", "--shape", "16", "32", "48", "--seed", "3", "--quiet"]) == 0
    datalist = json.loads((out / "datalist.json").read_text())
    assert len(datalist["training"]) == 1 and len(datalist["validation"]) == 1
    record = json.loads((out / "synthetic.json").read_text())
    for entry, tomo in zip(datalist["training"] + datalist["validation"], record["tomograms"]):
        image, meta = read_mrc(out / entry["image"])
        label, lmeta = read_mrc(out / entry["label"])
        assert image.shape == label.shape == (16, 32, 48)
        assert 5.0 <= tomo["voxel_size"] <= 20.0  # no --voxel-size: randomised per tomogram
        np.testing.assert_allclose(meta["voxel_size"], [tomo["voxel_size"]] * 3, rtol=1e-5)
        np.testing.assert_allclose(lmeta["voxel_size"], meta["voxel_size"])
    assert record["tomograms"][0]["voxel_size"] != record["tomograms"][1]["voxel_size"]
    assert main(["synth", str(tmp_path / "bad"), "--n", "0"]) == 2
    assert "at least one tomogram" in capsys.readouterr().err
    assert not (tmp_path / "bad" / "datalist.json").exists()


@pytest.mark.parametrize(
    "bad",
    [{"shape": (0, 32, 32)}, {"voxel_size": 0.0}, {"voxel_size": float("nan")}, {"snr": -1.0},
     {"tilt_range": (60.0, -60.0)}],
)  # fmt: skip
def test_bad_options_are_refused_before_anything_is_written(tmp_path, bad) -> None:
    kwargs = {"shape": (8, 32, 32), "voxel_size": 10.0, **bad}
    with pytest.raises(SyntheticDataError):
        write_synthetic_dataset(tmp_path / "out", n=1, **kwargs)
    assert not (tmp_path / "out").exists()
