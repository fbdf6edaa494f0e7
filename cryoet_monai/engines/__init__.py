"""Training helpers used by the bundle configs: dataset preparation, CPU/GPU autocast inferer,
best-model and resumable checkpoints, per-class metric logging and one-line errors for bundle commands."""

from __future__ import annotations

from .data import DatalistError, prepare_datalist, synthetic_cache_dir, write_datalist
from .errors import one_line_errors
from .handlers import BestMetricCheckpoint, CheckpointResumeError, ClassMetricsHandler, ResumeCheckpoint
from .inferers import AutocastInferer, default_autocast_dtype

__all__ = [
    "AutocastInferer",
    "BestMetricCheckpoint",
    "CheckpointResumeError",
    "ClassMetricsHandler",
    "DatalistError",
    "ResumeCheckpoint",
    "default_autocast_dtype",
    "one_line_errors",
    "prepare_datalist",
    "synthetic_cache_dir",
    "write_datalist",
]
