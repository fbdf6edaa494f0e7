"""Training helpers used by the bundle configs: dataset preparation, CPU/GPU autocast inferer,
resumable checkpoints and per-class metric logging."""

from __future__ import annotations

from .data import DatalistError, prepare_datalist, synthetic_cache_dir, write_datalist
from .handlers import CheckpointResumeError, ClassMetricsHandler, ResumeCheckpoint
from .inferers import AutocastInferer, default_autocast_dtype

__all__ = [
    "AutocastInferer",
    "CheckpointResumeError",
    "ClassMetricsHandler",
    "DatalistError",
    "ResumeCheckpoint",
    "default_autocast_dtype",
    "prepare_datalist",
    "synthetic_cache_dir",
    "write_datalist",
]
