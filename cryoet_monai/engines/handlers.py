"""Ignite handlers for the training bundle: the best-model checkpoint, resumable "last" checkpoints and
per-class metrics."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver
from monai.handlers import CheckpointSaver
from monai.utils import is_scalar

from cryoet_monai.distributed import is_rank0
from cryoet_monai.io.atomic import atomic_path
from cryoet_monai.precision import parse_bool

__all__ = ["BestMetricCheckpoint", "CheckpointResumeError", "ClassMetricsHandler", "ResumeCheckpoint"]


class CheckpointResumeError(ValueError):
    """A "last" checkpoint exists but cannot be used to resume (message names the file)."""


def _state_of(name: str, obj: Any) -> Any:
    if hasattr(obj, "state_dict"):
        return obj.state_dict()
    hint = ""
    if isinstance(obj, CheckpointSaver):  # it can load its best-score bookkeeping but not give it
        hint = "; use cryoet_monai.engines.BestMetricCheckpoint for the best model"
    raise TypeError(f"ResumeCheckpoint cannot save '{name}': {type(obj).__name__} has no state_dict(){hint}")


class _FixedNameDiskSaver(DiskSaver):
    """A :class:`ignite.handlers.DiskSaver` that writes (and removes) one fixed file name."""

    def __init__(self, dirname: str | os.PathLike, filename: str) -> None:
        # not atomic, as in monai.handlers.CheckpointSaver: ignite's atomic save leaves a file that
        # only its owner can read
        super().__init__(dirname=str(dirname), atomic=False, require_empty=False)
        self.filename = filename

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        super().__call__(checkpoint, self.filename, metadata)

    def remove(self, filename: str) -> None:
        super().remove(self.filename)


class BestMetricCheckpoint:
    """Keep the objects of the epoch with the best key metric so far in one file, resumably.

    Attached to an evaluator, at the end of every evaluation it compares the key metric with the best
    one so far and, if it is higher, writes ``save_dict`` to ``<save_dir>/<filename>`` -- with a single
    object (``{"model": network}``) that object's plain ``state_dict``, without a DDP ``module.``
    prefix. This is what ``monai.handlers.CheckpointSaver(save_key_metric=True,
    key_metric_filename=filename)`` does, built on the same :class:`ignite.handlers.Checkpoint`; in
    addition :meth:`state_dict`/:meth:`load_state_dict` give the bookkeeping (the best score so far)
    to :class:`ResumeCheckpoint`, so a resumed run replaces the file only with a better score than
    the best one before the interruption.

    Args:
        save_dir: folder of the file (the bundle's ``ckpt_dir``).
        save_dict: name -> object with ``state_dict``, e.g. ``{"model": network}``.
        filename: file name inside ``save_dir``.
        key_metric_name: name of the metric in ``engine.state.metrics``; ``None`` for the engine's key
            metric (``engine.state.key_metric_name``).
        negative_sign: lower is better (an error-like metric).
        greater_or_equal: an equal score also replaces the file (default: the first one is kept).
    """

    def __init__(
        self,
        save_dir: str | os.PathLike,
        save_dict: Mapping[str, Any],
        filename: str = "model.pt",
        key_metric_name: str | None = None,
        negative_sign: bool = False,
        greater_or_equal: bool = False,
    ) -> None:
        self.key_metric_name = key_metric_name
        self.sign = -1 if negative_sign else 1
        self.checkpoint = Checkpoint(
            to_save=dict(save_dict),
            save_handler=_FixedNameDiskSaver(save_dir, filename),
            filename_prefix="",
            score_function=self._score,
            score_name="key_metric",
            n_saved=1,
            greater_or_equal=greater_or_equal,
        )

    def _score(self, engine: Engine) -> float:
        name = self.key_metric_name
        if name is None:
            name = getattr(engine.state, "key_metric_name", None)
            if name is None:
                raise ValueError("BestMetricCheckpoint: no key_metric_name and the engine has no key metric.")
        metric = engine.state.metrics[name]
        if not is_scalar(metric):
            warnings.warn(
                f"key metric {name}={metric} is not a scalar: not compared, no model saved.", stacklevel=2
            )
            return -1
        return self.sign * metric

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.checkpoint)

    def state_dict(self) -> dict[str, Any]:
        """The best-score bookkeeping: ignite ``Checkpoint.state_dict()`` (``(score, filename)`` pairs)."""
        return self.checkpoint.state_dict()

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (also what a ``CheckpointSaver``'s checkpoint held)."""
        self.checkpoint.load_state_dict(state_dict)


class ResumeCheckpoint:
    """Save a full training state every ``save_interval`` epochs and resume from it on the next run.

    At the end of every ``save_interval``-th epoch (after the validation and LR-schedule handlers,
    so attach this one last) ``save_dict`` -- typically network, optimizer, lr scheduler and the
    :class:`BestMetricCheckpoint` -- plus the engine it is attached to (as ``"trainer"``) is
    written to ``<save_dir>/<filename>`` atomically (:func:`cryoet_monai.io.atomic.atomic_path`; only rank 0
    writes under ``torch.distributed``). When the trainer starts and that file exists, everything
    is restored, so the epoch/iteration counters, optimizer moments and learning-rate schedule
    continue where the interrupted run stopped; a finished run started again does nothing. The
    trainer's ``max_epochs`` is taken from the current configuration, so a run can be extended.

    Args:
        save_dir: checkpoint folder (the bundle's ``ckpt_dir``).
        save_dict: name -> object with ``state_dict``/``load_state_dict``.
        filename: file name of the checkpoint inside ``save_dir``.
        resume: load the checkpoint at start when it exists.
        save_interval: save every this many epochs (and always at the end of training).
        map_location: passed to ``torch.load`` (default: CPU; ``load_state_dict`` moves tensors).
    """

    def __init__(
        self,
        save_dir: str | os.PathLike,
        save_dict: Mapping[str, Any],
        filename: str = "checkpoint_last.pt",
        resume: bool = True,
        save_interval: int = 1,
        map_location: Any = "cpu",
    ) -> None:
        if save_interval < 1:
            raise ValueError(f"save_interval must be >= 1, got {save_interval}")
        self.path = Path(save_dir) / filename
        self.save_dict = {k: (v.module if hasattr(v, "module") else v) for k, v in save_dict.items()}
        self.resume = parse_bool(resume, "train#resume")
        self.save_interval = save_interval
        self.map_location = map_location
        self.logger = logging.getLogger(__name__)

    def attach(self, engine: Engine) -> None:
        # the engine's own counters are part of the state (and cannot be referenced from its own
        # handler list in a bundle config without a circular reference)
        self.save_dict.setdefault("trainer", engine)
        engine.add_event_handler(Events.STARTED, self.load)
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.save_interval), self.save)
        engine.add_event_handler(Events.COMPLETED, self.save)

    def load(self, engine: Engine) -> None:
        if not self.resume or not self.path.is_file():
            return
        try:
            checkpoint = torch.load(self.path, map_location=self.map_location, weights_only=False)
        except Exception as err:  # torch raises a zoo of types for truncated/foreign files
            raise CheckpointResumeError(
                f"{self.path}: cannot read checkpoint to resume from ({err})"
            ) from err
        missing = [k for k in self.save_dict if k not in checkpoint]
        if missing:
            raise CheckpointResumeError(f"{self.path}: checkpoint lacks {missing}; delete it to start afresh")
        max_epochs = engine.state.max_epochs
        try:
            Checkpoint.load_objects(to_load=self.save_dict, checkpoint=checkpoint)
        except RuntimeError as err:  # e.g. a different network width
            raise CheckpointResumeError(
                f"{self.path}: checkpoint does not fit this configuration ({err}); delete it to start afresh"
            ) from err
        engine.state.max_epochs = max_epochs  # the current configuration decides how long to train
        self.logger.info(
            "resumed from %s at epoch %d, iteration %d", self.path, engine.state.epoch, engine.state.iteration
        )

    def save(self, engine: Engine) -> None:
        if not is_rank0():
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        state = {k: _state_of(k, v) for k, v in self.save_dict.items()}
        with atomic_path(self.path) as tmp:
            torch.save(state, tmp)


class ClassMetricsHandler:
    """Publish per-class scores of a confusion-matrix metric as engine metrics.

    After the metric has been computed at the end of an epoch, ``engine.state.metrics`` gains
    ``<prefix>_f1_<class>``, ``<prefix>_precision_<class>`` and ``<prefix>_recall_<class>`` for every
    class, and ``<prefix>_mean_fg_f1``, so ``StatsHandler``/``TensorBoardStatsHandler`` (attach them
    *after* this handler) log them, and the latest values are kept in :attr:`history` (one dict per
    epoch: ``{"epoch", "mean_fg_f1", "per_class": {...}}``) for reports.

    Args:
        metric: a :class:`cryoet_monai.metrics.SegmentationConfusionMetric`, or the
            ``monai.handlers.IgniteMetricHandler`` wrapping one (its ``metric_fn`` is used).
        prefix: name prefix, e.g. ``"val"`` or ``"train"``.
        scores: which per-class scores to publish.
    """

    def __init__(
        self,
        metric: Any,
        prefix: str = "val",
        scores: tuple[str, ...] = ("f1", "precision", "recall"),
    ) -> None:
        self.metric = getattr(metric, "metric_fn", metric)
        if not hasattr(self.metric, "scores"):
            raise TypeError(
                f"ClassMetricsHandler needs a confusion-matrix metric with scores(), got {metric!r}"
            )
        self.prefix = prefix
        self.scores = tuple(scores)
        self.history: list[dict[str, Any]] = []
        self.logger = logging.getLogger(__name__)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        result = self.metric.scores(nan_as_none=False)
        metrics = engine.state.metrics
        metrics[f"{self.prefix}_mean_fg_f1"] = result["mean_fg_f1"]
        for name, values in result["per_class"].items():
            for score in self.scores:
                metrics[f"{self.prefix}_{score}_{name}"] = values[score]
        self.history.append(
            {
                "epoch": int(engine.state.epoch),
                "mean_fg_f1": result["mean_fg_f1"],
                "per_class": {k: {s: v[s] for s in self.scores} for k, v in result["per_class"].items()},
            }
        )
        if is_rank0():
            table = "  ".join(f"{k}={v['f1']:.3f}" for k, v in result["per_class"].items())
            self.logger.info("%s F1 per class: %s", self.prefix, table)
