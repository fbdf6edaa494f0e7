"""Evaluation report: per-class and per-tomogram scores, ``metrics.json``, a Markdown table, PNG figures.

The scores are derived from confusion matrices (rows = ground truth, columns = prediction, voxels
labelled 255 excluded) with the formulas of :mod:`cryoet_monai.metrics` -- the one place where F1,
precision, recall and IoU are defined -- so training validation and evaluation agree. Thin classes
(microtubules, membranes) also get a boundary-tolerant score, MONAI's normalised surface Dice at a
tolerance of 1 and 2 voxels (:func:`monai.metrics.compute_surface_dice`).

The report pools voxels over all tomograms ("overall", the primary number, as voxel-wise F1 in the
paper's Table 1) and also gives every tomogram's scores and their mean over tomograms.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.metrics import compute_surface_dice

from cryoet_monai import CLASS_NAMES, CLASSES, IGNORE_LABEL
from cryoet_monai.evaluation import figures
from cryoet_monai.io.atomic import write_json_atomic, write_text_atomic

__all__ = [
    "THIN_CLASSES",
    "CaseResult",
    "class_scores",
    "surface_dice",
    "summarize",
    "format_table",
    "write_report",
]

# microtubule, double membrane, single membrane: one or two voxels off is not an error for them
THIN_CLASSES: tuple[int, ...] = CLASSES.thin
SCORE_NAMES: tuple[str, ...] = ("f1", "precision", "recall", "iou")


@dataclass
class CaseResult:
    """What the evaluation keeps of one tomogram.

    Attributes:
        name: tomogram identifier (file stem).
        confusion: ``(num_classes, num_classes)`` voxel counts, rows = ground truth, columns = prediction.
        surface_dice: ``{tolerance (voxels): {class name: NSD or None}}`` for the thin classes.
        examples: optional ``(image, label, pred)`` ``(n, Y, X)`` arrays of a few chosen slices for figures.
        example_z: the z-indices of those slices in the tomogram (for the figure titles).
    """

    name: str
    confusion: np.ndarray
    surface_dice: dict[float, dict[str, float | None]] = field(default_factory=dict)
    examples: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    example_z: Sequence[int] | None = None


def _clean(value: Any) -> float | None:
    """JSON-safe float: NaN (class absent from both ground truth and prediction) becomes ``None``."""
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def class_scores(confusion: np.ndarray, class_names: Sequence[str] = CLASS_NAMES) -> dict[str, Any]:
    """Per-class F1 (= Dice of the argmax), precision, recall and IoU of one confusion matrix.

    Uses :func:`cryoet_monai.metrics.scores_from_confusion` and regroups its result by score:
    ``{"f1": {class: value}, "precision": ..., "recall": ..., "iou": ..., "support": {class: voxels},
    "mean_foreground_f1": value, "accuracy": value}``. A class absent from both ground truth and
    prediction scores ``None`` (undefined) rather than 0 or 1.
    """
    from cryoet_monai.metrics import scores_from_confusion

    cm = torch.as_tensor(np.asarray(confusion, dtype=np.int64))
    if tuple(cm.shape) != (len(class_names), len(class_names)):
        raise ValueError(
            f"confusion matrix must be ({len(class_names)}, {len(class_names)}), got {tuple(cm.shape)}."
        )
    scores = scores_from_confusion(cm, class_names, nan_as_none=True)
    per = scores["per_class"]
    out: dict[str, Any] = {key: {c: per[c][key] for c in class_names} for key in (*SCORE_NAMES, "support")}
    out["mean_foreground_f1"] = scores["mean_fg_f1"]
    out["accuracy"] = scores["accuracy"]
    return out


def surface_dice(
    pred: np.ndarray | torch.Tensor,
    label: np.ndarray | torch.Tensor,
    classes: Sequence[int] = THIN_CLASSES,
    tolerances: Sequence[float] = (1.0, 2.0),
    class_names: Sequence[str] = CLASS_NAMES,
    ignore_label: int = IGNORE_LABEL,
) -> dict[float, dict[str, float | None]]:
    """Normalised surface Dice of ``classes`` between two label volumes ``(Z, Y, X)`` (or slices ``(Y, X)``).

    Tolerances are in voxels. Voxels labelled ``ignore_label`` in ``label`` count as background in
    both volumes, so boundaries there are neither rewarded nor penalised by the ground truth.
    Returns ``{tolerance: {class name: NSD}}`` with ``None`` where the class is in neither volume.
    The whole volume is processed at once (boundaries do not stop at slabs): expect a peak of
    roughly 20-30 bytes per voxel; pass no tolerances to an evaluator to skip it for huge tomograms.
    """
    # np.array copies: torch refuses read-only memory maps
    pred_t, label_t = torch.as_tensor(np.array(pred)), torch.as_tensor(np.array(label))
    if pred_t.shape != label_t.shape or pred_t.ndim not in (2, 3):
        raise ValueError(
            f"prediction and label must be one (Z, Y, X) or (Y, X) shape, got "
            f"{tuple(pred_t.shape)} and {tuple(label_t.shape)}."
        )
    keep = label_t != ignore_label
    # boolean one-hot (1 byte per voxel and class): MONAI's edge extraction accepts it
    onehot_p = torch.stack([(pred_t == c) & keep for c in classes])[None]
    onehot_l = torch.stack([(label_t == c) & keep for c in classes])[None]
    out: dict[float, dict[str, float | None]] = {}
    for tol in tolerances:
        with warnings.catch_warnings():  # an absent class is reported as None below, not as a warning
            warnings.filterwarnings("ignore", message=".* is all 0", category=UserWarning)
            nsd = compute_surface_dice(
                onehot_p, onehot_l, [float(tol)] * len(classes), include_background=True
            )
        out[float(tol)] = {class_names[c]: _clean(v) for c, v in zip(classes, nsd[0].tolist())}
    return out


def _mean_over(
    records: Sequence[Mapping[str, float | None]], class_names: Sequence[str]
) -> dict[str, float | None]:
    """Per-class mean of scores over tomograms, skipping undefined (``None``) entries."""
    out: dict[str, float | None] = {}
    for name in class_names:
        vals = [r[name] for r in records if r.get(name) is not None]
        out[name] = float(np.mean(vals)) if vals else None
    return out


def summarize(cases: Sequence[CaseResult], class_names: Sequence[str] = CLASS_NAMES) -> dict[str, Any]:
    """Scores of an evaluation: pooled over all voxels, per tomogram, and mean over tomograms.

    Returns the dictionary written to ``metrics.json``::

        {"class_names": [...],
         "num_tomograms": n,
         "overall": {"confusion_matrix": [[...]], "f1": {class: v}, "precision": ..., "recall": ...,
                     "iou": ..., "mean_foreground_f1": v, "surface_dice": {"1.0": {class: v}, ...}},
         "mean_over_tomograms": {"f1": {class: v}, ..., "surface_dice": {...}},
         "per_tomogram": [{"name": ..., "confusion_matrix": ..., "f1": ..., ...}, ...]}

    The pooled surface Dice is the mean over tomograms (a boundary score does not pool voxel counts).
    """
    if not cases:
        raise ValueError("no tomograms were evaluated: the test list is empty.")
    n = len(class_names)
    total = np.zeros((n, n), dtype=np.int64)
    per_case = []
    for case in cases:
        cm = np.asarray(case.confusion, dtype=np.int64)
        total += cm
        rec: dict[str, Any] = {
            "name": case.name,
            "confusion_matrix": cm.tolist(),
            **class_scores(cm, class_names),
        }
        rec["surface_dice"] = {str(t): v for t, v in case.surface_dice.items()}
        per_case.append(rec)
    overall: dict[str, Any] = {"confusion_matrix": total.tolist(), **class_scores(total, class_names)}
    mean: dict[str, Any] = {key: _mean_over([r[key] for r in per_case], class_names) for key in SCORE_NAMES}
    fg = [r["mean_foreground_f1"] for r in per_case if r["mean_foreground_f1"] is not None]
    mean["mean_foreground_f1"] = float(np.mean(fg)) if fg else None
    tolerances = sorted({t for r in per_case for t in r["surface_dice"]}, key=float)
    mean["surface_dice"] = {}
    for t in tolerances:
        records = [r["surface_dice"][t] for r in per_case if t in r["surface_dice"]]
        names = [c for c in class_names if any(c in rec for rec in records)]
        mean["surface_dice"][t] = _mean_over(records, names)
    overall["surface_dice"] = mean["surface_dice"]
    return {
        "class_names": list(class_names),
        "num_tomograms": len(per_case),
        "overall": overall,
        "mean_over_tomograms": mean,
        "per_tomogram": per_case,
    }


def _fmt(v: float | None, bracket: float | None = None) -> str:
    text = "n/a" if v is None else f"{v:.2f}"
    return text if bracket is None else f"{text} ({bracket:.2f})"


def format_table(summary: Mapping[str, Any], title: str = "TEST") -> str:
    """Markdown table in the layout of the paper's Table 1: classes as columns, scores as rows.

    As in the paper, a score is pooled over all test voxels and the number in brackets is the mean
    over tomograms. Rows: F1 (Dice), precision, recall, IoU, surface Dice per tolerance (thin classes
    only, "–" elsewhere), then the F1 of each tomogram.
    """
    names = list(summary["class_names"])
    overall, mean = summary["overall"], summary["mean_over_tomograms"]
    header = "| | " + " | ".join(n.replace("_", " ").upper() for n in names) + " |"
    lines = [header, "|---" * (len(names) + 1) + "|"]
    labels = {"f1": "F1 SCORE (DICE)", "precision": "PRECISION", "recall": "RECALL", "iou": "IOU"}
    for key, label in labels.items():
        cells = [_fmt(overall[key][c], mean[key][c]) for c in names]
        lines.append(f"| {title} {label} | " + " | ".join(cells) + " |")
    for tol, scores in overall.get("surface_dice", {}).items():
        cells = ["–" if c not in scores else _fmt(scores[c]) for c in names]
        lines.append(f"| {title} SURFACE DICE (τ={float(tol):g} voxel) | " + " | ".join(cells) + " |")
    if summary.get("num_tomograms", 0) > 1:
        for rec in summary["per_tomogram"]:
            lines.append(f"| F1 {rec['name']} | " + " | ".join(_fmt(rec["f1"][c]) for c in names) + " |")
    mfg = overall.get("mean_foreground_f1")
    note = (
        f"\nVoxel-wise scores pooled over {summary['num_tomograms']} tomogram(s); in brackets the mean over "
        f"tomograms. Mean foreground F1: {_fmt(mfg, mean.get('mean_foreground_f1'))}. "
        "n/a: undefined (F1/IoU: class absent from both ground truth and prediction; "
        "precision: never predicted; recall: absent from the ground truth)."
    )
    return "\n".join(lines) + "\n" + note + "\n"


def write_report(
    cases: Sequence[CaseResult],
    output_dir: str | os.PathLike,
    class_names: Sequence[str] = CLASS_NAMES,
    title: str = "TEST",
    example_dpi: int = 110,
) -> dict[str, Path]:
    """Summarise ``cases`` and write ``metrics.json``, ``metrics.md`` and the PNG figures to ``output_dir``.

    Figures: ``confusion_matrix.png`` (row-normalised heat map of the pooled matrix),
    ``f1_per_class.png`` (pooled F1 and mean over tomograms), and ``examples_<name>.png``
    (raw | ground truth | prediction, at ``example_dpi``) for every case that kept example slices.
    Returns ``{"metrics": path, "table": path, <figure name>: path, ...}``.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(cases, class_names)
    paths: dict[str, Path] = {}
    paths["metrics"] = out / "metrics.json"
    write_json_atomic(paths["metrics"], summary)
    paths["table"] = out / "metrics.md"
    write_text_atomic(paths["table"], format_table(summary, title=title))
    paths["confusion_matrix"] = figures.plot_confusion_matrix(
        np.asarray(summary["overall"]["confusion_matrix"]),
        out / "confusion_matrix.png",
        class_names,
        title=f"Confusion matrix ({summary['num_tomograms']} tomogram(s))",
    )
    series = {"pooled": summary["overall"]["f1"]}
    if summary["num_tomograms"] > 1:
        series["mean over tomograms"] = summary["mean_over_tomograms"]["f1"]
    paths["f1_per_class"] = figures.plot_class_scores(series, out / "f1_per_class.png", class_names)
    for case in cases:
        if case.examples is not None:
            image, label, pred = case.examples
            paths[f"examples_{case.name}"] = figures.plot_example_slices(
                image,
                label,
                pred,
                out / f"examples_{case.name}.png",
                slices=range(image.shape[0]),
                class_names=class_names,
                title=case.name,
                z_numbers=case.example_z,
                dpi=example_dpi,
            )
    return paths
