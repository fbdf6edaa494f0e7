"""Transfer evaluation: score a model on rendering families it was not trained on.

Without a real labelled test set to tune on, transfer is measured *leave-one-style-out*: the
shipped model is trained on one set of rendering families (:data:`TRAINING_STYLE`) and scored
on synthetic tomograms drawn from families outside it (:data:`STYLE_FAMILIES`: another image
formation, doses, defoci and voxel sizes outside the training ranges), plus the in-distribution
family as a reference. Scores are the boundary-tolerant F1 (2 voxels) of every class present in
a tomogram, and the fraction of voxels predicted as a class that is absent.

:func:`evaluate_real_crops` scores the two real microtubule crops of the shared corpus against
their approximate labels (evaluation only: never used for training or model selection).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cryoet_monai import CLASS_NAMES
from cryoet_monai.io.mrc import read_mrc, save_mrc
from cryoet_monai.metrics import tolerant_counts

__all__ = [
    "STYLE_FAMILIES",
    "TRAINING_STYLE",
    "evaluate_polarity",
    "evaluate_real_crops",
    "evaluate_styles",
    "score_volume",
    "style_tomograms",
    "summarise_scores",
]

logger = logging.getLogger(__name__)

#: what the shipped model's training data spans (configs/transfer.json)
TRAINING_STYLE = {
    "mode": "tilt_series",
    "dose_e_per_A2": [60, 180],
    "defocus_um": [-8.0, -1.5],
    "voxel_size_A": [9.0, 11.5],
}

#: name -> (voxel size Å, generator options); all but "in_distribution" lie outside TRAINING_STYLE
STYLE_FAMILIES: dict[str, tuple[float, dict[str, Any]]] = {
    "in_distribution": (10.0, {}),
    "fourier_rendering": (10.0, {"mode": "fourier", "snr_range": (0.3, 1.0)}),
    "low_dose_25_50": (10.0, {"dose_range": (25.0, 50.0)}),
    "defocus_8_10um": (10.0, {"defocus_range_um": (-10.0, -8.0)}),
    "voxel_14A": (14.0, {}),
}


def score_volume(pred: np.ndarray, label: np.ndarray, tolerance: int = 2) -> dict[str, Any]:
    """Tolerant F1 per class present in ``label`` and the voxel fraction predicted as absent classes.

    ``pred`` and ``label`` are ``(Z, Y, X)`` integer volumes (255 in ``label`` = not annotated).
    Counts are taken slice by slice in 2-D (in-plane tolerance), as annotators draw.
    """
    p = torch.as_tensor(np.asarray(pred, dtype=np.int64))[:, None]
    y = torch.as_tensor(np.asarray(label, dtype=np.int64))[:, None]
    counts = tolerant_counts(p, y, len(CLASS_NAMES), tolerance).sum(0).double()
    present = np.bincount(np.asarray(label).reshape(-1), minlength=256)[: len(CLASS_NAMES)] > 0
    f1: dict[str, float] = {}
    absent: dict[str, float] = {}
    for c, name in enumerate(CLASS_NAMES):
        if c == 0:
            continue
        hit_p, n_p, hit_t, n_t = (float(v) for v in counts[c])
        if present[c]:
            prec = hit_p / n_p if n_p else 0.0
            rec = hit_t / n_t if n_t else 0.0
            f1[name] = 2 * prec * rec / (prec + rec) if prec + rec > 0 else 0.0
        else:
            absent[name] = n_p / float(np.asarray(label).size)
    return {"f1": f1, "absent_fraction": absent}


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if len(values) else None


def summarise_scores(scores: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Pool :func:`score_volume` results of several tomograms: the per-class F1 averaged over the
    tomograms where the class is present (``None`` where it never is), their mean (``mean_f1``) and
    minimum (``min_f1``), and the largest voxel fraction predicted as an absent class."""
    means = {n: _mean([s["f1"][n] for s in scores if n in s["f1"]]) for n in CLASS_NAMES[1:]}
    present = [v for v in means.values() if v is not None]
    worst = max([0.0, *(v for s in scores for v in s["absent_fraction"].values())])
    return {"f1": means, "mean_f1": _mean(present), "min_f1": min(present) if present else None,
            "max_absent_fraction": worst}


def style_tomograms(
    families: Mapping[str, tuple[float, Mapping[str, Any]]] = STYLE_FAMILIES,
    n_per_family: int = 3,
    shape: Sequence[int] = (64, 384, 384),
    seed: int = 50_000,
) -> Iterator[tuple[str, int, float, np.ndarray, np.ndarray]]:
    """``(family, i, voxel_size, image, label)`` of each evaluation tomogram: ``n_per_family`` per
    family, seed ``seed + 1000 * family_index + i`` (seeds never used in training)."""
    from cryoet_monai.data.synthetic import generate_tomogram

    for fi, (family, (voxel_size, options)) in enumerate(families.items()):
        for i in range(n_per_family):
            image, label = generate_tomogram(tuple(shape), voxel_size, seed + 1000 * fi + i, **dict(options))
            yield family, i, voxel_size, image, label


def evaluate_styles(
    segmenter: Any,
    out_dir: str | os.PathLike,
    families: Mapping[str, tuple[float, Mapping[str, Any]]] = STYLE_FAMILIES,
    n_per_family: int = 3,
    shape: Sequence[int] = (64, 384, 384),
    seed: int = 50_000,
    tolerance: int = 2,
) -> dict[str, Any]:
    """Generate ``n_per_family`` tomograms per family (seeds never used in training), segment them
    with ``segmenter`` (a :class:`cryoet_monai.inference.TomogramSegmenter`) and score them.

    Returns (and writes to ``out_dir/transfer.json``) per family: the per-class tolerant F1
    averaged over the tomograms where the class is present, the mean over classes, and the
    largest voxel fraction predicted as an absent class.
    """
    out = Path(out_dir)
    (out / "tomograms").mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"tolerance_voxels": tolerance, "training_style": TRAINING_STYLE, "families": {}}
    scores: dict[str, list[dict[str, Any]]] = {family: [] for family in families}
    for family, i, voxel_size, image, label in style_tomograms(families, n_per_family, shape, seed):
        path = out / "tomograms" / f"{family}_{i}.mrc"
        save_mrc(path, image, voxel_size=voxel_size)
        result = segmenter.segment(path, out / "predictions")
        pred, _ = read_mrc(result["seg"], mmap=False)
        scores[family].append(score_volume(pred, label, tolerance))
        logger.info("%s: %s", path.name, {k: round(v, 3) for k, v in scores[family][-1]["f1"].items()})
    for family, (voxel_size, options) in families.items():
        report["families"][family] = {
            "voxel_size": voxel_size,
            "options": {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()},
            **summarise_scores(scores[family]),
        }
    (out / "transfer.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def evaluate_real_crops(segmenter: Any, corpus: str | os.PathLike, out_dir: str | os.PathLike,
                        tolerance: int = 2) -> dict[str, float]:
    """Microtubule tolerant F1 of each real crop in ``corpus/real`` against its approximate label."""
    import gzip
    import shutil

    real = Path(corpus) / "real"
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    scores = {}
    for image in sorted(real.glob("*_MT.mrc")):
        gz = real / f"{image.stem}_labels_approx.mrc.gz"
        if not gz.is_file():
            continue
        label_path = out / f"{image.stem}_labels.mrc"
        with gzip.open(gz) as src, open(label_path, "wb") as dst:
            shutil.copyfileobj(src, dst)
        label, _ = read_mrc(label_path, mmap=False)
        result = segmenter.segment(image, out)
        pred, _ = read_mrc(result["seg"], mmap=False)
        scores[image.stem] = score_volume(pred, label, tolerance)["f1"].get("microtubule", 0.0)
    return scores


def evaluate_polarity(
    segmenter: Any,
    families: Mapping[str, tuple[float, Mapping[str, Any]]] = STYLE_FAMILIES,
    n_per_family: int = 4,
    shape: Sequence[int] = (48, 256, 256),
    seed: int = 70_000,
) -> dict[str, Any]:
    """How often :meth:`TomogramSegmenter.polarity` decides right, on synthetic tomograms written
    both ways (dense dark and dense bright) for every family. Returns counts per family, and how
    many of the decisions the image cue made (the rest fell to the network's confidence)."""
    from cryoet_monai.data.synthetic import generate_tomogram

    out: dict[str, Any] = {}
    right = total = by_image = 0
    for fi, (family, (voxel_size, options)) in enumerate(families.items()):
        ok = decided = 0
        voxel = (float(voxel_size),) * 3
        for i in range(n_per_family):
            image, _ = generate_tomogram(tuple(shape), voxel_size, seed + 1000 * fi + i, **dict(options))
            for inverted in (False, True):
                volume = -image if inverted else image
                norm = segmenter.normalizer.fit(volume, name=family)
                decision = segmenter.polarity(volume, norm, voxel, Path(f"{family}_{i}"))
                ok += decision.inverted == inverted
                decided += decision.decided_by == "image"
        out[family] = {"right": ok, "of": 2 * n_per_family, "decided_by_image": decided}
        right, total, by_image = right + ok, total + 2 * n_per_family, by_image + decided
    out["all"] = {"right": right, "of": total, "accuracy": right / max(total, 1),
                  "decided_by_image": by_image}
    return out
