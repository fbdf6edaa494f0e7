"""Results you can look at: a preview PNG and a JSON summary next to each segmentation.

:func:`write_preview` draws the central xy, xz and yz slices of the tomogram, raw and with the
labels over them in the fixed class colours of the evaluation figures
(:data:`cryoet_monai.evaluation.figures.CLASS_COLORS`), with a legend; :func:`write_summary`
writes the class fractions, mean uncertainty, polarity decision, voxel size, model and timings.
Both are written through a temporary file and renamed, like every other output.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from cryoet_monai import CLASS_NAMES
from cryoet_monai.io.atomic import atomic_path, write_json_atomic

__all__ = ["write_preview", "write_summary"]


def write_preview(volume: np.ndarray, labels: np.ndarray, path: str | os.PathLike, title: str = "") -> Path:
    """PNG of the central xy / xz / yz slices of ``volume`` and ``labels`` (both ``(Z, Y, X)``):
    top row raw, bottom row with the class overlay; xz and yz are drawn to scale along z."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    from cryoet_monai.evaluation.figures import CLASS_COLORS, colorize_labels

    depth, ny, nx = volume.shape
    cuts = {
        f"xy (z={depth // 2})": (np.asarray(volume[depth // 2]), np.asarray(labels[depth // 2])),
        f"xz (y={ny // 2})": (np.asarray(volume[:, ny // 2, :]), np.asarray(labels[:, ny // 2, :])),
        f"yz (x={nx // 2})": (np.asarray(volume[:, :, nx // 2]), np.asarray(labels[:, :, nx // 2])),
    }
    widths = [nx, nx, ny]
    fig = Figure(figsize=(12, 4.0 + 8.0 * depth / max(ny, nx)), layout="constrained")
    axes = fig.subplots(2, 3, squeeze=False, gridspec_kw={"width_ratios": widths})
    for c, (name, (raw, lab)) in enumerate(cuts.items()):
        for r, rgb in enumerate((colorize_labels(np.zeros_like(lab), raw), colorize_labels(lab, raw))):
            axes[r, c].imshow(rgb, interpolation="nearest")
            axes[r, c].set_title(name if r == 0 else f"{name}, labels", fontsize=9)
            axes[r, c].set_axis_off()
    handles = [Patch(color=CLASS_COLORS[i], label=n.replace("_", " "))
               for i, n in enumerate(CLASS_NAMES) if i]
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    return Path(path)


def write_summary(summary: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """The per-tomogram summary as JSON (paths as strings, tuples as lists)."""
    return write_json_atomic(path, summary, default=lambda v: v.item() if hasattr(v, "item") else str(v))
