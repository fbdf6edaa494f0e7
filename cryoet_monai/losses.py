"""Segmentation losses that honour an ignore label, and class weights from label frequencies.

All losses take logits ``(B, C, *S)`` and integer-valued labels ``(B, 1, *S)`` (MONAI style; ``(B, *S)`` is
accepted too). Voxels labelled ``ignore_index`` (255: unannotated) contribute nothing to the loss or to its
gradient, so sparsely annotated data (a few painted slices) trains correctly; a batch without a single
annotated voxel gives a loss of exactly 0 (with a zero gradient), never NaN.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.losses import DiceLoss
from monai.networks.utils import one_hot

from cryoet_monai import CLASSES, IGNORE_LABEL, NUM_CLASSES
from cryoet_monai.data.datalist import load_datalist

__all__ = [
    "PAPER_CLASS_WEIGHTS",
    "LabelError",
    "WeightedCrossEntropyLoss",
    "MaskedDiceCELoss",
    "count_labels",
    "class_weights_from_counts",
    "compute_class_weights",
]

#: the paper's cross-entropy class weights (background, microtubule, ribosome, double membrane,
#: single membrane, carbon edge), from the class registry
PAPER_CLASS_WEIGHTS: tuple[float, ...] = CLASSES.paper_weights

WeightLike = Sequence[float] | np.ndarray | torch.Tensor


class LabelError(ValueError):
    """A label tensor/array/file holds values other than ``0..num_classes-1`` and the ignore label."""


def _as_weight(weight: WeightLike | None, name: str = "weight") -> torch.Tensor | None:
    if weight is None:
        return None
    w = torch.as_tensor(np.asarray(weight, dtype=np.float32) if not torch.is_tensor(weight) else weight)
    w = w.detach().float().flatten()
    if w.numel() == 0 or not torch.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"{name} must be finite, non-negative and not all zero, got {w.tolist()}.")
    return w


def _labels_and_mask(
    input: torch.Tensor, target: torch.Tensor, ignore_index: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate shapes/values; return ``labels`` (B, *S) long (ignored voxels set to 0) and ``valid`` bool."""
    if target.ndim == input.ndim:
        if target.shape[1] != 1:
            raise ValueError(
                f"target must be (B, 1, *S) class indices, got {tuple(target.shape)} for logits "
                f"{tuple(input.shape)}; one-hot targets cannot carry an ignore label."
            )
        target = target[:, 0]
    if target.shape != input.shape[:1] + input.shape[2:]:
        raise ValueError(f"target shape {tuple(target.shape)} does not match logits {tuple(input.shape)}.")
    if target.is_floating_point() and not torch.equal(target, target.round()):
        raise LabelError("target holds non-integer values; labels must be class indices.")
    target = target.long()
    valid = target != ignore_index if ignore_index is not None else torch.ones_like(target, dtype=torch.bool)
    num_classes = input.shape[1]
    bad = valid & ((target < 0) | (target >= num_classes))
    if bad.any():
        values = torch.unique(target[bad]).tolist()[:10]
        raise LabelError(
            f"target holds labels {values} outside 0..{num_classes - 1} (ignore label {ignore_index})."
        )
    return torch.where(valid, target, torch.zeros_like(target)), valid


def _zero_loss(input: torch.Tensor) -> torch.Tensor:
    # keeps the graph connected (zero gradient) so DDP and optimisers see every parameter
    return input.sum() * 0.0


class WeightedCrossEntropyLoss(nn.Module):
    """The paper's class-weighted cross-entropy, with an ignore label.

    ``loss = sum_i w[y_i] * CE_i / sum_i w[y_i]`` over the annotated voxels ``i`` (PyTorch's weighted mean),
    so the result does not depend on the overall scale of the weights.
    """

    def __init__(
        self,
        weight: WeightLike | None = PAPER_CLASS_WEIGHTS,
        ignore_index: int | None = IGNORE_LABEL,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
    ):
        """
        Args:
            weight: one non-negative weight per class, or ``None`` for unweighted CE.
                Defaults to the paper's ``[1, 2000, 3000, 2000, 2000, 3000]``.
            ignore_index: label of voxels that contribute nothing (``None``: every voxel counts).
            reduction: ``"mean"`` (weighted mean over annotated voxels), ``"sum"`` or ``"none"``
                (per-voxel ``(B, *S)``, zero at ignored voxels).
            label_smoothing: as in ``torch.nn.CrossEntropyLoss``.
        """
        super().__init__()
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}.")
        w = _as_weight(weight)
        self.register_buffer("weight", w)
        self.weight: torch.Tensor | None
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.label_smoothing = label_smoothing

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """
        Args:
            input: logits ``(B, C, *S)``.
            target: labels ``(B, 1, *S)`` or ``(B, *S)``, values in ``0..C-1`` or ``ignore_index``.
        """
        labels, valid = _labels_and_mask(input, target, self.ignore_index)
        return self.masked_loss(input, labels, valid)

    def masked_loss(self, input: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Loss of logits ``(B, C, *S)`` vs labels ``(B, *S)`` where bool ``valid`` is True."""
        weight = self.weight
        if weight is not None:
            if weight.numel() != input.shape[1]:
                raise ValueError(f"{weight.numel()} class weights given for {input.shape[1]} logit channels.")
            weight = weight.to(input.device)
        # masked voxels may carry any valid label here; torch.where removes them from value and gradient
        voxel = F.cross_entropy(
            input.float(), labels, weight=weight, reduction="none", label_smoothing=self.label_smoothing
        )
        voxel = torch.where(valid, voxel, torch.zeros_like(voxel))
        if self.reduction == "none":
            return voxel
        if self.reduction == "sum":
            return voxel.sum()
        denom = (weight[labels] * valid).sum() if weight is not None else valid.sum()
        # a batch without annotated voxels: 0 with a zero gradient instead of 0/0
        return torch.where(denom > 0, voxel.sum() / denom.clamp_min(1e-12), _zero_loss(input))


class MaskedDiceCELoss(nn.Module):
    """``lambda_dice * Dice + lambda_ce * weighted CE`` (MONAI's DiceCE) with an ignore label.

    Ignored voxels are zeroed in both the one-hot target and the softmax prediction before
    :class:`monai.losses.DiceLoss`, and excluded from the cross-entropy, so they add nothing to either term.
    The class weights enter the CE term as in :class:`WeightedCrossEntropyLoss`, and the Dice term as
    weights of the per-class Dice losses rescaled to mean 1 (so the Dice term stays in ``[0, 1]``).
    """

    def __init__(
        self,
        weight: WeightLike | None = None,
        ignore_index: int | None = IGNORE_LABEL,
        include_background: bool = True,
        lambda_dice: float = 1.0,
        lambda_ce: float = 1.0,
        batch: bool = True,
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        squared_pred: bool = False,
        label_smoothing: float = 0.0,
    ):
        """
        Args:
            weight: one non-negative weight per class (all ``C`` classes, also with
                ``include_background=False``), or ``None``.
            ignore_index: label of voxels that contribute nothing (``None``: every voxel counts).
            include_background: whether class 0 takes part in the Dice term (CE always uses all classes).
            lambda_dice: weight of the Dice term (>= 0).
            lambda_ce: weight of the cross-entropy term (>= 0).
            batch: compute Dice over the whole batch (True, stabler for rare classes) or per sample.
            smooth_nr: Dice numerator smoothing; a class absent from target and prediction scores Dice 1.
            smooth_dr: Dice denominator smoothing.
            squared_pred: squared terms in the Dice denominator.
            label_smoothing: for the CE term.
        """
        super().__init__()
        if lambda_dice < 0 or lambda_ce < 0:
            raise ValueError("lambda_dice and lambda_ce must be >= 0.")
        w = _as_weight(weight)
        self.ce = WeightedCrossEntropyLoss(w, ignore_index=ignore_index, label_smoothing=label_smoothing)
        dice_w = None
        if w is not None:
            dice_w = w if include_background else w[1:]
            dice_w = dice_w / dice_w.mean() if dice_w.sum() > 0 else None
        self.dice = DiceLoss(
            include_background=include_background,
            to_onehot_y=False,
            softmax=False,
            squared_pred=squared_pred,
            smooth_nr=smooth_nr,
            smooth_dr=smooth_dr,
            batch=batch,
            weight=dice_w,
        )
        self.ignore_index = ignore_index
        self.lambda_dice = lambda_dice
        self.lambda_ce = lambda_ce

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """
        Args:
            input: logits ``(B, C, *S)``.
            target: labels ``(B, 1, *S)`` or ``(B, *S)``, values in ``0..C-1`` or ``ignore_index``.

        Returns:
            scalar loss.
        """
        labels, valid = _labels_and_mask(input, target, self.ignore_index)
        if not valid.any():
            return _zero_loss(input)
        mask = valid.unsqueeze(1).to(torch.float32)
        prob = torch.softmax(input.float(), dim=1) * mask
        onehot = one_hot(labels.unsqueeze(1), num_classes=input.shape[1], dtype=torch.float32) * mask
        dice = self.dice(prob, onehot)
        ce = self.ce.masked_loss(input, labels, valid)
        return self.lambda_dice * dice + self.lambda_ce * ce


# ----------------------------------------------------------------------------------------------------------
# class weights from label frequencies


def _label_sources(labels: Any) -> Iterable[tuple[str, Any]]:
    """Yield ``(name, array-or-path)`` from arrays, tensors, paths, datalist dicts or a datalist JSON."""
    if isinstance(labels, (str, PathLike)) and str(labels).endswith(".json"):
        for item in load_datalist(labels, "training", fields=("label",)):
            yield item["label"], Path(item["label"])
        return
    if isinstance(labels, (str, PathLike, np.ndarray, torch.Tensor, Mapping)):
        labels = [labels]
    for i, item in enumerate(labels):
        if isinstance(item, Mapping):
            if "label" not in item:
                raise ValueError(f"label entry {i} is a dict without a 'label' key.")
            item = item["label"]
        if isinstance(item, (str, PathLike)):
            yield str(item), Path(item)
        else:
            yield f"labels[{i}]", item


def _bincount(name: str, arr: np.ndarray, num_classes: int, ignore_index: int | None) -> np.ndarray:
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all() or not np.equal(arr, np.round(arr)).all():
            raise LabelError(f"{name}: label values must be integers.")
    flat = np.asarray(arr).reshape(-1).astype(np.int64)
    if ignore_index is not None:
        flat = flat[flat != ignore_index]
    if flat.size and (flat.min() < 0 or flat.max() >= num_classes):
        bad = np.unique(flat[(flat < 0) | (flat >= num_classes)])[:10].tolist()
        raise LabelError(f"{name}: labels {bad} outside 0..{num_classes - 1} (ignore label {ignore_index}).")
    return np.bincount(flat, minlength=num_classes)


def count_labels(
    labels: Any, num_classes: int = NUM_CLASSES, ignore_index: int | None = IGNORE_LABEL
) -> np.ndarray:
    """Count voxels per class.

    Args:
        labels: a label array/tensor, an MRC label file path, an iterable of these (or of datalist dicts
            with a ``"label"`` key), or the path of a decathlon-style datalist ``.json`` (its ``"training"``
            labels, relative to the JSON's folder).
        num_classes: number of classes.
        ignore_index: label not counted.

    Returns:
        ``(num_classes,)`` int64 counts.

    Raises:
        LabelError: a label outside ``0..num_classes-1`` (other than ``ignore_index``), naming the file.
    """
    counts = np.zeros(num_classes, dtype=np.int64)
    for name, src in _label_sources(labels):
        if isinstance(src, Path):
            from cryoet_monai.io.mrc import read_mrc  # lazy: io is only needed for files

            arr, _ = read_mrc(src)
            # slab by slab: a memory-mapped tomogram is never loaded whole
            for z in range(0, arr.shape[0], 16):
                counts += _bincount(name, np.asarray(arr[z : z + 16]), num_classes, ignore_index)
        else:
            arr = src.detach().cpu().numpy() if torch.is_tensor(src) else np.asarray(src)
            counts += _bincount(name, arr, num_classes, ignore_index)
    return counts


def class_weights_from_counts(
    counts: Sequence[int] | np.ndarray,
    method: str = "median_frequency",
    max_weight: float | None = None,
) -> torch.Tensor:
    """Class weights from per-class voxel counts.

    * ``"median_frequency"``: ``w_c = median(f) / f_c`` (Eigen & Fergus), the median over present classes;
    * ``"inverse_sqrt"``: ``w_c = 1 / sqrt(f_c)`` (milder);
    * ``"inverse"``: ``w_c = 1 / f_c``.

    The weights are normalised so that the most frequent class gets 1 (as in the paper's ``[1, 2000, ...]``),
    then clipped to ``max_weight``. A class with no voxels gets the largest weight of the present classes
    (it cannot affect CE on these labels, and stays strongly weighted if it appears later); a warning
    names it.

    Returns:
        ``(num_classes,)`` float32 tensor.
    """
    c = np.asarray(counts, dtype=np.float64)
    if c.ndim != 1 or (c < 0).any():
        raise ValueError(f"counts must be a 1-D array of non-negative numbers, got {counts!r}.")
    present = c > 0
    if not present.any():
        raise ValueError("no annotated voxels: cannot derive class weights.")
    f = c / c.sum()
    w = np.zeros_like(f)
    if method == "median_frequency":
        w[present] = np.median(f[present]) / f[present]
    elif method == "inverse_sqrt":
        w[present] = 1.0 / np.sqrt(f[present])
    elif method == "inverse":
        w[present] = 1.0 / f[present]
    else:
        raise ValueError(f"method must be 'median_frequency', 'inverse_sqrt' or 'inverse', got {method!r}.")
    w[present] /= w[present].min()
    if max_weight is not None:
        w = np.minimum(w, max_weight)
    if not present.all():
        warnings.warn(
            f"classes {np.flatnonzero(~present).tolist()} have no voxels; giving them the largest weight.",
            stacklevel=2,
        )
        w[~present] = w[present].max()
    return torch.as_tensor(w, dtype=torch.float32)


def compute_class_weights(
    labels: Any,
    num_classes: int = NUM_CLASSES,
    method: str = "median_frequency",
    ignore_index: int | None = IGNORE_LABEL,
    max_weight: float | None = None,
) -> torch.Tensor:
    """Class weights from the training labels' frequencies (ignored voxels excluded).

    ``labels`` is anything :func:`count_labels` takes, e.g. a datalist path:
    ``"weight": "$cryoet_monai.compute_class_weights(@data_list_file_path)"`` in a bundle config.
    See :func:`class_weights_from_counts` for ``method`` and ``max_weight``.
    """
    return class_weights_from_counts(count_labels(labels, num_classes, ignore_index), method, max_weight)
