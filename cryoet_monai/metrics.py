"""Segmentation scores: the one place where they are defined (training validation and evaluation reports).

Everything derives from a ``num_classes x num_classes`` confusion matrix ``cm`` (rows: ground truth,
columns: prediction) counted over annotated voxels only (label ``ignore_index`` = 255 is skipped). For class
``c``: ``TP = cm[c, c]``, ``FP = sum(cm[:, c]) - TP``, ``FN = sum(cm[c, :]) - TP`` and

* precision ``= TP / (TP + FP)`` — NaN when ``c`` is never predicted;
* recall ``= TP / (TP + FN)`` — NaN when ``c`` is absent from the ground truth;
* F1 ``= 2 TP / (2 TP + FP + FN)`` (= Dice of the argmax) — NaN when ``c`` is absent from both;
* IoU ``= TP / (TP + FP + FN)`` — NaN when ``c`` is absent from both.

A class present in the truth but never predicted has F1 = IoU = recall = 0 and precision NaN; one predicted
but absent from the truth has F1 = IoU = precision = 0 and recall NaN. Means (``mean_fg_f1`` over the
foreground classes 1..C-1, ``mean_f1`` over all) skip NaN classes; if every class is NaN the mean is NaN.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.metrics import CumulativeIterationMetric
from monai.utils import convert_to_tensor

from cryoet_monai import CLASS_NAMES, IGNORE_LABEL, NUM_CLASSES

__all__ = [
    "confusion_matrix",
    "per_class_precision",
    "per_class_recall",
    "per_class_f1",
    "per_class_iou",
    "mean_foreground_f1",
    "scores_from_confusion",
    "SegmentationConfusionMetric",
    "tolerant_counts",
    "TolerantF1Metric",
]

SCALAR_KEYS = ("mean_fg_f1", "mean_f1", "mean_fg_iou", "mean_iou", "accuracy")


def _to_labels(t: torch.Tensor, num_classes: int, what: str) -> torch.Tensor:
    """``(B, C, *S)`` scores/one-hot -> argmax, ``(B, 1, *S)`` labels -> ``(B, *S)`` long."""
    t = convert_to_tensor(t, track_meta=False)
    if t.ndim < 3:
        raise ValueError(f"{what} must be (B, C, *spatial), got shape {tuple(t.shape)}.")
    if t.shape[1] == 1:
        return t[:, 0].round().long() if t.is_floating_point() else t[:, 0].long()
    if t.shape[1] == num_classes:
        return t.argmax(dim=1)
    raise ValueError(
        f"{what} must have 1 (labels) or {num_classes} (scores/one-hot) channels, got shape {tuple(t.shape)}."
    )


def confusion_matrix(
    y_pred: torch.Tensor,
    y: torch.Tensor,
    num_classes: int = NUM_CLASSES,
    ignore_index: int | None = IGNORE_LABEL,
) -> torch.Tensor:
    """Per-sample confusion matrices.

    Args:
        y_pred: logits/probabilities/one-hot ``(B, num_classes, *S)`` (argmax taken) or labels ``(B, 1, *S)``.
        y: labels ``(B, 1, *S)`` (may contain ``ignore_index``) or one-hot ``(B, num_classes, *S)``.
        num_classes: number of classes.
        ignore_index: ground-truth label skipped (``None``: none).

    Returns:
        ``(B, num_classes, num_classes)`` int64, rows ground truth, columns prediction.
    """
    pred = _to_labels(y_pred, num_classes, "y_pred")
    gt = _to_labels(y, num_classes, "y")
    if pred.shape != gt.shape:
        raise ValueError(
            f"y_pred {tuple(y_pred.shape)} and y {tuple(y.shape)} differ in batch/spatial shape."
        )
    valid = gt != ignore_index if ignore_index is not None else torch.ones_like(gt, dtype=torch.bool)
    gt_bad = valid & ((gt < 0) | (gt >= num_classes))
    pred_bad = valid & ((pred < 0) | (pred >= num_classes))
    if gt_bad.any() or pred_bad.any():
        raise ValueError(
            f"labels outside 0..{num_classes - 1}: ground truth {torch.unique(gt[gt_bad]).tolist()[:10]}, "
            f"prediction {torch.unique(pred[pred_bad]).tolist()[:10]} (ignore label {ignore_index})."
        )
    b = pred.shape[0]
    sample = torch.arange(b, device=pred.device).view(b, *([1] * (pred.ndim - 1)))
    index = (sample * num_classes + gt) * num_classes + pred
    counts = torch.bincount(index[valid], minlength=b * num_classes * num_classes)
    return counts.view(b, num_classes, num_classes)


def _tp_fp_fn(cm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    cm = cm.double()
    tp = torch.diagonal(cm, dim1=-2, dim2=-1)
    return tp, cm.sum(-2) - tp, cm.sum(-1) - tp


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    return torch.where(den > 0, num / den.clamp_min(1), torch.full_like(num, math.nan))


def per_class_precision(cm: torch.Tensor) -> torch.Tensor:
    """``TP / (TP + FP)`` per class from ``cm (..., C, C)``; NaN where the class is never predicted."""
    tp, fp, _ = _tp_fp_fn(cm)
    return _ratio(tp, tp + fp)


def per_class_recall(cm: torch.Tensor) -> torch.Tensor:
    """``TP / (TP + FN)`` per class from ``cm (..., C, C)``; NaN where the class is absent from the truth."""
    tp, _, fn = _tp_fp_fn(cm)
    return _ratio(tp, tp + fn)


def per_class_f1(cm: torch.Tensor) -> torch.Tensor:
    """``2 TP / (2 TP + FP + FN)`` (Dice of the argmax) per class; NaN if absent from truth and prediction."""
    tp, fp, fn = _tp_fp_fn(cm)
    return _ratio(2 * tp, 2 * tp + fp + fn)


def per_class_iou(cm: torch.Tensor) -> torch.Tensor:
    """``TP / (TP + FP + FN)`` per class; NaN where absent from truth and prediction."""
    tp, fp, fn = _tp_fp_fn(cm)
    return _ratio(tp, tp + fp + fn)


def _nanmean(x: torch.Tensor) -> torch.Tensor:
    # torch.nanmean of an all-NaN tensor is NaN, which is the documented result
    return torch.nanmean(x, dim=-1)


def mean_foreground_f1(cm: torch.Tensor) -> torch.Tensor:
    """Mean F1 over the foreground classes ``1..C-1``, NaN classes skipped."""
    return _nanmean(per_class_f1(cm)[..., 1:])


def _scalars(cm: torch.Tensor) -> dict[str, torch.Tensor]:
    f1, iou = per_class_f1(cm), per_class_iou(cm)
    total = cm.double().sum((-2, -1))
    return {
        "mean_fg_f1": _nanmean(f1[..., 1:]),
        "mean_f1": _nanmean(f1),
        "mean_fg_iou": _nanmean(iou[..., 1:]),
        "mean_iou": _nanmean(iou),
        "accuracy": _ratio(torch.diagonal(cm, dim1=-2, dim2=-1).double().sum(-1), total),
    }


def _num(x: torch.Tensor | float, nan_as_none: bool) -> float | None:
    v = float(x)
    return None if (nan_as_none and math.isnan(v)) else v


def scores_from_confusion(
    cm: torch.Tensor, class_names: Sequence[str] | None = None, nan_as_none: bool = True
) -> dict[str, Any]:
    """All scores of one confusion matrix as a JSON-ready dict.

    Args:
        cm: ``(C, C)`` confusion matrix (rows truth, columns prediction).
        class_names: names of the ``C`` classes (default: :data:`cryoet_monai.CLASS_NAMES` when C == 6,
            else ``"class_<i>"``).
        nan_as_none: write undefined values as ``None`` (JSON ``null``) instead of ``float('nan')``.

    Returns:
        ``{"mean_fg_f1", "mean_f1", "mean_fg_iou", "mean_iou", "accuracy", "n_voxels",
        "class_names", "confusion_matrix", "per_class": {name: {"f1", "precision", "recall", "iou",
        "support", "predicted"}}}``; ``support``/``predicted`` are the voxel counts of the class in the truth
        and in the prediction.
    """
    cm = torch.as_tensor(cm).detach().cpu().long()
    c = cm.shape[-1]
    if cm.shape != (c, c):
        raise ValueError(f"cm must be a square (C, C) matrix, got shape {tuple(cm.shape)}.")
    if class_names is None:
        class_names = CLASS_NAMES if c == len(CLASS_NAMES) else [f"class_{i}" for i in range(c)]
    if len(class_names) != c:
        raise ValueError(f"{len(class_names)} class names for a {c}x{c} confusion matrix.")
    per = {
        "f1": per_class_f1(cm),
        "precision": per_class_precision(cm),
        "recall": per_class_recall(cm),
        "iou": per_class_iou(cm),
    }
    out: dict[str, Any] = {k: _num(v, nan_as_none) for k, v in _scalars(cm).items()}
    out["n_voxels"] = int(cm.sum())
    out["class_names"] = list(class_names)
    out["confusion_matrix"] = cm.tolist()
    out["per_class"] = {
        name: {
            **{k: _num(v[i], nan_as_none) for k, v in per.items()},
            "support": int(cm[i].sum()),
            "predicted": int(cm[:, i].sum()),
        }
        for i, name in enumerate(class_names)
    }
    return out


class SegmentationConfusionMetric(CumulativeIterationMetric):
    """Accumulates the confusion matrix of argmax predictions vs labels; aggregates to a scalar score.

    Call it per batch (``metric(y_pred, y)``, tensors or decollated lists), then ``aggregate()`` gives a
    scalar tensor — by default the mean foreground F1 — that :class:`monai.handlers.IgniteMetricHandler` can
    use as the key metric; :meth:`confusion` and :meth:`scores` give the summed matrix and per-class scores.
    Buffers hold per-sample ``(C, C)`` matrices, so MONAI's ``Cumulative`` gathers them across DDP ranks.

    Example::

        metric = SegmentationConfusionMetric()
        metric(logits, labels)              # (B, 6, H, W), (B, 1, H, W) with 255 = unannotated
        metric.aggregate().item()           # mean foreground F1
        metric.scores()["per_class"]["microtubule"]["f1"]
    """

    def __init__(
        self,
        num_classes: int = NUM_CLASSES,
        ignore_index: int | None = IGNORE_LABEL,
        key: str = "mean_fg_f1",
        class_names: Sequence[str] | None = None,
    ):
        """
        Args:
            num_classes: number of classes (>= 2).
            ignore_index: ground-truth label skipped.
            key: what :meth:`aggregate` returns: one of ``"mean_fg_f1"``, ``"mean_f1"``, ``"mean_fg_iou"``,
                ``"mean_iou"``, ``"accuracy"``.
            class_names: names for :meth:`scores`.
        """
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}.")
        if key not in SCALAR_KEYS:
            raise ValueError(f"key must be one of {SCALAR_KEYS}, got {key!r}.")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.key = key
        self.class_names = class_names

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        if y is None:
            raise ValueError("SegmentationConfusionMetric needs ground truth y.")
        return confusion_matrix(y_pred, y, self.num_classes, self.ignore_index)

    def confusion(self) -> torch.Tensor:
        """The summed ``(C, C)`` int64 confusion matrix over everything seen (all ranks); zeros if nothing."""
        buffer = self.get_buffer()
        if buffer is None:
            return torch.zeros(self.num_classes, self.num_classes, dtype=torch.long)
        if not isinstance(buffer, torch.Tensor):
            raise ValueError("the metric buffer must be a tensor of per-sample confusion matrices.")
        return buffer.reshape(-1, self.num_classes, self.num_classes).sum(0)

    def aggregate(self) -> torch.Tensor:  # type: ignore[override]
        """The scalar ``key`` score (float64 0-d tensor); NaN if no class is defined."""
        return _scalars(self.confusion())[self.key]

    def scores(self, nan_as_none: bool = True) -> dict[str, Any]:
        """All scores (see :func:`scores_from_confusion`) of the accumulated confusion matrix."""
        return scores_from_confusion(self.confusion(), self.class_names, nan_as_none)


# ----------------------------------------------------------------------------------------------------------
# boundary-tolerant F1 for thin structures (membranes, microtubules)


def _dilate(mask: torch.Tensor, tolerance: int) -> torch.Tensor:
    """Binary dilation of ``(N, 1, *S)`` by a (2t+1)-wide square/cube (Chebyshev distance <= t)."""
    if tolerance == 0:
        return mask
    pool = F.max_pool2d if mask.ndim == 4 else F.max_pool3d
    return pool(mask.float(), kernel_size=2 * tolerance + 1, stride=1, padding=tolerance) > 0


def tolerant_counts(
    y_pred: torch.Tensor,
    y: torch.Tensor,
    num_classes: int = NUM_CLASSES,
    tolerance: int = 1,
    ignore_index: int | None = IGNORE_LABEL,
) -> torch.Tensor:
    """Per-sample, per-class counts for the boundary-tolerant F1.

    A predicted voxel of class ``c`` is a hit if a ground-truth voxel of ``c`` lies within ``tolerance``
    voxels (Chebyshev distance: the surrounding (2t+1)^d square/cube), and vice versa. Predictions at ignored
    voxels are not counted.

    Args:
        y_pred: as for :func:`confusion_matrix`; 2-D ``(B, *, H, W)`` or 3-D ``(B, *, D, H, W)``.
        y: labels ``(B, 1, *S)`` with ``ignore_index`` for unannotated voxels.

    Returns:
        ``(B, num_classes, 4)`` int64: ``[predicted hits, predicted, truth hits, truth]``.
    """
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}.")
    pred = _to_labels(y_pred, num_classes, "y_pred")
    gt = _to_labels(y, num_classes, "y")
    if pred.shape != gt.shape or pred.ndim not in (3, 4):
        raise ValueError(
            f"y_pred {tuple(y_pred.shape)} and y {tuple(y.shape)} must be equal 2-D/3-D batches."
        )
    valid = gt != ignore_index if ignore_index is not None else torch.ones_like(gt, dtype=torch.bool)
    out = torch.zeros(pred.shape[0], num_classes, 4, dtype=torch.long, device=pred.device)
    for c in range(num_classes):
        p = ((pred == c) & valid).unsqueeze(1)
        g = (gt == c).unsqueeze(1)
        out[:, c, 0] = (p & _dilate(g, tolerance)).flatten(1).sum(1)
        out[:, c, 1] = p.flatten(1).sum(1)
        out[:, c, 2] = (g & _dilate(p, tolerance)).flatten(1).sum(1)
        out[:, c, 3] = g.flatten(1).sum(1)
    return out


def _tolerant_scores(counts: torch.Tensor) -> dict[str, torch.Tensor]:
    counts = counts.double()
    precision = _ratio(counts[..., 0], counts[..., 1])
    recall = _ratio(counts[..., 2], counts[..., 3])
    # F1 = 2PR / (P + R); 0 when one side is empty and the other not, NaN when both are empty
    p0, r0 = torch.nan_to_num(precision, nan=0.0), torch.nan_to_num(recall, nan=0.0)
    f1 = torch.where(p0 + r0 > 0, 2 * p0 * r0 / (p0 + r0).clamp_min(1e-12), torch.zeros_like(p0))
    f1 = torch.where((counts[..., 1] == 0) & (counts[..., 3] == 0), torch.full_like(f1, math.nan), f1)
    return {"f1": f1, "precision": precision, "recall": recall}


class TolerantF1Metric(CumulativeIterationMetric):
    """Boundary-tolerant F1 (precision/recall within ``tolerance`` voxels), accumulated over batches.

    For thin classes (membranes, microtubules) a one-voxel shift of a correct prediction halves the plain F1;
    this score forgives it. ``aggregate()`` returns the mean foreground tolerant F1 (NaN classes skipped);
    :meth:`scores` the per-class values. Same input conventions as :class:`SegmentationConfusionMetric`.
    """

    def __init__(
        self,
        num_classes: int = NUM_CLASSES,
        tolerance: int = 1,
        ignore_index: int | None = IGNORE_LABEL,
        class_names: Sequence[str] | None = None,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.tolerance = tolerance
        self.ignore_index = ignore_index
        self.class_names = class_names

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        if y is None:
            raise ValueError("TolerantF1Metric needs ground truth y.")
        return tolerant_counts(y_pred, y, self.num_classes, self.tolerance, self.ignore_index)

    def counts(self) -> torch.Tensor:
        """Summed ``(C, 4)`` counts ``[predicted hits, predicted, truth hits, truth]`` over all samples."""
        buffer = self.get_buffer()
        if buffer is None:
            return torch.zeros(self.num_classes, 4, dtype=torch.long)
        return buffer.reshape(-1, self.num_classes, 4).sum(0)

    def aggregate(self) -> torch.Tensor:  # type: ignore[override]
        """Mean foreground tolerant F1 (float64 0-d tensor)."""
        return _nanmean(_tolerant_scores(self.counts())["f1"][1:])

    def scores(self, nan_as_none: bool = True) -> dict[str, Any]:
        """``{"mean_fg_f1", "tolerance", "per_class": {name: {"f1", "precision", "recall"}}}``."""
        per = _tolerant_scores(self.counts())
        names = self.class_names
        if names is None:
            names = (
                CLASS_NAMES
                if self.num_classes == len(CLASS_NAMES)
                else [f"class_{i}" for i in range(self.num_classes)]
            )
        return {
            "mean_fg_f1": _num(self.aggregate(), nan_as_none),
            "tolerance": self.tolerance,
            "per_class": {
                name: {k: _num(v[i], nan_as_none) for k, v in per.items()} for i, name in enumerate(names)
            },
        }
