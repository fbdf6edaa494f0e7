"""Robust intensity normalisation of tomograms: percentile clipping, then zero mean / unit variance.

Statistics come from a deterministic strided subsample for big volumes, so that a memory-mapped
tomogram (see :func:`cryoet_monai.io.mrc.read_mrc`) is only partly read. Inference computes them
once for the whole tomogram (:func:`compute_stats` or :meth:`RobustNormalizeIntensity.fit`) and
applies them slab by slab; training applies the transform to whole (small) volumes.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from monai.config import DtypeLike, KeysCollection, NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends, convert_data_type, convert_to_dst_type

__all__ = [
    "IntensityStats",
    "NonFiniteIntensityError",
    "RobustNormalizeIntensity",
    "RobustNormalizeIntensityd",
    "compute_stats",
    "strided_sample",
]


class NonFiniteIntensityError(ValueError):
    """The image contains NaN or infinite values (the message names the file when known)."""


class IntensityStats(NamedTuple):
    """Clipping bounds and the mean / standard deviation of the clipped intensities."""

    lower: float
    upper: float
    mean: float
    std: float


def _name_of(img: Any, name: str | None) -> str:
    if name:
        return str(name)
    if isinstance(img, MetaTensor):
        filename = img.meta.get("filename_or_obj")
        if filename:
            return str(filename)
    return "image"


def strided_sample(img: NdarrayOrTensor, max_samples: int = 1_000_000) -> np.ndarray:
    """A deterministic subsample of at most about ``max_samples`` voxels, as float64 numpy.

    The same stride ``k`` is taken along every axis, starting at ``k // 2`` (away from the borders,
    where reconstructions are worst), so a memory-mapped volume only reads every ``k``-th plane.
    """
    size = int(np.prod(img.shape))
    k = 1 if size <= max_samples else math.ceil((size / max_samples) ** (1.0 / img.ndim))
    while k > 1 and math.prod(len(range(k // 2, n, k)) or 1 for n in img.shape) > max_samples:
        k += 1  # ceil() may leave slightly more than max_samples
    index = tuple(slice(k // 2 if n > k // 2 else 0, None, k) for n in img.shape)
    sample = img[index]
    if isinstance(sample, torch.Tensor):
        sample = sample.detach().cpu().numpy()
    return np.asarray(sample, dtype=np.float64).ravel()


def compute_stats(
    img: NdarrayOrTensor,
    lower: float = 0.5,
    upper: float = 99.5,
    max_samples: int = 1_000_000,
    name: str | None = None,
) -> IntensityStats:
    """Percentile bounds and clipped mean/std of ``img`` (numpy, memmap or tensor, any shape).

    Args:
        img: the image; only a strided subsample of ``max_samples`` voxels is read.
        lower, upper: clipping percentiles in [0, 100].
        max_samples: subsample size for big images.
        name: file name for error messages (defaults to a MetaTensor's ``filename_or_obj``).

    Raises:
        NonFiniteIntensityError: NaN or infinite values in the sample.
        ValueError: bad percentiles or an empty image.
    """
    label = _name_of(img, name)
    if not 0.0 <= lower < upper <= 100.0:
        raise ValueError(f"{label}: need 0 <= lower < upper <= 100 percentiles, got {lower}, {upper}")
    if int(np.prod(img.shape)) == 0:
        raise ValueError(f"{label}: empty image of shape {tuple(img.shape)}")
    sample = strided_sample(img, max_samples)
    if not np.isfinite(sample).all():
        raise NonFiniteIntensityError(f"{label}: image contains NaN or infinite values")
    lo, hi = np.percentile(sample, [lower, upper])
    clipped = np.clip(sample, lo, hi)
    return IntensityStats(float(lo), float(hi), float(clipped.mean()), float(clipped.std()))


class RobustNormalizeIntensity(Transform):
    """Clip intensities to percentiles, then shift/scale to zero mean and unit variance.

    ``out = (clip(img, p_lower, p_upper) - mean) / std`` (times -1 with ``invert=True``), with
    mean and std of the clipped intensities. Input: any shape, e.g. ``(C, Z, Y, X)``, numpy or
    tensor; output: same type/device, ``dtype`` (float32).

    Statistics are computed per call on a strided subsample (:func:`compute_stats`), unless
    ``stats`` is given: then the same fixed statistics apply to every input, e.g. to each slab of
    a tomogram. ``fit(volume)`` returns a copy with the statistics of ``volume`` frozen in::

        norm = RobustNormalizeIntensity().fit(memmapped_tomogram)
        slab = norm(tomogram[z0:z1])

    Args:
        lower, upper: clipping percentiles.
        invert: multiply by -1 after normalising (dense material bright instead of dark).
        max_samples: subsample size for the statistics.
        stats: fixed ``(lower, upper, mean, std)`` statistics (an :class:`IntensityStats` or 4 numbers).
        channel_wise: compute statistics per channel (first axis) instead of over the whole image.
        dtype: output dtype.
        min_std: a standard deviation below this (a constant image) is replaced by 1.

    Raises:
        NonFiniteIntensityError: NaN/inf in the input (the message names the file of a MetaTensor).
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self,
        lower: float = 0.5,
        upper: float = 99.5,
        invert: bool = False,
        max_samples: int = 1_000_000,
        stats: IntensityStats | Sequence[float] | None = None,
        channel_wise: bool = False,
        dtype: DtypeLike = np.float32,
        min_std: float = 1e-8,
    ) -> None:
        if not 0.0 <= lower < upper <= 100.0:
            raise ValueError(f"need 0 <= lower < upper <= 100 percentiles, got {lower}, {upper}")
        if stats is not None:
            if len(stats) != 4:
                raise ValueError(f"stats must be (lower, upper, mean, std), got {stats!r}")
            stats = IntensityStats(*(float(v) for v in stats))
            if channel_wise:
                raise ValueError("fixed stats apply to the whole image: use channel_wise=False")
        self.lower = lower
        self.upper = upper
        self.invert = invert
        self.max_samples = max_samples
        self.stats = stats
        self.channel_wise = channel_wise
        self.dtype = dtype
        self.min_std = min_std

    def compute_stats(self, img: NdarrayOrTensor, name: str | None = None) -> IntensityStats:
        """The statistics this transform would use for ``img``."""
        return compute_stats(img, self.lower, self.upper, self.max_samples, name=name)

    def fit(self, img: NdarrayOrTensor, name: str | None = None) -> RobustNormalizeIntensity:
        """A copy of this transform with the statistics of ``img`` fixed (for slab-wise use)."""
        return RobustNormalizeIntensity(
            self.lower,
            self.upper,
            self.invert,
            self.max_samples,
            stats=self.compute_stats(img, name=name),
            dtype=self.dtype,
            min_std=self.min_std,
        )

    def _apply(self, img: NdarrayOrTensor, stats: IntensityStats) -> NdarrayOrTensor:
        std = stats.std if stats.std >= self.min_std else 1.0
        scale = -1.0 / std if self.invert else 1.0 / std
        if isinstance(img, torch.Tensor):
            return (img.clamp(stats.lower, stats.upper) - stats.mean) * scale
        return (np.clip(img, stats.lower, stats.upper) - stats.mean) * scale

    def __call__(self, img: NdarrayOrTensor, name: str | None = None) -> NdarrayOrTensor:
        """Normalise ``img``; ``name`` labels error messages (default: a MetaTensor's file name)."""
        label = _name_of(img, name)
        out_dtype = self.dtype
        # compute in float32 on the input's device (a memmap slab is read here)
        if isinstance(img, torch.Tensor):
            work = convert_data_type(img, dtype=torch.float32)[0]
            finite = bool(torch.isfinite(work).all())
        else:
            work = np.asarray(img, dtype=np.float32)
            finite = bool(np.isfinite(work).all())
        if not finite:
            raise NonFiniteIntensityError(f"{label}: image contains NaN or infinite values")
        if self.stats is not None:
            out = self._apply(work, self.stats)
        elif self.channel_wise:
            parts = [self._apply(c, self.compute_stats(c, name=label)) for c in work]
            out = torch.stack(parts) if isinstance(work, torch.Tensor) else np.stack(parts)
        else:
            out = self._apply(work, self.compute_stats(work, name=label))
        return convert_to_dst_type(out, dst=img, dtype=out_dtype)[0]


class RobustNormalizeIntensityd(MapTransform):
    """Dictionary version of :class:`RobustNormalizeIntensity`.

    Args:
        keys: keys of the images to normalise (each gets its own statistics unless ``stats`` is set).
        allow_missing_keys: don't raise for missing keys.
        other arguments: see :class:`RobustNormalizeIntensity`.
    """

    backend = RobustNormalizeIntensity.backend

    def __init__(
        self,
        keys: KeysCollection,
        lower: float = 0.5,
        upper: float = 99.5,
        invert: bool = False,
        max_samples: int = 1_000_000,
        stats: IntensityStats | Sequence[float] | None = None,
        channel_wise: bool = False,
        dtype: DtypeLike = np.float32,
        min_std: float = 1e-8,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.normalizer = RobustNormalizeIntensity(
            lower, upper, invert, max_samples, stats, channel_wise, dtype, min_std
        )

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            meta = d.get(f"{key}_meta_dict")  # numpy pipelines keep the file name here
            name = meta.get("filename_or_obj") if isinstance(meta, Mapping) else None
            d[key] = self.normalizer(d[key], name=name)
        return d
