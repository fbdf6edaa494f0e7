"""Evaluate a segmentation model on a labelled test list through the inference path.

:class:`TomogramEvaluator` segments every test tomogram with the same
:class:`cryoet_monai.inference.TomogramSegmenter` that ``cryoet-monai segment`` and
``configs/inference.json`` use (``configs/evaluate.json`` overlays that config: slab-wise inference over
the whole tomogram; the label files of the segmenter's sink are kept under ``<output_dir>/predictions``),
then compares each written label volume, read back by the sink, with its ground truth, slab by slab,
and writes the report of :func:`cryoet_monai.evaluation.report.write_report`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cryoet_monai import CLASS_NAMES, IGNORE_LABEL
from cryoet_monai.data.datalist import load_datalist
from cryoet_monai.evaluation.figures import pick_example_slices
from cryoet_monai.evaluation.report import THIN_CLASSES, CaseResult, surface_dice, write_report
from cryoet_monai.inference.engine import output_stem
from cryoet_monai.io.mrc import read_mrc

__all__ = ["EvaluationError", "TomogramEvaluator", "load_test_list", "confusion_of_volumes"]

logger = logging.getLogger(__name__)


class EvaluationError(ValueError):
    """The test list or a prediction/label pair cannot be evaluated; the message names the file."""


def load_test_list(datalist: str | os.PathLike, split: str = "test") -> list[dict[str, Path]]:
    """``[{"image": path, "label": path}, ...]`` of ``split`` in a decathlon-style datalist.

    Relative paths are resolved against the datalist's folder. Every entry needs a label.
    """
    items = load_datalist(datalist, split, error=EvaluationError)
    return [{k: Path(item[k]) for k in ("image", "label")} for item in items]


def confusion_of_volumes(
    pred: np.ndarray,
    label: np.ndarray,
    num_classes: int = len(CLASS_NAMES),
    slab: int = 16,
) -> np.ndarray:
    """Confusion matrix of two ``(Z, Y, X)`` label volumes (memory maps are read ``slab`` planes at a time).

    Accumulated with the project's metric, :class:`cryoet_monai.metrics.SegmentationConfusionMetric`
    (rows = ground truth, columns = prediction, label 255 ignored); each slab's slices form a batch.
    """
    from cryoet_monai.metrics import SegmentationConfusionMetric

    metric = SegmentationConfusionMetric(num_classes=num_classes, ignore_index=IGNORE_LABEL)
    for z in range(0, pred.shape[0], slab):
        p = torch.from_numpy(np.asarray(pred[z : z + slab], dtype=np.int64))
        t = torch.from_numpy(np.asarray(label[z : z + slab], dtype=np.int64))
        metric(y_pred=p[:, None], y=t[:, None])
    return metric.confusion().numpy().astype(np.int64)


class TomogramEvaluator:
    """Segment the test tomograms with the inference path and score them.

    Args:
        segmenter: a :class:`cryoet_monai.inference.TomogramSegmenter` (network and weights loaded); its
            sink says which file it writes per tomogram and reads it back.
        output_dir: report folder; predictions go to ``<output_dir>/predictions``.
        split: datalist key of the labelled test tomograms.
        surface_dice_tolerances: tolerances (voxels) of the boundary score; empty disables it.
        thin_classes: classes that get the boundary score (microtubule, membranes).
        num_examples: tomograms (the first ones) that get an ``examples_<name>.png`` figure.
        example_slices: z-slices shown per example figure.
        reuse_predictions: score an existing prediction (the sink's complete output) instead of segmenting
            again.
        class_names: class names, index = label value.
        example_dpi: resolution of the example-slice figures.

    Calling it with a datalist path returns the summary dict that is written to ``metrics.json``.
    """

    def __init__(
        self,
        segmenter: Any,
        output_dir: str | os.PathLike,
        split: str = "test",
        surface_dice_tolerances: Sequence[float] = (1.0, 2.0),
        thin_classes: Sequence[int] = THIN_CLASSES,
        num_examples: int = 2,
        example_slices: int = 3,
        reuse_predictions: bool = False,
        class_names: Sequence[str] = CLASS_NAMES,
        example_dpi: int = 110,
    ) -> None:
        self.segmenter = segmenter
        self.output_dir = Path(output_dir)
        self.split = split
        self.tolerances = tuple(float(t) for t in surface_dice_tolerances)
        self.thin_classes = tuple(int(c) for c in thin_classes)
        self.num_examples = int(num_examples)
        self.example_slices = int(example_slices)
        self.reuse_predictions = bool(reuse_predictions)
        self.class_names = tuple(class_names)
        self.example_dpi = int(example_dpi)

    def _predict(self, image: Path) -> Path:
        """The labels of ``image``: where the segmenter's sink wrote (or, reused, had written) them."""
        pred_dir = self.output_dir / "predictions"
        target = self.segmenter.output_paths(image, pred_dir)["seg"]
        if self.reuse_predictions and self.segmenter.sink.exists(target):
            return target
        result = self.segmenter.segment(image, pred_dir)
        return Path(result["seg"])

    def evaluate_case(self, image: Path, label: Path, with_examples: bool = False) -> CaseResult:
        """Segment ``image`` and score the prediction against ``label``."""
        seg_path = self._predict(image)
        pred = self.segmenter.sink.read(seg_path)
        truth, _ = read_mrc(label)
        if pred.shape != truth.shape:
            raise EvaluationError(
                f"{label}: ground truth shape {tuple(truth.shape)} differs from the image/prediction "
                f"{tuple(pred.shape)} ({seg_path})."
            )
        values = np.unique(np.asarray(truth[:: max(1, truth.shape[0] // 8)]))
        bad = [int(v) for v in values if v >= len(self.class_names) and v != IGNORE_LABEL]
        if bad:
            raise EvaluationError(
                f"{label}: label values {bad} are neither classes 0..{len(self.class_names) - 1} "
                f"nor {IGNORE_LABEL} (ignored)."
            )
        name = output_stem(image)
        try:
            confusion = confusion_of_volumes(pred, truth, len(self.class_names))
        except ValueError as err:  # label values outside 0..C-1 and 255 somewhere in the volume
            raise EvaluationError(f"{label} vs {seg_path}: {err}") from err
        nsd = {}
        if self.tolerances and self.thin_classes:
            nsd = surface_dice(
                np.asarray(pred), np.asarray(truth), self.thin_classes, self.tolerances, self.class_names
            )
        case = CaseResult(name=name, confusion=confusion, surface_dice=nsd)
        if with_examples:
            zs = pick_example_slices(np.asarray(truth), self.example_slices)
            raw, _ = read_mrc(image)
            case.examples = (
                np.asarray(raw[zs], dtype=np.float32),
                np.asarray(truth[zs]),
                np.asarray(pred[zs]),
            )
            case.example_z = zs
        return case

    def __call__(self, datalist: str | os.PathLike) -> dict[str, Any]:
        items = load_test_list(datalist, self.split)
        cases = []
        for i, item in enumerate(items):
            logger.info("evaluating %s", item["image"])
            cases.append(
                self.evaluate_case(item["image"], item["label"], with_examples=i < self.num_examples)
            )
        paths = write_report(cases, self.output_dir, self.class_names, example_dpi=self.example_dpi)
        summary = json.loads(paths["metrics"].read_text())
        print(paths["table"].read_text(), flush=True)
        print(
            f"report written to {self.output_dir} ({', '.join(p.name for p in paths.values())})", flush=True
        )
        return summary
