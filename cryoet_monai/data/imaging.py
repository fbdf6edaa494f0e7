"""Tomographic imaging model for synthetic tomograms: missing wedge, CTF, noise, band-pass.

Instead of projecting, back-projecting and filtering a tilt series (weighted back-projection,
WBP), the equivalent operations are applied once in 3-D Fourier space (central-slice theorem):

- missing wedge: a single-axis tilt series about y (beam along z) samples the central planes
  whose (kz, kx) direction makes an angle ``theta`` in ``[tilt_min, tilt_max]`` with kx; each
  plane has a thickness ~ 1 / (sample thickness), so with a finite tilt step the planes leave
  gaps at high frequency (Crowther), as in WBP;
- CTF of each tilt image, ``-(sqrt(1 - A²) sin γ + A cos γ)`` with
  ``γ = π λ Δf k² - π/2 Cs λ³ k⁴`` (underfocus ``Δf > 0``), optionally phase-flipped, times a
  B-factor envelope; on a central plane the 2-D frequency equals the 3-D ``|k|``;
- noise of the tilt images, white per projection and ramp-weighted by WBP, hence a power
  spectrum ~ ``|k|`` restricted to the sampled wedge;
- a band-pass (high-pass against the ice/vacuum step, low-pass as when tomograms are binned
  and filtered for viewing).

Everything is float32 / complex64 and processed in z-chunks to keep the memory near a few
copies of the volume. The sign convention gives raw polarity: dense material dark.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.fft

from cryoet_monai.data.tilt_series import TiltSeriesParams

__all__ = ["ImagingParams", "electron_wavelength", "wedge_weight", "ctf", "image_volume", "visible_normals"]

_CHUNK = 8  # z-planes of the half spectrum per chunk


def electron_wavelength(voltage_kv: float) -> float:
    """Relativistic electron wavelength in Å."""
    v = voltage_kv * 1e3
    return 12.2643 / math.sqrt(v * (1 + 0.97845e-6 * v))


@dataclass
class ImagingParams:
    """Parameters of the simulated acquisition and reconstruction (angles in degrees, Å, µm)."""

    tilt_min: float = -60.0
    tilt_max: float = 60.0
    tilt_step: float | None = 2.0  # None: continuous wedge
    defocus_um: float = -4.0  # negative = underfocus, as usually quoted
    phase_flip: bool = False
    amplitude_contrast: float = 0.07
    voltage_kv: float = 300.0
    cs_mm: float = 2.7
    bfactor: float = 400.0  # Å², envelope exp(-B k² / 4)
    snr: float = 1.0  # signal variance / noise variance per voxel after filtering
    highpass: float = 1000.0  # Å, wavelengths longer than this are suppressed
    lowpass: float = 30.0  # Å, half-amplitude resolution of the low-pass
    sample_thickness: float = 1000.0  # Å, sets the thickness of each sampled Fourier plane
    invert: bool = False  # True: dense material bright
    noise_slope: float = 0.0  # noise power ~ |k|^slope before the band-pass (1 = WBP ramp, 0 = white)
    mode: str = "fourier"  # "fourier" (this module) or "tilt_series" (cryoet_monai.data.tilt_series)
    tilt_series: TiltSeriesParams | None = None  # the acquisition simulated in "tilt_series" mode


def _angle(kz: np.ndarray, kx: np.ndarray) -> np.ndarray:
    """Tilt angle (degrees, in [-90, 90]) of the central plane containing the (kz, kx) direction."""
    return np.degrees(np.arctan2(-kz, kx))


def wedge_weight(kz: np.ndarray, kx: np.ndarray, p: ImagingParams) -> np.ndarray:
    """Sampling weight in [0, 1] of Fourier points (kz, kx) (1/Å, broadcastable) by the tilt series.

    Independent of ky (the tilt axis). Needs ``kx >= 0`` (rfft half-space) or symmetric use.
    """
    kz, kx = np.broadcast_arrays(np.asarray(kz, np.float64), np.asarray(kx, np.float64))
    psi = _angle(kz, kx)
    psi = np.where(psi > 90, psi - 180, np.where(psi <= -90, psi + 180, psi))
    if p.tilt_step:
        n = int(math.floor((p.tilt_max - p.tilt_min) / p.tilt_step + 1e-6)) + 1
        j = np.clip(np.round((psi - p.tilt_min) / p.tilt_step), 0, n - 1)
        nearest = p.tilt_min + j * p.tilt_step
    else:
        nearest = np.clip(psi, p.tilt_min, p.tilt_max)
    dist = np.hypot(kz, kx) * np.abs(np.sin(np.radians(psi - nearest)))
    return np.exp(-math.pi * (dist * p.sample_thickness) ** 2).astype(np.float32)


def visible_normals(p: ImagingParams, tolerance_deg: float = 10.0):
    """A function ``f([nz, ny, nx]) -> bool array``: is a surface with this normal visible?

    A membrane's signal lies along its normal in Fourier space; it is visible when that
    direction is within ``tolerance_deg`` of the sampled region (the tilt range in the
    (kz, kx) plane, any ky).
    """
    cos_tol = math.cos(math.radians(tolerance_deg))

    def f(n: list[np.ndarray]) -> np.ndarray:
        nz, ny, nx = n
        psi = _angle(nz, nx)
        psi = np.where(psi > 90, psi - 180, np.where(psi <= -90, psi + 180, psi))
        gap = np.maximum(np.maximum(p.tilt_min - psi, psi - p.tilt_max), 0)
        gap = np.minimum(gap, 180 - (p.tilt_max - p.tilt_min) - gap)  # the wedge wraps at +-90
        cos_d = ny**2 + (nz**2 + nx**2) * np.cos(np.radians(gap))
        return cos_d >= cos_tol

    return f


def ctf(k: np.ndarray, p: ImagingParams) -> np.ndarray:
    """Contrast transfer (times envelope) at spatial frequency ``k`` (1/Å); negative = dense dark."""
    lam = electron_wavelength(p.voltage_kv)
    df = -p.defocus_um * 1e4  # underfocus in Å, positive
    cs = p.cs_mm * 1e7
    k2 = k * k
    gamma = math.pi * lam * df * k2 - 0.5 * math.pi * cs * lam**3 * k2 * k2
    a = p.amplitude_contrast
    t = math.sqrt(1 - a * a) * np.sin(gamma) + a * np.cos(gamma)
    if p.phase_flip:
        t = np.abs(t)
    return (-t * np.exp(-p.bfactor * k2 / 4)).astype(np.float32)


def _bandpass(k: np.ndarray, p: ImagingParams) -> np.ndarray:
    hp = 1 - np.exp(-((k * p.highpass) ** 2))
    lp = np.exp(-math.log(2) * (k * p.lowpass) ** 4)
    return (hp * lp).astype(np.float32)


def _freqs(shape, voxel_size):
    z, y, x = shape
    return (
        scipy.fft.fftfreq(z, voxel_size).astype(np.float32),
        scipy.fft.fftfreq(y, voxel_size).astype(np.float32),
        scipy.fft.rfftfreq(x, voxel_size).astype(np.float32),
    )


def _masked_std(a: np.ndarray, rng: np.random.Generator, mask: np.ndarray | None, n: int = 500_000) -> float:
    """Standard deviation of ``a`` over ``mask``, from a random subsample of voxels."""
    flat = a.reshape(-1)
    idx = rng.integers(0, flat.size, min(n, flat.size))
    if mask is not None:
        sel = idx[mask.reshape(-1)[idx]]
        idx = sel if sel.size >= 100 else idx
    return float(flat[idx].std())


def image_volume(
    rho: np.ndarray,
    voxel_size: float,
    p: ImagingParams,
    rng: np.random.Generator,
    signal_mask: np.ndarray | None = None,
    workers: int = 2,
) -> np.ndarray:
    """Simulate the reconstructed tomogram of density ``rho`` ``(Z, Y, X)``; returns float32.

    The noise is scaled so that the variance of the filtered signal over
    ``signal_mask`` (e.g. the cell, excluding carbon and gold) is ``p.snr`` times the noise
    variance. The result is normalised to zero mean and unit variance. ``rho`` is consumed.
    """
    shape = rho.shape
    kz, ky, kx = _freqs(shape, voxel_size)
    wedge = wedge_weight(kz[:, None], kx[None, :], p)  # (Z, Xr), broadcast over ky
    spec = scipy.fft.rfftn(rho, workers=workers, overwrite_x=True)
    del rho
    knyq = 0.5 / voxel_size
    for z0 in range(0, shape[0], _CHUNK):
        z1 = min(z0 + _CHUNK, shape[0])
        k = np.sqrt(kz[z0:z1, None, None] ** 2 + ky[None, :, None] ** 2 + kx[None, None, :] ** 2)
        spec[z0:z1] *= ctf(k, p) * _bandpass(k, p) * wedge[z0:z1, None, :]
    signal = scipy.fft.irfftn(spec, s=shape, workers=workers)
    # noise drawn directly in Fourier space: complex Gaussian with E|n_k|² = N (unit white noise)
    scale = np.float32(math.sqrt(np.prod(shape) / 2))
    for z0 in range(0, shape[0], _CHUNK):
        z1 = min(z0 + _CHUNK, shape[0])
        k = np.sqrt(kz[z0:z1, None, None] ** 2 + ky[None, :, None] ** 2 + kx[None, None, :] ** 2)
        color = (k / knyq) ** np.float32(p.noise_slope / 2) * _bandpass(k, p) * wedge[z0:z1, None, :]
        re = rng.standard_normal(color.shape, dtype=np.float32)
        im = rng.standard_normal(color.shape, dtype=np.float32)
        spec[z0:z1].real = re * color * scale
        spec[z0:z1].imag = im * color * scale
    noise = scipy.fft.irfftn(spec, s=shape, workers=workers)
    del spec
    s_std = _masked_std(signal, rng, signal_mask)
    n_std = float(noise.std())
    if math.isfinite(p.snr) and p.snr > 0 and n_std > 0:
        noise *= np.float32(s_std / (n_std * math.sqrt(p.snr)))
        signal += noise
    del noise
    if p.invert:
        np.negative(signal, out=signal)
    signal -= np.float32(signal.mean())
    std = float(signal.std())
    if std > 0:
        signal /= np.float32(std)
    return signal.astype(np.float32, copy=False)
