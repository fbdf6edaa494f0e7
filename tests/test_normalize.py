"""RobustNormalizeIntensity(d): values, subsampled statistics, slab-wise use, inversion, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

from cryoet_monai.io.mrc import MRCReader, read_mrc, save_mrc
from cryoet_monai.transforms.intensity import (
    IntensityStats,
    NonFiniteIntensityError,
    RobustNormalizeIntensity,
    RobustNormalizeIntensityd,
    compute_stats,
    strided_sample,
)


def _tomogram(shape=(24, 32, 40), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    vol = rng.normal(100.0, 5.0, shape).astype(np.float32)
    vol.flat[rng.choice(vol.size, 20, replace=False)] = 1e5  # hot pixels the clipping must remove
    return vol


def test_exact_values_small_volume():
    x = np.array([0.0, 1.0, 2.0, 3.0, 100.0], dtype=np.float32).reshape(1, 1, 5)
    out = RobustNormalizeIntensity(lower=0.0, upper=75.0)(x)  # clip to [0, 3]: 0 1 2 3 3
    clipped = np.array([0, 1, 2, 3, 3], dtype=np.float64)
    expected = (clipped - clipped.mean()) / clipped.std()
    np.testing.assert_allclose(out.ravel(), expected, rtol=1e-6)
    assert out.dtype == np.float32
    inverted = RobustNormalizeIntensity(lower=0.0, upper=75.0, invert=True)(x)
    np.testing.assert_allclose(inverted, -out, rtol=1e-6)


def test_zero_mean_unit_variance_and_clipping():
    vol = _tomogram()
    out = RobustNormalizeIntensity()(vol)
    assert abs(float(out.mean())) < 1e-4 and abs(float(out.std()) - 1.0) < 1e-4
    assert float(out.max()) < 5.0  # hot pixels clipped to the 99.5th percentile


def test_subsample_statistics_close_to_full():
    vol = _tomogram((40, 64, 64))
    sample = strided_sample(vol, max_samples=10_000)
    assert 5_000 <= sample.size <= 10_000
    np.testing.assert_array_equal(strided_sample(vol, 10_000), sample)  # deterministic
    full = compute_stats(vol, max_samples=vol.size)
    sub = compute_stats(vol, max_samples=10_000)
    assert sub.mean == pytest.approx(full.mean, abs=0.2)
    assert sub.std == pytest.approx(full.std, rel=0.05)
    assert sub.lower == pytest.approx(full.lower, abs=1.0) and sub.upper == pytest.approx(full.upper, abs=1.0)


def test_slabwise_equals_whole_volume(tmp_path):
    vol = _tomogram()
    path = save_mrc(tmp_path / "tomo.mrc", vol, voxel_size=10.0)
    memmap, _ = read_mrc(path)
    whole = RobustNormalizeIntensity()
    fitted = whole.fit(memmap)
    assert isinstance(fitted.stats, IntensityStats) and whole.stats is None  # fit() leaves the original alone
    slabs = np.concatenate([fitted(memmap[z : z + 5]) for z in range(0, vol.shape[0], 5)])
    np.testing.assert_allclose(slabs, whole(vol), rtol=1e-5, atol=1e-5)
    # the same statistics given explicitly
    again = RobustNormalizeIntensity(stats=tuple(fitted.stats))(memmap[3:7])
    np.testing.assert_allclose(again, slabs[3:7], rtol=1e-6)


def test_tensor_input_and_dictionary_pipeline(tmp_path):
    vol = _tomogram((16, 20, 24))
    path = save_mrc(tmp_path / "tomo.mrc", vol, voxel_size=10.0)
    pipeline = Compose(
        [
            LoadImaged("image", reader=MRCReader),
            EnsureChannelFirstd("image"),
            RobustNormalizeIntensityd("image", invert=True),
        ]
    )
    out = pipeline({"image": str(path)})["image"]
    assert isinstance(out, MetaTensor) and out.dtype == torch.float32 and tuple(out.shape) == (1, 16, 20, 24)
    assert out.meta["filename_or_obj"] == str(path)  # metadata kept
    expected = -RobustNormalizeIntensity()(vol[None])
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-5)


def test_channel_wise():
    a, b = _tomogram((8, 8, 8), 1), _tomogram((8, 8, 8), 2) * 10 + 7
    out = RobustNormalizeIntensity(channel_wise=True)(torch.from_numpy(np.stack([a, b])))
    for c in range(2):
        assert abs(float(out[c].mean())) < 1e-4 and abs(float(out[c].std(unbiased=False)) - 1) < 1e-4


def test_constant_image_gives_zeros():
    out = RobustNormalizeIntensity()(np.full((4, 4, 4), 7.0, np.float32))
    np.testing.assert_array_equal(out, 0.0)


def test_non_finite_refused_with_file_name(tmp_path):
    vol = _tomogram((8, 8, 8))
    vol[3, 3, 3] = np.nan
    img = MetaTensor(torch.from_numpy(vol)[None], meta={"filename_or_obj": "/data/tomo_17.mrc"})
    with pytest.raises(NonFiniteIntensityError, match=r"/data/tomo_17\.mrc: image contains NaN or infinite"):
        RobustNormalizeIntensity()(img)
    vol[3, 3, 3] = np.inf
    with pytest.raises(NonFiniteIntensityError, match="slab.mrc: image contains NaN or infinite"):
        RobustNormalizeIntensity(stats=(0, 1, 0, 1))(vol, name="slab.mrc")
    with pytest.raises(NonFiniteIntensityError, match="tomo_9.mrc"):
        RobustNormalizeIntensityd("image")(
            {"image": vol, "image_meta_dict": {"filename_or_obj": "tomo_9.mrc"}}
        )
    with pytest.raises(NonFiniteIntensityError):  # in the subsample
        compute_stats(np.full((4, 4, 4), np.nan))
    assert issubclass(NonFiniteIntensityError, ValueError)


def test_bad_arguments():
    with pytest.raises(ValueError, match="percentiles"):
        RobustNormalizeIntensity(lower=99.0, upper=1.0)
    with pytest.raises(ValueError, match="stats must be"):
        RobustNormalizeIntensity(stats=(1.0, 2.0))
    with pytest.raises(ValueError, match="empty image"):
        compute_stats(np.zeros((0, 4, 4)))
