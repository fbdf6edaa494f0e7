"""Ignite handlers for the training bundle: resumable "last" checkpoints."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint

__all__ = ["CheckpointResumeError", "ResumeCheckpoint"]


class CheckpointResumeError(ValueError):
    """A "last" checkpoint exists but cannot be used to resume (message names the file)."""


def _is_main_process() -> bool:
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


class ResumeCheckpoint:
    """Save a full training state every ``save_interval`` epochs and resume from it on the next run.

    At the end of every ``save_interval``-th epoch (after the validation and LR-schedule handlers, so
    attach this one last) ``save_dict`` -- typically network, optimizer, trainer, lr scheduler and the
    best-model ``CheckpointSaver`` -- is written to ``<save_dir>/<filename>`` atomically (temporary
    file + ``os.replace``; only rank 0 writes under ``torch.distributed``). When the trainer starts
    and that file exists, everything is restored, so the epoch/iteration counters, optimizer moments
    and learning-rate schedule continue where the interrupted run stopped; a finished run started
    again does nothing. The trainer's ``max_epochs`` is taken from the current configuration, so a
    run can also be extended.

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
        self.resume = resume
        self.save_interval = save_interval
        self.map_location = map_location
        self.logger = logging.getLogger(__name__)

    def attach(self, engine: Engine) -> None:
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
        if not _is_main_process():
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        state = {k: v.state_dict() for k, v in self.save_dict.items()}
        tmp = self.path.with_name(self.path.name + ".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.path)
