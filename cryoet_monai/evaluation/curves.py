"""Training curves: an Ignite handler that records loss and validation F1 per epoch and plots them.

Attach :class:`TrainingCurvesHandler` to the trainer (``train#handlers`` of a bundle config). It
averages the training loss over each epoch, collects the per-class validation F1 each time the
validator finishes, and at the end of training (and after every epoch, so an interrupted run still
has its curves) writes ``training_history.json`` and ``training_curves.png`` to ``output_dir``.
A resumed run (``ResumeCheckpoint``) continues the history it finds there.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events

from cryoet_monai import CLASS_NAMES
from cryoet_monai.distributed import is_rank0
from cryoet_monai.evaluation.figures import plot_training_curves
from cryoet_monai.io.atomic import write_json_atomic

__all__ = ["TrainingCurvesHandler", "load_history"]


def _loss_from_output(output: Any) -> float:
    """Loss of a trainer iteration: MONAI trainers output ``{"loss": tensor, ...}`` (or a list of them)."""
    if isinstance(output, (list, tuple)) and output:
        output = output[0]
    if isinstance(output, dict):
        output = output.get("loss")
    if isinstance(output, torch.Tensor):
        return float(output.detach().float().mean())
    return float(output)


def load_history(path: str | os.PathLike) -> dict[str, list]:
    """Read a ``training_history.json`` written by :class:`TrainingCurvesHandler`."""
    path = Path(path)
    try:
        history = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: cannot read the training history ({err}).") from err
    if not isinstance(history, dict) or "epoch" not in history or "loss" not in history:
        raise ValueError(f"{path}: not a training history (needs 'epoch' and 'loss').")
    return history


class TrainingCurvesHandler:
    """Record training loss and per-class validation F1 per epoch; plot them to PNG.

    Args:
        output_dir: where ``training_history.json`` and ``training_curves.png`` go.
        validator: the validation engine run by ``ValidationHandler``; its results are recorded when
            it completes (its ``state.epoch`` is the trainer epoch it validated).
        metric: the validator's :class:`cryoet_monai.metrics.SegmentationConfusionMetric` or the
            ``IgniteMetricHandler`` wrapping it; its per-class F1 is read after each validation.
            Without it, per-class F1 is read from ``validator.state.metrics[per_class_key.format(name=...)]``
            where present.
        class_names: class names, index = label value.
        loss_transform: maps the trainer's ``state.output`` to a float loss.
        per_class_key: format of per-class F1 keys in the validator's ``state.metrics`` (fallback).
        mean_key: validator metric holding the mean foreground F1 (fallback when ``metric`` is not given).
        plot_every_epoch: rewrite the PNG after every epoch, not only at the end.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        validator: Engine | None = None,
        metric: Any | None = None,
        class_names: Sequence[str] = CLASS_NAMES,
        loss_transform: Callable[[Any], float] = _loss_from_output,
        per_class_key: str = "val_f1_{name}",
        mean_key: str = "val_mean_fg_f1",
        plot_every_epoch: bool = True,
        history_filename: str = "training_history.json",
        figure_filename: str = "training_curves.png",
    ) -> None:
        self.output_dir = Path(output_dir)
        self.validator = validator
        self.metric = getattr(metric, "metric_fn", metric)  # also accept the IgniteMetricHandler
        self.class_names = tuple(class_names)
        self.loss_transform = loss_transform
        self.per_class_key = per_class_key
        self.mean_key = mean_key
        self.plot_every_epoch = plot_every_epoch
        self.history_path = self.output_dir / history_filename
        self.figure_path = self.output_dir / figure_filename
        self.history: dict[str, list] = {
            "epoch": [],
            "loss": [],
            "val_epoch": [],
            "val_f1": [],
            "val_mean_fg_f1": [],
        }
        self._sum = 0.0
        self._count = 0

    def attach(self, engine: Engine) -> None:
        """Attach to the trainer (and, if given, to the validator's completion)."""
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)
        engine.add_event_handler(Events.COMPLETED, self._completed)
        if self.validator is not None:
            self.validator.add_event_handler(Events.EPOCH_COMPLETED, self._validation_completed)

    # -------------------------------------------------------------- events
    def _started(self, engine: Engine) -> None:
        # a resumed trainer starts at epoch > 0: keep the recorded history up to there
        if engine.state.epoch > 0 and self.history_path.is_file():
            try:
                old = load_history(self.history_path)
            except ValueError:
                return
            last = engine.state.epoch
            keep = [i for i, e in enumerate(old["epoch"]) if e <= last]
            vkeep = [i for i, e in enumerate(old.get("val_epoch", [])) if e <= last]
            self.history["epoch"] = [old["epoch"][i] for i in keep]
            self.history["loss"] = [old["loss"][i] for i in keep]
            for k in ("val_epoch", "val_f1", "val_mean_fg_f1"):
                values = old.get(k, [])
                self.history[k] = [values[i] for i in vkeep if i < len(values)]

    def _epoch_started(self, engine: Engine) -> None:
        self._sum, self._count = 0.0, 0

    def _iteration_completed(self, engine: Engine) -> None:
        loss = self.loss_transform(engine.state.output)
        if math.isfinite(loss):
            self._sum += loss
            self._count += 1

    def _epoch_completed(self, engine: Engine) -> None:
        self.history["epoch"].append(int(engine.state.epoch))
        self.history["loss"].append(self._sum / self._count if self._count else float("nan"))
        if self.plot_every_epoch:
            self.write()

    def _validation_completed(self, validator: Engine) -> None:
        f1: dict[str, float | None] = {}
        mean = validator.state.metrics.get(self.mean_key)
        if self.metric is not None:
            scores = self.metric.scores()
            per_class = scores["per_class"]
            f1 = {name: per_class[name]["f1"] for name in self.class_names if name in per_class}
            mean = scores["mean_fg_f1"]
        else:
            for name in self.class_names:
                value = validator.state.metrics.get(self.per_class_key.format(name=name))
                if value is not None:
                    f1[name] = None if math.isnan(float(value)) else float(value)
        self.history["val_epoch"].append(int(validator.state.epoch))
        self.history["val_f1"].append(f1)
        mean = None if mean is None or math.isnan(float(mean)) else float(mean)
        self.history["val_mean_fg_f1"].append(mean)

    def _completed(self, engine: Engine) -> None:
        self.write()

    # -------------------------------------------------------------- output
    def write(self) -> tuple[Path, Path] | None:
        """Write the history JSON and the PNG now (rank 0 only); returns their paths."""
        if not is_rank0():
            return None
        self.output_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.history_path, self.history, indent=1)
        if not self.history["epoch"]:
            return self.history_path, self.figure_path
        plot_training_curves(self.history, self.figure_path, self.class_names)
        return self.history_path, self.figure_path
