"""Synthetic cryo-ET tomograms with exact labels, for training, tests and demos.

:func:`generate_tomogram` draws a cellular scene to physical scale from the voxel size (Å) —
lipid bilayers (single and double membranes), hollow microtubules, two-lobed ribosomes, a
carbon film ending at a hole edge, and unlabelled background (ice slab, crowding particles,
actin-like filaments, gold beads) — and images it with a missing wedge, a CTF and noise
(:mod:`cryoet_monai.data.imaging`). Each tomogram gets its own random acquisition (domain
randomisation), all derived from one seed.

:func:`write_synthetic_dataset` writes such pairs as MRC files plus a MONAI (decathlon-style)
datalist, so training reads them exactly like a user's data.

Labels follow what is visible: a membrane is labelled as thick as its bilayer and only where
the missing wedge does not hide it (face-on to the beam), the microtubule label is the tube
wall, everything outside the ice slab is background.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cryoet_monai.classes import CLASSES, GENERATOR_OBJECTS
from cryoet_monai.data.datalist import split_counts
from cryoet_monai.data.imaging import ImagingParams, image_volume, visible_normals
from cryoet_monai.data.phantom import Canvas, Ellipsoid, IceSlab, Sheet, random_rotation, smooth_path
from cryoet_monai.data.tilt_series import TiltSeriesParams, reconstruct_tilt_series
from cryoet_monai.io.atomic import write_json_atomic

__all__ = [
    "GENERATOR_VERSION",
    "STORAGE_DTYPES",
    "IMAGING_MODES",
    "SceneParams",
    "SyntheticDataError",
    "build_phantom",
    "sample_params",
    "generate_tomogram",
    "write_synthetic_dataset",
]

logger = logging.getLogger(__name__)

#: bumped whenever the generated data change, so cached datasets are regenerated
GENERATOR_VERSION = "4"
#: storage dtypes written by :func:`write_synthetic_dataset` (``"random"`` picks one per tomogram)
STORAGE_DTYPES = ("float32", "float16", "int16", "uint8", "int8")

# the label each object kind is painted with (the class registry: cryoet_monai.classes)
_LABEL = {obj: CLASSES.label_of(obj) for obj in GENERATOR_OBJECTS}
_FOREGROUND = CLASSES.foreground
#: default probability that a class occurs in a tomogram
DEFAULT_CLASS_MIX: dict[str, float] = CLASSES.class_mix()
# density contrast relative to vitreous ice, in units of protein's: (rho - 0.94) / (1.35 - 0.94)
# with rho in g/cm³ (protein 1.35, nucleic acid 1.7, lipid head groups ~1.35, tails 0.86,
# amorphous carbon ~2.0, gold 19.3 capped: its contrast is mostly amplitude, vacuum 0)
_PROTEIN, _RNA, _LIPID_TAIL, _CARBON, _GOLD, _VACUUM = 1.0, 1.85, -0.2, 2.6, 12.0, -2.3
#: imaging modes: a simulated tilt series reconstructed by WBP (default), or the fast
#: equivalent filter in 3-D Fourier space (tests, quick demos)
IMAGING_MODES = ("tilt_series", "fourier")


class SyntheticDataError(ValueError):
    """Invalid generator options or an unusable output folder (the message names it)."""


@dataclass
class SceneParams:
    """What is drawn in one tomogram (numbers of objects scale with the imaged volume)."""

    crowding: float = 1.0  # multiplies ribosome, crowder and filament numbers
    present: dict[str, bool] = field(default_factory=lambda: dict.fromkeys(_FOREGROUND, True))
    ice_fraction: float = 0.8  # ice slab thickness / z extent of the volume
    gold: bool = True
    membrane_visibility_deg: float = 10.0


def _uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def sample_params(
    rng: np.random.Generator,
    voxel_size: float,
    *,
    snr: float | None = None,
    snr_range: tuple[float, float] = (0.5, 2.0),
    defocus_um: float | None = None,
    defocus_range_um: tuple[float, float] = (-8.0, -1.5),
    tilt_range: tuple[float, float] | None = None,
    tilt_step: float | None = None,
    phase_flip: bool | None = None,
    bfactor: float | None = None,
    lowpass: float | None = None,
    invert: bool = False,
    crowding: float | None = None,
    class_mix: Mapping[str, float] | None = None,
    ice_fraction: float | None = None,
    gold: bool | None = None,
    mode: str = "tilt_series",
    dose: float | None = None,
    dose_range: tuple[float, float] = (60.0, 180.0),
    reconstruction: str | None = None,
) -> tuple[SceneParams, ImagingParams]:
    """Draw the per-tomogram scene and acquisition; given values are kept as they are.

    All random draws happen in a fixed order whatever is given, so fixing one option does not
    change the others for the same seed.

    ``mode`` is ``"tilt_series"`` (projection, per-tilt CTF, Poisson noise at ``dose`` e⁻/Å²,
    WBP or a SIRT-like filter; noise-free with ``snr=inf``) or ``"fourier"`` (the same wedge,
    CTF and band-pass applied once in 3-D Fourier space, noise set by ``snr``).
    """
    if mode not in IMAGING_MODES:
        raise SyntheticDataError(f"mode {mode!r}: expected one of {IMAGING_MODES}")
    if mode == "tilt_series" and snr is not None and math.isfinite(float(snr)):
        raise SyntheticDataError(
            f"snr {snr}: a fixed SNR applies to mode='fourier'; in tilt_series mode the noise "
            "comes from the dose (dose=..., or snr=inf for none)"
        )
    if reconstruction is not None and reconstruction not in ("wbp", "sirt_like"):
        raise SyntheticDataError(f"reconstruction {reconstruction!r}: expected 'wbp' or 'sirt_like'")
    mix = dict(DEFAULT_CLASS_MIX)
    for k, v in (class_mix or {}).items():
        if k not in mix:
            raise SyntheticDataError(f"class_mix: unknown class {k!r} (known: {', '.join(mix)})")
        if not 0.0 <= float(v) <= 1.0:
            raise SyntheticDataError(f"class_mix[{k!r}] = {v}: a probability must be in [0, 1]")
        mix[k] = float(v)
    draws = {
        "snr": math.exp(_uniform(rng, math.log(snr_range[0]), math.log(snr_range[1]))),
        "defocus_um": _uniform(rng, *defocus_range_um),
        "tilt_half": _uniform(rng, 40.0, 70.0),
        "tilt_asym": _uniform(rng, -5.0, 5.0),
        "tilt_step": float(rng.choice([1.0, 2.0, 3.0])),
        "phase_flip": bool(rng.random() < 0.5),
        "bfactor": _uniform(rng, 200.0, 800.0),
        "lowpass_factor": _uniform(rng, 2.5, 3.5),
        "crowding": _uniform(rng, 0.6, 1.4),
        "ice_fraction": _uniform(rng, 0.6, 1.2),
        "gold": bool(rng.random() < 0.5),
        "present": {k: bool(rng.random() < mix[k]) for k in _FOREGROUND},
        # tilt-series acquisition and reconstruction (drawn in every mode: fixed draw order)
        "dose": math.exp(_uniform(rng, math.log(dose_range[0]), math.log(dose_range[1]))),
        "order": "dose_symmetric" if rng.random() < 0.6 else "bidirectional",
        "astigmatism_um": _uniform(rng, 0.0, 0.5),
        "astigmatism_angle": _uniform(rng, 0.0, 180.0),
        "amplitude_contrast": _uniform(rng, 0.07, 0.10),
        "bfactor0": _uniform(rng, 20.0, 150.0),
        "bfactor_per_dose": _uniform(rng, 2.0, 6.0),
        "shift_sigma": _uniform(rng, 0.0, 0.8),
        "contrast_scale": math.exp(_uniform(rng, math.log(0.4), math.log(1.3))),
        "mean_free_path": _uniform(rng, 2500.0, 4000.0),
        "reconstruction": "sirt_like" if rng.random() < 0.35 else "wbp",
        "sirt_iterations": int(rng.integers(5, 31)),
        # IMOD's RADIAL default is 0.35 / 0.035 cycles per pixel, i.e. 0.7 / 0.07 of Nyquist
        "radial_cutoff": _uniform(rng, 0.5, 0.9),
        "radial_falloff": _uniform(rng, 0.05, 0.2),
    }
    if tilt_range is None:
        tilt_range = (-draws["tilt_half"] + draws["tilt_asym"], draws["tilt_half"] + draws["tilt_asym"])
    tmin, tmax = (float(t) for t in tilt_range)
    if not -90 < tmin < tmax < 90:
        raise SyntheticDataError(f"tilt_range {tilt_range}: need -90 < min < max < 90 degrees")
    step = draws["tilt_step"] if tilt_step is None else float(tilt_step)
    if step < 0 or step > (tmax - tmin):
        raise SyntheticDataError(f"tilt_step {step}: must be in [0, tilt range] (0 = continuous)")
    scene = SceneParams(
        crowding=draws["crowding"] if crowding is None else float(crowding),
        present=draws["present"],
        ice_fraction=draws["ice_fraction"] if ice_fraction is None else float(ice_fraction),
        gold=draws["gold"] if gold is None else bool(gold),
    )
    imaging = ImagingParams(
        tilt_min=tmin,
        tilt_max=tmax,
        tilt_step=step or None,
        defocus_um=draws["defocus_um"] if defocus_um is None else float(defocus_um),
        phase_flip=draws["phase_flip"] if phase_flip is None else bool(phase_flip),
        bfactor=draws["bfactor"] if bfactor is None else float(bfactor),
        snr=draws["snr"] if snr is None else float(snr),
        lowpass=max(draws["lowpass_factor"] * voxel_size, 25.0) if lowpass is None else float(lowpass),
        invert=bool(invert),
    )
    imaging.mode = mode
    if mode == "tilt_series":
        total = draws["dose"] if dose is None else float(dose)
        if snr is not None and math.isinf(float(snr)):
            total = math.inf
        if not total > 0:
            raise SyntheticDataError(f"dose {total}: must be > 0 e/A^2 (inf = no noise)")
        imaging.tilt_series = TiltSeriesParams(
            tilt_min=tmin, tilt_max=tmax, tilt_step=step or 1.0, order=draws["order"], dose_total=total,
            defocus_um=imaging.defocus_um, astigmatism_um=draws["astigmatism_um"],
            astigmatism_angle=draws["astigmatism_angle"], amplitude_contrast=draws["amplitude_contrast"],
            bfactor=draws["bfactor0"], bfactor_per_dose=draws["bfactor_per_dose"],
            shift_sigma=draws["shift_sigma"], phase_flip=imaging.phase_flip,
            contrast_scale=draws["contrast_scale"], mean_free_path=draws["mean_free_path"],
            reconstruction=draws["reconstruction"] if reconstruction is None else reconstruction,
            sirt_iterations=draws["sirt_iterations"], radial_cutoff=draws["radial_cutoff"],
            radial_falloff=draws["radial_falloff"],
        )
    if imaging.defocus_um >= 0:
        raise SyntheticDataError(f"defocus_um {imaging.defocus_um}: underfocus is a negative number (µm)")
    if not imaging.snr > 0:
        raise SyntheticDataError(f"snr {imaging.snr}: must be > 0 (inf = no noise)")
    return scene, imaging


def _ribosome(rng: np.random.Generator, center: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Spheres of a 70S- or 80S-sized ribosome (20-30 nm): large subunit, small subunit with its
    head, irregular surface bumps; returns centres ``(K, 3)``, radii ``(K,)`` and densities
    ``(K,)`` (rRNA-rich large subunit denser than the small one)."""
    rot = random_rotation(rng)
    r_large = _uniform(rng, 85.0, 100.0) if rng.random() < 0.4 else _uniform(rng, 100.0, 120.0)
    r_small = r_large * _uniform(rng, 0.62, 0.75)
    rho = _uniform(rng, 1.1, 1.6)  # mixed protein / RNA, about as dark as other big complexes
    local = [np.zeros(3), np.array([r_large * 0.78 + 0.45 * r_small, 0.0, 0.0]),
             np.array([r_large * 0.6, r_small * 0.9, 0.0])]
    radii = [r_large, r_small, r_small * 0.65]
    dens = [rho, rho * 0.85, rho * 0.85]
    for _ in range(int(rng.integers(3, 6))):  # irregular outline (stalks, protuberances)
        m = rng.standard_normal(3)
        local.append(m / np.linalg.norm(m) * r_large * _uniform(rng, 0.7, 0.9))
        radii.append(r_large * _uniform(rng, 0.3, 0.45))
        dens.append(rho * _uniform(rng, 0.8, 1.0))
    centers = np.asarray(local) @ rot.T
    centers -= centers.mean(0)
    return _lumpy(rng, center + centers, np.asarray(radii), np.asarray(dens))


def _lumpy(
    rng: np.random.Generator, centers: np.ndarray, radii: np.ndarray, dens: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Give a union of spheres a lumpy interior (protein domains, RNA helices): the spheres
    drop to ~75 % of their density and 8-16 denser 3-8 nm lumps are placed inside them."""
    n = int(rng.integers(8, 17))
    host = rng.integers(0, len(radii), n)
    m = rng.standard_normal((n, 3))
    m /= np.linalg.norm(m, axis=1, keepdims=True)
    depth = radii[host] * rng.uniform(0.0, 0.7, n)
    lumps = centers[host] + m * depth[:, None]
    lump_r = np.minimum(radii[host] * rng.uniform(0.25, 0.45, n), radii[host] - depth)
    keep = lump_r > 15.0
    return (np.concatenate([centers, lumps[keep]]), np.concatenate([radii, lump_r[keep]]),
            np.concatenate([dens * _uniform(rng, 0.65, 0.85),
                            dens[host][keep] * rng.uniform(0.9, 1.2, keep.sum())]))


def _paint_distractors(cv: Canvas, rng: np.random.Generator, slab: IceSlab, n: int) -> int:
    """Unlabelled look-alikes of ribosomes: proteasome/chaperonin-like barrels and other large
    complexes of similar size and density (label 0), placed where nothing is labelled."""
    placed = 0
    for _ in range(n):
        p = cv.random_point(rng, slab, margin=80.0)
        rho = _uniform(rng, 0.8, 1.5)
        if rng.random() < 0.5:  # barrel: 20S/26S proteasome (11 x 15-45 nm), chaperonin (14 x 15 nm)
            d = rng.standard_normal(3)
            d /= np.linalg.norm(d)
            half = _uniform(rng, 70.0, 220.0)
            r_out = _uniform(rng, 55.0, 80.0)
            cv.paint_tube(np.stack([p - half * d, p + half * d]), r_out, r_out * _uniform(rng, 0.2, 0.45),
                          rho, _LABEL["distractor"] or None)
            placed += 1
        else:  # a globular complex of 1-4 domains, 15-30 nm across, textured like a ribosome
            k = int(rng.integers(1, 5))
            r0 = _uniform(rng, 60.0, 120.0)
            centers = p + rng.standard_normal((k, 3)) * r0 * 0.5
            radii = r0 * rng.uniform(0.5, 1.0, k)
            radii[0] = r0
            centers, radii, dens = _lumpy(rng, centers, radii, np.full(k, rho))
            placed += cv.paint_blob(centers, radii, rho, _LABEL["distractor"] or None, free_only=True,
                                    densities=dens) >= 0
    return placed


def _paint_membrane_proteins(cv: Canvas, rng: np.random.Generator, shape_, n: int, extent: float) -> None:
    """Proteins embedded in or bound to a membrane (label 0: the membrane label is kept)."""
    if n <= 0:
        return
    if isinstance(shape_, Sheet):
        pts, nrm = shape_.sample_surface(rng, n, extent)
    else:
        pts, nrm = shape_.sample_surface(rng, n)
    inside = np.all((pts > -200) & (pts < cv.extent + 200), axis=1)
    for c, m in zip(pts[inside], nrm[inside]):
        r = _uniform(rng, 25.0, 60.0)
        offset = _uniform(rng, -0.3, 1.0) * r  # transmembrane to peripheral
        cv.paint_blob((c + m * offset)[None], np.array([r]), _uniform(rng, 0.7, 1.2), None)


def _paint_cristae(cv: Canvas, rng: np.random.Generator, mito: Ellipsoid,
                   visible: Callable[[list[np.ndarray]], np.ndarray]) -> int:
    """Lamellar cristae inside a mitochondrion: flattened disks whose two faces are inner-membrane
    bilayers 16-30 nm apart, labelled double membrane like the envelope; returns labelled voxels.

    Disks stay within 80 % of the smallest semi-axis of the centre, i.e. inside the envelope."""
    minor = float(mito.axes.min())
    count = 0
    for _ in range(int(rng.integers(2, 9))):
        offset = rng.standard_normal(3)
        offset *= _uniform(rng, 0.0, 0.25) * minor / np.linalg.norm(offset)
        a = _uniform(rng, 0.3, 0.55) * minor
        axes = np.array([a, a * _uniform(rng, 0.4, 1.0), _uniform(rng, 80.0, 150.0)])
        disk = Ellipsoid(mito.center + offset, axes, random_rotation(rng))
        count += cv.paint_membrane(disk, (0.0,), _LABEL["cristae"], _uniform(rng, 20.0, 25.0),
                                   _uniform(rng, 36.0, 42.0), density=_uniform(rng, 0.4, 1.0),
                                   visible=visible, tail_density=_LIPID_TAIL * _uniform(rng, 0.5, 1.5))
    return count


def build_phantom(
    shape: Sequence[int],
    voxel_size: float,
    scene: SceneParams,
    imaging: ImagingParams,
    rng: np.random.Generator,
) -> tuple[Canvas, IceSlab, dict[str, Any]]:
    """Draw the density and labels of one scene; returns the canvas, the ice slab and object info."""
    cv = Canvas(tuple(shape), voxel_size)
    ext = cv.extent
    vs = voxel_size
    volume_um3 = float(np.prod(ext)) * scene.ice_fraction * 1e-12
    slab = IceSlab(
        center_z=ext[0] / 2 + _uniform(rng, -0.1, 0.1) * ext[0] * (1 - scene.ice_fraction),
        thickness=scene.ice_fraction * ext[0],
        slope_y=_uniform(rng, -0.03, 0.03),
        slope_x=_uniform(rng, -0.03, 0.03),
    )
    imaging.sample_thickness = slab.thickness
    visible = visible_normals(imaging, scene.membrane_visibility_deg)
    info: dict[str, Any] = {"single_membranes": [], "double_membranes": [], "microtubules": [],
                            "ribosomes": 0, "ribosomes_on_membranes": 0}
    pad = np.full(3, 300.0)

    def count(rate: float, minimum: int, cap: int = 10**6) -> int:
        # cap: large surfaces crossing a big field of view would otherwise fill it
        return min(cap, max(minimum, int(rng.poisson(rate * volume_um3))))

    # --- background crowding: small proteins, 2-6 nm radius (label 0)
    frac = 0.06 * scene.crowding
    for radius in (25.0, 40.0, 60.0):
        n = int(frac / 3 * np.prod(ext) * scene.ice_fraction / (4 / 3 * math.pi * radius**3))
        cv.stamp_particles(rng, n, radius, _uniform(rng, 0.5, 0.8), slab)
    # --- actin-like filaments, 7 nm thick, flexible (label 0)
    for _ in range(count(150 * scene.crowding, 0)):
        d = rng.standard_normal(3)
        path = smooth_path(rng, cv.random_point(rng, slab), d, 100.0, _uniform(rng, 2000.0, 8000.0),
                           -pad, ext + pad, _uniform(rng, 1000.0, 6000.0))
        cv.paint_tube(path, 35.0, 0.0, 0.8, _LABEL["actin"] or None)

    # --- double membranes: mitochondrion-like ellipsoids or nuclear-envelope-like sheets
    surfaces = []
    if scene.present["double_membrane"]:
        for _ in range(count(25, 1, cap=5)):
            # lumen between the bilayers: 6 nm (mitochondrial envelope) to 50 nm (nuclear envelope)
            gap = math.exp(_uniform(rng, math.log(60.0), math.log(500.0)))
            spacing = gap + 45.0  # bilayer centre to centre, Å
            half = _uniform(rng, 20.0, 25.0)
            half = min(half, (spacing - vs) / 2)  # keep the gap between the bilayers visible
            p = cv.random_point(rng, slab)
            if rng.random() < (0.8 if gap < 150 else 0.3):
                axes = np.array([_uniform(rng, 2500, 6000), _uniform(rng, 1500, 3000),
                                 _uniform(rng, 1500, 3000)])
                shape_ = Ellipsoid.through_point(p, axes, random_rotation(rng), rng)
                offsets, fill, kind = (spacing / 2, -spacing / 2), 0.25, "mitochondrion"
            else:
                shape_ = _sheet(rng, p)
                offsets, fill, kind = (spacing / 2, -spacing / 2), 0.0, "nuclear_envelope"
            n = cv.paint_membrane(shape_, offsets, _LABEL[kind], half, _uniform(rng, 36.0, 42.0),
                                  density=_uniform(rng, 0.4, 1.1), fill=fill * _uniform(rng, 0.3, 1.5),
                                  visible=visible, tail_density=_LIPID_TAIL * _uniform(rng, 0.5, 1.5))
            if kind == "mitochondrion":
                n += _paint_cristae(cv, rng, shape_, visible)
            _paint_membrane_proteins(cv, rng, shape_, int(rng.integers(0, 60)), float(ext.max()))
            info["double_membranes"].append({"kind": kind, "shape": shape_, "spacing": spacing,
                                             "half_thickness": half, "voxels": n})
    # --- single membranes: vesicles, ER-like flattened ellipsoids, ER sheets
    if scene.present["single_membrane"]:
        for _ in range(count(250, 1, cap=25)):
            p = cv.random_point(rng, slab)
            u = rng.random()
            if u < 0.5:
                r = math.exp(_uniform(rng, math.log(200.0), math.log(2000.0)))
                axes = r * rng.uniform(0.8, 1.0, 3)
                shape_, kind = Ellipsoid.through_point(p, axes, random_rotation(rng), rng), "vesicle"
            elif u < 0.8:
                # ER cisterna: lumen 70-150 nm, wider than any double membrane (<= 55 nm centre to
                # centre), so "two bilayers closer than ~55 nm" means double membrane everywhere
                a = _uniform(rng, 1000.0, 4000.0)
                axes = np.array([a, a * _uniform(rng, 0.3, 0.6), _uniform(rng, 350.0, 750.0)])
                shape_, kind = Ellipsoid.through_point(p, axes, random_rotation(rng), rng), "er_cisterna"
            else:
                shape_, kind = _sheet(rng, p), "membrane_sheet"
            half = _uniform(rng, 20.0, 25.0)
            n = cv.paint_membrane(shape_, (0.0,), _LABEL[kind], half, _uniform(rng, 36.0, 42.0),
                                  density=_uniform(rng, 0.4, 1.1), visible=visible,
                                  tail_density=_LIPID_TAIL * _uniform(rng, 0.5, 1.5))
            _paint_membrane_proteins(cv, rng, shape_, int(rng.integers(0, 40)), float(ext.max()))
            info["single_membranes"].append({"kind": kind, "shape": shape_, "half_thickness": half,
                                             "voxels": n})
            surfaces.append(shape_)
    # --- microtubules: 25 nm outer / 15 nm inner diameter, long, gently curved, any orientation
    if scene.present["microtubule"]:
        for _ in range(count(100, 1, cap=25)):
            p = cv.random_point(rng, slab, margin=60.0)
            path = smooth_path(rng, p, rng.standard_normal(3), 200.0, _uniform(rng, 5000.0, 30000.0),
                               -pad, ext + pad, _uniform(rng, 3000.0, 20000.0))
            r_out = _uniform(rng, 120.0, 130.0)
            r_in = _uniform(rng, 70.0, 80.0)
            n = cv.paint_tube(path, r_out, r_in, _PROTEIN * _uniform(rng, 0.9, 1.3),
                           _LABEL["microtubule"])
            info["microtubules"].append({"path": path, "r_out": r_out, "r_in": r_in, "voxels": n})
    # --- ribosomes: crowded, some bound to membranes (rough ER)
    if scene.present["ribosome"]:
        target = count(12000 * scene.crowding, 3)
        n_bound = int(round(0.15 * target)) if surfaces else 0
        placed = 0
        if n_bound:
            for _ in range(3 * n_bound):
                s = surfaces[int(rng.integers(len(surfaces)))]
                if isinstance(s, Sheet):
                    pts, nrm = s.sample_surface(rng, 1, float(ext.max()))
                else:
                    pts, nrm = s.sample_surface(rng, 1)
                c = pts[0] + nrm[0] * 170.0
                if np.any(c < 0) or np.any(c > ext) or slab.depth(*c) < 100:
                    continue
                centers, radii, dens = _ribosome(rng, c)
                placed += cv.paint_blob(centers, radii, 1.0, _LABEL["ribosome"], free_only=True,
                                        densities=dens) > 0
                if placed >= n_bound:
                    break
        info["ribosomes_on_membranes"] = placed
        for _ in range(3 * target):
            if placed >= target:
                break
            centers, radii, dens = _ribosome(rng, cv.random_point(rng, slab, margin=100.0))
            placed += cv.paint_blob(centers, radii, 1.0, _LABEL["ribosome"], free_only=True,
                                    densities=dens) > 0
        info["ribosomes"] = placed
    # --- look-alike large complexes (label 0), in every tomogram: ribosomes are told by shape
    info["distractors"] = _paint_distractors(
        cv, rng, slab, count(12000 * scene.crowding * _uniform(rng, 0.2, 0.8), 0, cap=400))
    # --- gold fiducials: 10 nm, very dense, near the ice surfaces (label 0)
    if scene.gold:
        area_um2 = ext[1] * ext[2] * 1e-8
        for _ in range(int(rng.poisson(30 * area_um2))):
            p = cv.random_point(rng, None)
            lo, hi = slab.surfaces(p[1], p[2])
            p[0] = lo + 60.0 if rng.random() < 0.5 else hi - 60.0
            cv.paint_blob(p[None], np.array([50.0]), _GOLD, _LABEL["gold"], overwrite=True)

    cv.apply_slab(slab, _VACUUM)
    # --- carbon film (15-50 nm) ending at a curved hole edge, painted over everything
    if scene.present["carbon_edge"]:
        info["carbon"] = _paint_carbon(cv, rng)
    return cv, slab, info


def _sheet(rng: np.random.Generator, p: np.ndarray) -> Sheet:
    # sheets seen edge-on are the visible ones: keep the mean normal within 60 deg of the xy plane
    n = rng.standard_normal(3)
    n[0] *= 0.5
    return Sheet(p, n, _uniform(rng, 50.0, 300.0), (_uniform(rng, 3000, 10000), _uniform(rng, 3000, 10000)),
                 rng.uniform(0, 2 * math.pi, 2))


def _paint_carbon(cv: Canvas, rng: np.random.Generator) -> dict[str, Any]:
    ext, vs = cv.extent, cv.voxel_size
    thickness = min(_uniform(rng, 150.0, 500.0), max(0.25 * ext[0], 2 * vs))
    tilt = rng.normal(0, 0.05, 2)
    normal = np.array([1.0, tilt[0], tilt[1]])
    normal /= np.linalg.norm(normal)
    cz = _uniform(rng, thickness / 2, ext[0] - thickness / 2)
    radius = _uniform(rng, 4000.0, 15000.0)
    # the film lies behind the edge (away from the hole centre): put the edge so that it covers
    # roughly 10-40 % of the field of view
    ang = _uniform(rng, 0, 2 * math.pi)
    u = np.array([math.cos(ang), math.sin(ang)])
    half = 0.5 * np.array([ext[1], ext[2]])
    reach = float(np.abs(u) @ half)  # centre-to-border distance of the field of view along u
    edge = half - u * reach * _uniform(rng, 0.2, 0.8)
    hole = edge + radius * u
    center = np.array([cz, ext[1] / 2, ext[2] / 2])

    # amorphous carbon grain: a sum of random plane waves (3-10 nm), continuous across blocks
    # (32 waves in random directions: close to a Gaussian random field, no visible periodicity)
    waves = rng.standard_normal((32, 3))
    waves *= (2 * math.pi / rng.uniform(30.0, 100.0, 32) / np.linalg.norm(waves, axis=1))[:, None]
    phases = rng.uniform(0, 2 * math.pi, 32)

    def grain(z, y, x):
        g = sum(np.cos(z * np.float32(k[0]) + y * np.float32(k[1]) + x * np.float32(k[2]) + np.float32(ph))
                for k, ph in zip(waves, phases))
        return np.float32(_CARBON) * (1 + np.float32(0.2 / math.sqrt(16)) * g)

    def sdf(z, y, x, normals=False):
        film = np.abs((z - center[0]) * normal[0] + (y - center[1]) * normal[1]
                      + (x - center[2]) * normal[2]) - thickness / 2
        rim = radius - np.sqrt((y - hole[0]) ** 2 + (x - hole[1]) ** 2)
        return np.maximum(film, rim), None

    for sl, inside in cv.blocks(np.full(3, -np.inf), np.full(3, np.inf), sdf, vs):
        coords = cv.coords(sl)
        if inside:
            cv.rho[sl] = grain(*coords)
            cv.label[sl] = _LABEL["carbon"]
            continue
        d, _ = sdf(*coords)
        w = np.clip(0.5 - d / vs, 0, 1).astype(np.float32)
        cv.rho[sl] = w * grain(*coords) + (1 - w) * cv.rho[sl]
        cv.label[sl][d <= 0] = _LABEL["carbon"]
    return {"thickness": thickness, "normal": normal, "center": center, "hole_center": hole,
            "hole_radius": radius}


def _check_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 4:
        raise SyntheticDataError(f"shape {shape}: need three sizes (Z, Y, X) of at least 4 voxels")
    return shape  # type: ignore[return-value]


def _check_voxel_size(voxel_size: float) -> float:
    vs = float(voxel_size)
    if not 1.0 <= vs <= 100.0:  # also refuses NaN
        raise SyntheticDataError(f"voxel_size {vs} Å: expected 1-100 Å")
    return vs


def generate_tomogram(
    shape: Sequence[int] = (64, 256, 256),
    voxel_size: float | None = 10.0,
    seed: int = 0,
    *,
    return_info: bool = False,
    workers: int = 2,
    **options: Any,
) -> tuple[np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Generate one synthetic tomogram and its label volume, deterministically from ``seed``.

    Args:
        shape: ``(Z, Y, X)`` voxels.
        voxel_size: Å per voxel; objects are drawn to physical scale. ``None`` draws it
            uniformly from 5-20 Å.
        seed: random seed; the same seed and options give identical arrays.
        return_info: also return a dict with the sampled parameters and the drawn objects.
        workers: threads for the FFTs.
        options: fixed values instead of random draws, see :func:`sample_params`
            (``snr``, ``snr_range``, ``defocus_um``, ``defocus_range_um``, ``tilt_range``,
            ``tilt_step``, ``phase_flip``, ``bfactor``, ``lowpass``, ``invert``, ``crowding``,
            ``class_mix``, ``ice_fraction``, ``gold``, ``mode`` ("tilt_series" or "fourier"),
            ``dose``, ``dose_range``, ``reconstruction`` ("wbp" or "sirt_like")).

    Returns:
        ``(image, label)``: float32 ``(Z, Y, X)`` normalised to zero mean and unit variance with
        raw polarity (dense dark, unless ``invert=True``), and uint8 ``(Z, Y, X)`` labels
        0-5 (:data:`cryoet_monai.CLASS_NAMES`); plus the info dict when ``return_info``.
    """
    shape = _check_shape(shape)
    rng = np.random.default_rng(np.random.SeedSequence(int(seed)))
    vs_draw = _uniform(rng, 5.0, 20.0)
    vs = _check_voxel_size(vs_draw if voxel_size is None else voxel_size)
    scene, imaging = sample_params(rng, vs, **options)
    t0 = time.perf_counter()
    cv, slab, info = build_phantom(shape, vs, scene, imaging, rng)
    t1 = time.perf_counter()
    if imaging.mode == "tilt_series":
        imaging.tilt_series.ice_thickness = slab.thickness
        image = reconstruct_tilt_series(cv.rho, vs, imaging.tilt_series, rng, workers=workers)
        if imaging.invert:
            np.negative(image, out=image)
    else:
        mask = (cv.rho > _VACUUM / 2) & (cv.rho < 3.0) & (cv.label != _LABEL["carbon"])
        image = image_volume(cv.rho, vs, imaging, rng, signal_mask=mask, workers=workers)
        del mask
    info["timing"] = {"phantom_s": t1 - t0, "imaging_s": time.perf_counter() - t1}
    cv.rho = None  # consumed by image_volume
    label = cv.label
    if not return_info:
        return image, label
    info.update(voxel_size=vs, scene=asdict(scene), imaging=asdict(imaging), slab=asdict(slab))
    return image, label, info


# ------------------------------------------------------------------------------------------- datasets
def _to_storage(image: np.ndarray, dtype: str, rng: np.random.Generator) -> np.ndarray:
    """Convert a normalised float32 tomogram to a storage dtype with a random affine scaling
    (as different software writes them)."""
    if dtype == "float32":
        return image
    if dtype == "float16":
        return image.astype(np.float16)
    if dtype == "int16":
        scale, offset, lo, hi = _uniform(rng, 300, 3000), _uniform(rng, -2000, 2000), -32768, 32767
    elif dtype == "uint8":
        scale, offset, lo, hi = _uniform(rng, 20, 30), _uniform(rng, 110, 145), 0, 255
    elif dtype == "int8":
        scale, offset, lo, hi = _uniform(rng, 15, 22), _uniform(rng, -10, 10), -128, 127
    else:
        raise SyntheticDataError(f"storage dtype {dtype!r}: not one of {STORAGE_DTYPES} or 'random'")
    return np.clip(np.rint(image * scale + offset), lo, hi).astype(dtype)


def write_synthetic_dataset(
    out_dir: str | os.PathLike,
    n: int,
    shape: Sequence[int] = (64, 256, 256),
    voxel_size: float = 10.0,
    seed: int = 0,
    val_fraction: float = 0.2,
    test_fraction: float = 0.1,
    randomize_voxel_size: bool = False,
    voxel_size_range: tuple[float, float] = (5.0, 20.0),
    storage_dtype: str = "float32",
    overwrite: bool = False,
    verbose: bool = False,
    **options: Any,
) -> Path:
    """Write ``n`` synthetic tomograms + labels as MRC files and a decathlon-style datalist.

    Layout: ``out_dir/images/synth_XXXX.mrc``, ``out_dir/labels/synth_XXXX.mrc`` (voxel size in the
    header), ``out_dir/datalist.json`` with ``training`` / ``validation`` / ``test`` lists of
    ``{"image", "label"}`` paths relative to ``out_dir`` (split by tomogram; at least one
    validation tomogram when ``n >= 2``), and ``out_dir/synthetic.json`` recording the parameters
    and per-tomogram acquisition. When ``synthetic.json`` already records the same parameters
    and all files exist, nothing is regenerated (a cache for repeated training runs).

    Args:
        out_dir: output folder (created).
        n: number of tomograms (>= 1).
        shape: ``(Z, Y, X)`` voxels of each tomogram.
        voxel_size: Å, used for every tomogram unless ``randomize_voxel_size``.
        seed: base seed; tomogram ``i`` uses a seed derived from ``(seed, i)``.
        val_fraction, test_fraction: fractions of tomograms for validation and test.
        randomize_voxel_size: draw each tomogram's voxel size uniformly from ``voxel_size_range``.
        storage_dtype: one of :data:`STORAGE_DTYPES` or ``"random"`` (one per tomogram).
        overwrite: regenerate even if a matching dataset exists.
        verbose: print one line per tomogram.
        options: generator options passed to :func:`generate_tomogram`.

    Returns:
        path of ``datalist.json``.
    """
    from cryoet_monai.io.mrc import save_mrc  # the one place that writes MRC files

    out = Path(out_dir)
    n = int(n)
    if n < 1:
        raise SyntheticDataError(f"{out}: n = {n}, need at least one tomogram")
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise SyntheticDataError(
            f"{out}: val_fraction {val_fraction}, test_fraction {test_fraction}: need sum < 1"
        )
    if storage_dtype != "random" and storage_dtype not in STORAGE_DTYPES:
        raise SyntheticDataError(f"{out}: storage_dtype {storage_dtype!r} not in {STORAGE_DTYPES}/'random'")
    # refuse bad shapes, voxel sizes and options before anything is written
    shape = list(_check_shape(shape))
    for vs in voxel_size_range if randomize_voxel_size else (voxel_size,):
        sample_params(np.random.default_rng(0), _check_voxel_size(vs), **options)
    params = {
        "generator_version": GENERATOR_VERSION,
        "n": n,
        "shape": shape,
        "voxel_size": float(voxel_size),
        "seed": int(seed),
        "val_fraction": float(val_fraction),
        "test_fraction": float(test_fraction),
        "randomize_voxel_size": bool(randomize_voxel_size),
        "voxel_size_range": [float(v) for v in voxel_size_range],
        "storage_dtype": storage_dtype,
        "options": json.loads(json.dumps(options, default=str)),
    }
    datalist_path, record_path = out / "datalist.json", out / "synthetic.json"
    if not overwrite and datalist_path.is_file() and record_path.is_file():
        try:
            record = json.loads(record_path.read_text())
        except (OSError, ValueError):
            record = {}
        if record.get("params") == params and all(
            (out / t[k]).is_file() for t in record.get("tomograms", []) for k in ("image", "label")
        ):
            return datalist_path
    if out.exists() and not out.is_dir():
        raise SyntheticDataError(f"{out}: exists and is not a folder")
    logger.info(
        "generating %d synthetic tomograms of shape %s (%s) into %s",
        n,
        tuple(shape),
        "random voxel sizes" if randomize_voxel_size else f"{float(voxel_size):.1f} A voxels",
        out,
    )
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    for stale in (datalist_path, record_path):  # an interrupted run must not look complete
        stale.unlink(missing_ok=True)

    tomograms = []
    for i in range(n):
        sub = np.random.SeedSequence([int(seed), i])
        tomo_seed = int(sub.generate_state(1, np.uint32)[0])
        aux = np.random.default_rng(sub.spawn(1)[0])
        vs = _uniform(aux, *voxel_size_range) if randomize_voxel_size else float(voxel_size)
        dtype = storage_dtype
        if dtype == "random":
            dtype = STORAGE_DTYPES[int(aux.integers(len(STORAGE_DTYPES)))]
        image, label, info = generate_tomogram(shape, vs, tomo_seed, return_info=True, **options)
        name = f"synth_{i:04d}.mrc"
        save_mrc(out / "images" / name, _to_storage(image, dtype, aux), voxel_size=vs,
                 imod_unsigned=dtype == "uint8")
        save_mrc(out / "labels" / name, label, voxel_size=vs)
        fractions = np.bincount(label.reshape(-1), minlength=6)[:6] / label.size
        tomograms.append({
            "image": f"images/{name}", "label": f"labels/{name}", "seed": tomo_seed,
            "voxel_size": vs, "storage_dtype": dtype, "ribosomes": info["ribosomes"],
            "class_fractions": [round(float(f), 5) for f in fractions],
            "imaging": info["imaging"], "scene": info["scene"],
        })
        if verbose:
            print(f"{out / 'images' / name}: {vs:.2f} Å, {dtype}, snr {info['imaging']['snr']:.2f}, "
                  f"class fractions {np.round(fractions, 3).tolist()}", flush=True)
    n_train, n_val, _ = split_counts(n, val_fraction, test_fraction)
    pairs = [{"image": t["image"], "label": t["label"]} for t in tomograms]
    datalist = {
        "description": "synthetic cryo-ET tomograms (cryoet_monai.data.synthetic)",
        "labels": {"0": "background", "1": "microtubule", "2": "ribosome", "3": "double_membrane",
                   "4": "single_membrane", "5": "carbon_edge"},
        "training": pairs[:n_train],
        "validation": pairs[n_train:n_train + n_val],
        "test": pairs[n_train + n_val:],
    }
    write_json_atomic(record_path, {"params": params, "tomograms": tomograms})
    write_json_atomic(datalist_path, datalist)
    return datalist_path
