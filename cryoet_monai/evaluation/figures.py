"""PNG figures of an evaluation or a training run.

All functions draw on a fresh :class:`matplotlib.figure.Figure` (no ``pyplot``, no global backend
state), write one PNG atomically and return its path. Arrays follow the library's axis order: a
tomogram is ``(Z, Y, X)``, a slice ``(Y, X)``; a confusion matrix is ``(num_classes, num_classes)``
with rows = ground truth and columns = prediction.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from cryoet_monai import CLASS_NAMES, CLASSES, IGNORE_LABEL
from cryoet_monai.io.atomic import atomic_path

__all__ = [
    "CLASS_COLORS",
    "IGNORE_COLOR",
    "colorize_labels",
    "plot_confusion_matrix",
    "plot_class_scores",
    "plot_example_slices",
    "pick_example_slices",
    "plot_training_curves",
]

# One fixed RGB colour per class, shared by every figure (index = label value; see the registry).
CLASS_COLORS: tuple[tuple[float, float, float], ...] = CLASSES.colors
IGNORE_COLOR: tuple[float, float, float] = (0.55, 0.55, 0.55)


def _pretty(name: str) -> str:
    return name.replace("_", " ")


def _save(fig: Figure, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Write ``fig`` as PNG through a temporary file so a crash never leaves half a figure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    return path


def colorize_labels(
    labels: np.ndarray,
    image: np.ndarray | None = None,
    alpha: float = 0.65,
    colors: Sequence[Sequence[float]] = CLASS_COLORS,
) -> np.ndarray:
    """Map a label slice ``(Y, X)`` to RGB ``(Y, X, 3)`` in ``[0, 1]`` with one fixed colour per class.

    With ``image`` (same ``(Y, X)``), background voxels show the grey-scale image and the other
    classes are blended onto it with opacity ``alpha``; ignored voxels (255) are grey.
    """
    labels = np.asarray(labels)
    lut = np.zeros((256, 3), dtype=np.float32)
    lut[: len(colors)] = np.asarray(colors, dtype=np.float32)
    lut[IGNORE_LABEL] = IGNORE_COLOR
    rgb = lut[labels.astype(np.uint8)]
    if image is None:
        return rgb
    grey = np.asarray(image, dtype=np.float32)
    lo, hi = np.percentile(grey, (1, 99)) if grey.size else (0.0, 1.0)
    grey = np.clip((grey - lo) / max(float(hi - lo), 1e-8), 0.0, 1.0)[..., None].repeat(3, axis=-1)
    foreground = (labels != 0)[..., None]
    return np.where(foreground, (1 - alpha) * grey + alpha * rgb, grey)


def plot_confusion_matrix(
    confusion: np.ndarray,
    path: str | os.PathLike,
    class_names: Sequence[str] = CLASS_NAMES,
    normalize: bool = True,
    title: str = "Confusion matrix",
) -> Path:
    """Heat map of a confusion matrix (rows = ground truth, columns = prediction).

    With ``normalize`` each row is divided by its total (so the diagonal is the recall of each
    class); cells are annotated with the fraction and, below it, the voxel count.
    """
    cm = np.asarray(confusion, dtype=np.float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] != len(class_names):
        raise ValueError(
            f"confusion matrix must be ({len(class_names)}, {len(class_names)}), got {cm.shape}."
        )
    rows = cm.sum(axis=1, keepdims=True)
    shown = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0) if normalize else cm
    n = len(class_names)
    fig = Figure(figsize=(1.2 * n + 2, 1.1 * n + 1.5))
    ax = fig.add_subplot()
    im = ax.imshow(shown, cmap="Blues", vmin=0.0, vmax=1.0 if normalize else None)
    fig.colorbar(
        im, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class" if normalize else "voxels"
    )
    names = [_pretty(c) for c in class_names]
    ax.set_xticks(range(n), names, rotation=35, ha="right")
    ax.set_yticks(range(n), names)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    ax.set_title(title)
    for i in range(n):
        for j in range(n):
            dark = normalize and shown[i, j] > 0.5
            text = f"{shown[i, j]:.2f}\n{int(cm[i, j])}" if normalize else f"{int(cm[i, j])}"
            ax.text(j, i, text, ha="center", va="center", fontsize=7, color="white" if dark else "black")
    return _save(fig, path)


def plot_class_scores(
    scores: Mapping[str, Mapping[str, float | None]],
    path: str | os.PathLike,
    class_names: Sequence[str] = CLASS_NAMES,
    title: str = "Per-class F1 (Dice)",
    ylabel: str = "score",
) -> Path:
    """Grouped bars: one group per class, one bar per series (e.g. ``{"test": {class: f1}}``).

    Missing or ``None``/NaN scores (class absent from ground truth and prediction) are drawn as
    an empty slot marked "n/a" so they are not mistaken for zero.
    """
    series = list(scores)
    if not series:
        raise ValueError("no score series to plot.")
    n = len(class_names)
    width = 0.8 / len(series)
    fig = Figure(figsize=(max(6.0, 1.3 * n), 3.8))
    ax = fig.add_subplot()
    x = np.arange(n)
    for k, name in enumerate(series):
        values = [scores[name].get(c) for c in class_names]
        heights = [np.nan if v is None else float(v) for v in values]
        pos = x - 0.4 + width * (k + 0.5)
        bars = ax.bar(pos, np.nan_to_num(heights, nan=0.0), width, label=name)
        for rect, h in zip(bars, heights):
            label = "n/a" if np.isnan(h) else f"{h:.2f}"
            ax.text(
                rect.get_x() + rect.get_width() / 2,
                (0 if np.isnan(h) else h) + 0.01,
                label,
                ha="center",
                va="bottom",
                fontsize=7,
            )
    ax.set_xticks(x, [_pretty(c) for c in class_names], rotation=20, ha="right")
    ax.set_ylim(0.0, 1.1)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if len(series) > 1:
        ax.legend(fontsize=8, loc="upper right")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def pick_example_slices(label: np.ndarray, count: int = 3, ignore_label: int = IGNORE_LABEL) -> list[int]:
    """Choose ``count`` z-indices of a ``(Z, Y, X)`` label volume that show the most classes.

    Slices are ranked by the number of distinct foreground classes, then by foreground voxels,
    and picked at least ``Z // (2 * count)`` apart so the examples are not near-duplicates.
    """
    label = np.asarray(label)
    if label.ndim != 3:
        raise ValueError(f"label volume must be (Z, Y, X), got shape {label.shape}.")
    z = label.shape[0]
    flat = label.reshape(z, -1)
    n_classes = np.array([len(set(np.unique(s).tolist()) - {0, ignore_label}) for s in flat])
    n_fg = ((flat != 0) & (flat != ignore_label)).sum(axis=1)
    order = np.lexsort((-n_fg, -n_classes))  # primary key last
    gap = max(1, z // (2 * max(count, 1)))
    chosen: list[int] = []
    for idx in order.tolist():
        if all(abs(idx - c) >= gap for c in chosen):
            chosen.append(idx)
        if len(chosen) == count:
            break
    return sorted(chosen)


def plot_example_slices(
    image: np.ndarray,
    label: np.ndarray,
    pred: np.ndarray,
    path: str | os.PathLike,
    slices: Sequence[int] | None = None,
    class_names: Sequence[str] = CLASS_NAMES,
    title: str | None = None,
    z_numbers: Sequence[int] | None = None,
    dpi: int = 110,
) -> Path:
    """Rows of ``raw | ground truth | prediction`` for chosen z-slices of ``(Z, Y, X)`` volumes.

    Labels are drawn with :data:`CLASS_COLORS` over the grey-scale slice; a legend names every
    class. ``slices`` defaults to :func:`pick_example_slices` on ``label``; ``z_numbers`` are the
    slice numbers shown in the titles (default: ``slices``), for volumes that hold only a selection.
    Noisy slices compress poorly: ``dpi`` 70 keeps a three-row figure of 256² slices near 300 kB.
    """
    image, label, pred = np.asarray(image), np.asarray(label), np.asarray(pred)
    if not (image.shape == label.shape == pred.shape) or image.ndim != 3:
        raise ValueError(
            "image, label and prediction must be (Z, Y, X) of one shape, "
            f"got {image.shape}, {label.shape}, {pred.shape}."
        )
    slices = list(slices) if slices is not None else pick_example_slices(label)
    rows = len(slices)
    z_numbers = list(z_numbers) if z_numbers is not None else slices
    aspect = image.shape[1] / max(image.shape[2], 1)
    fig = Figure(figsize=(9.0, 3.0 * rows * aspect + 0.8), layout="constrained")
    axes = fig.subplots(rows, 3, squeeze=False)
    for r, (z, shown_z) in enumerate(zip(slices, z_numbers)):
        raw = image[z]
        panels = (
            (colorize_labels(np.zeros_like(label[z]), raw), f"raw (z={shown_z})"),
            (colorize_labels(label[z], raw), "ground truth"),
            (colorize_labels(pred[z], raw), "prediction"),
        )
        for c, (rgb, name) in enumerate(panels):
            axes[r, c].imshow(rgb, interpolation="nearest")
            axes[r, c].set_title(name, fontsize=9)
            axes[r, c].set_axis_off()
    handles = [Patch(color=CLASS_COLORS[i], label=_pretty(n)) for i, n in enumerate(class_names) if i > 0]
    handles.append(Patch(color=IGNORE_COLOR, label="unannotated"))
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title)
    return _save(fig, path, dpi)


def plot_training_curves(
    history: Mapping[str, Sequence],
    path: str | os.PathLike,
    class_names: Sequence[str] = CLASS_NAMES,
) -> Path:
    """Loss and per-class validation F1 against epoch, side by side.

    ``history`` holds ``"epoch"`` and ``"loss"`` (mean training loss per epoch, same length),
    optionally ``"val_epoch"`` with ``"val_f1"`` (one ``{class: f1}`` per validation),
    ``"val_mean_fg_f1"`` (drawn dashed) and ``"val_loss"``. This is the layout written by
    :class:`cryoet_monai.evaluation.curves.TrainingCurvesHandler`.
    """
    epochs, loss = list(history.get("epoch", [])), list(history.get("loss", []))
    if len(epochs) != len(loss):
        raise ValueError(f"history has {len(epochs)} epochs but {len(loss)} loss values.")
    fig = Figure(figsize=(11.0, 3.8))
    ax_loss, ax_f1 = fig.subplots(1, 2)
    ax_loss.plot(epochs, loss, marker="o", ms=3, label="training loss")
    val_epochs = list(history.get("val_epoch", []))
    if history.get("val_loss"):
        ax_loss.plot(val_epochs, list(history["val_loss"]), marker="s", ms=3, label="validation loss")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_loss.set_title("Loss")
    ax_loss.grid(alpha=0.3)
    ax_loss.legend(fontsize=8)
    val_f1 = list(history.get("val_f1", []))
    for i, name in enumerate(class_names):
        ys = [np.nan if (v := rec.get(name)) is None else float(v) for rec in val_f1]
        if ys and not np.all(np.isnan(ys)):
            ax_f1.plot(
                val_epochs,
                ys,
                marker="o",
                ms=3,
                color=CLASS_COLORS[i] if i else (0.4, 0.4, 0.4),
                label=_pretty(name),
            )
    mean = [np.nan if v is None else float(v) for v in history.get("val_mean_fg_f1", [])]
    if mean and len(mean) == len(val_epochs) and not np.all(np.isnan(mean)):
        ax_f1.plot(val_epochs, mean, "k--", lw=1.5, label="mean foreground")
    ax_f1.set_xlabel("epoch")
    ax_f1.set_ylabel("F1 (Dice)")
    ax_f1.set_ylim(0.0, 1.02)
    ax_f1.set_title("Validation F1 per class")
    ax_f1.grid(alpha=0.3)
    if val_f1:
        ax_f1.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    for ax in (ax_loss, ax_f1):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return _save(fig, path)
