"""Training-time augmentation of the *reconstruction style* of a tomogram crop.

Reconstructions the generator does not simulate (SIRT, denoised, deconvolved, missing-wedge
corrected, other binning) differ from ours mostly in their power spectrum: which frequencies
are boosted or damped and how the noise is coloured. These transforms move a normalised crop
``(C, *S)`` (2-D slices, 2.5-D slice stacks as channels, or 3-D) around that space: a random
band-pass (:class:`RandBandPass`) and noise with a random power-law spectrum
(:class:`RandSpectralNoise`). Both work on the last two (in-plane) axes and return the crop
renormalised to zero mean and unit variance, as the pipeline's normaliser leaves it.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform, RandomizableTransform
from monai.utils import convert_to_dst_type, convert_to_tensor

__all__ = ["RandBandPass", "RandBandPassd", "RandSpectralNoise", "RandSpectralNoised"]


def _radial_frequency(h: int, w: int, device: torch.device) -> torch.Tensor:
    """|k| in cycles per pixel (0..0.71) on an ``rfft2`` grid ``(h, w // 2 + 1)``."""
    ky = torch.fft.fftfreq(h, device=device)[:, None]
    kx = torch.fft.rfftfreq(w, device=device)[None, :]
    return torch.sqrt(ky * ky + kx * kx)


def _standardise(x: torch.Tensor) -> torch.Tensor:
    std = x.std()
    return (x - x.mean()) / std if std > 0 else x - x.mean()


class RandBandPass(RandomizableTransform):
    """Random in-plane band-pass: a Gaussian high-pass and a Butterworth-like low-pass.

    Args:
        prob: probability of applying it.
        highpass_range: cut-off wavelengths (pixels) of the high-pass, drawn log-uniformly;
            long wavelengths (ice gradients, SIRT's low-frequency boost) are damped.
        lowpass_range: half-amplitude wavelengths (pixels) of the low-pass, drawn log-uniformly
            (2 = Nyquist: nothing removed; 6 = a strongly denoised or binned look).
        boost_range: extra gain of wavelengths beyond ~20 pixels, before the high-pass (> 0 mimics
            SIRT-like and deconvolved reconstructions, whose low frequencies are amplified).

    Input ``(C, *S)`` with in-plane axes last; output same shape and type, standardised.
    """

    def __init__(
        self,
        prob: float = 0.5,
        highpass_range: Sequence[float] = (40.0, 400.0),
        lowpass_range: Sequence[float] = (2.0, 6.0),
        boost_range: Sequence[float] = (0.0, 3.0),
    ) -> None:
        RandomizableTransform.__init__(self, prob)
        self.highpass_range = tuple(float(v) for v in highpass_range)
        self.lowpass_range = tuple(float(v) for v in lowpass_range)
        self.boost_range = tuple(float(v) for v in boost_range)
        self._params = (math.inf, 2.0, 0.0)

    def randomize(self, data: object = None) -> None:
        super().randomize(None)
        if not self._do_transform:
            return
        log_uniform = lambda r: math.exp(self.R.uniform(math.log(r[0]), math.log(r[1])))  # noqa: E731
        self._params = (log_uniform(self.highpass_range), log_uniform(self.lowpass_range),
                        float(self.R.uniform(*self.boost_range)))

    def __call__(self, img: NdarrayOrTensor, randomize: bool = True) -> NdarrayOrTensor:
        """``img``: ``(C, *S)``; returns the filtered, standardised crop."""
        if randomize:
            self.randomize()
        if not self._do_transform:
            return img
        x = convert_to_tensor(img, track_meta=False, dtype=torch.float32)
        hp, lp, boost = self._params
        h, w = x.shape[-2:]
        k = _radial_frequency(h, w, x.device)
        gain = (1 + boost * torch.exp(-((k * 20) ** 2))) * (1 - torch.exp(-((k * hp) ** 2)))
        gain = gain / (1 + (k * lp / 0.5) ** 8)  # k = 0.5 / lp cycles per pixel: half amplitude
        y = torch.fft.irfft2(torch.fft.rfft2(x) * gain, s=(h, w))
        out, *_ = convert_to_dst_type(_standardise(y), dst=img)
        return out


class RandSpectralNoise(RandomizableTransform):
    """Add noise whose power spectrum follows ``|k|^alpha`` in-plane (alpha < 0: blotchy,
    low-frequency noise as after denoising; 0: white; 1: WBP's ramp-weighted noise).

    Args:
        prob: probability of applying it.
        std_range: noise standard deviation relative to the (unit-variance) crop.
        alpha_range: spectral exponent range, drawn uniformly.

    Input ``(C, *S)``; output same shape and type, standardised.
    """

    def __init__(
        self,
        prob: float = 0.5,
        std_range: Sequence[float] = (0.1, 1.0),
        alpha_range: Sequence[float] = (-2.0, 1.0),
    ) -> None:
        RandomizableTransform.__init__(self, prob)
        self.std_range = tuple(float(v) for v in std_range)
        self.alpha_range = tuple(float(v) for v in alpha_range)
        self._std, self._alpha, self._seed = 0.0, 0.0, 0

    def randomize(self, data: object = None) -> None:
        super().randomize(None)
        if not self._do_transform:
            return
        self._std = float(self.R.uniform(*self.std_range))
        self._alpha = float(self.R.uniform(*self.alpha_range))
        self._seed = int(self.R.randint(0, 2**31 - 1))

    def __call__(self, img: NdarrayOrTensor, randomize: bool = True) -> NdarrayOrTensor:
        """``img``: ``(C, *S)``; returns the noisy, standardised crop."""
        if randomize:
            self.randomize()
        if not self._do_transform:
            return img
        x = convert_to_tensor(img, track_meta=False, dtype=torch.float32)
        h, w = x.shape[-2:]
        gen = torch.Generator(device="cpu").manual_seed(self._seed)
        white = torch.randn(x.shape, generator=gen).to(x.device)
        k = _radial_frequency(h, w, x.device).clamp_min(1.0 / max(h, w))
        noise = torch.fft.irfft2(torch.fft.rfft2(white) * k ** (self._alpha / 2), s=(h, w))
        noise = _standardise(noise) * self._std
        out, *_ = convert_to_dst_type(_standardise(x + noise), dst=img)
        return out


class _OneDrawForAllKeys(RandomizableTransform, MapTransform):
    """Dictionary twin of a random array transform: one random draw, applied to every key."""

    array_transform: type[RandomizableTransform]

    def __init__(
        self, keys: KeysCollection, prob: float = 0.5, allow_missing_keys: bool = False, **kwargs: Any
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, 1.0)
        self.transform = self.array_transform(prob=prob, **kwargs)

    def set_random_state(self, seed: int | None = None, state=None) -> _OneDrawForAllKeys:
        super().set_random_state(seed, state)
        self.transform.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        self.transform.randomize()
        for key in self.key_iterator(d):
            d[key] = self.transform(d[key], randomize=False)
        return d


class RandBandPassd(_OneDrawForAllKeys):
    """Dictionary version of :class:`RandBandPass` (one draw for all ``keys``)."""

    array_transform = RandBandPass


class RandSpectralNoised(_OneDrawForAllKeys):
    """Dictionary version of :class:`RandSpectralNoise` (one draw for all ``keys``)."""

    array_transform = RandSpectralNoise
