"""napari widget: segment the selected image layer with the shipped (or a chosen) model.

:func:`segment_layer` is the whole logic as a plain function (an image layer, or anything with
``data``/``scale``/``translate``/``name``, in; a labels layer-data tuple out), so it runs and is tested
without napari or Qt. :func:`segment_widget` is the npe2 widget contribution (``napari.yaml``): a
magicgui form around it that segments in a worker thread, so the viewer stays responsive, and adds
``<layer>_seg`` with the class names and the fixed class colours when done.

The model is found as by ``cryoet-monai segment`` (:func:`cryoet_monai.inference.cli.build_segmenter`):
none = the shipped bundle, a folder = a model folder (``configs/`` + ``models/model.pt``, e.g. from
``finetune``) or bundle, an ``inference.json`` = that config, any other file = a ``state_dict`` for the
shipped network (a ``models/model.pt`` inside a model folder: that folder).

No napari or magicgui import at module level: ``import cryoet_monai.napari.widget`` works without them.
(No ``from __future__ import annotations`` here: magicgui reads the form's annotations as objects.)
"""

import math
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["INVERT_CHOICES", "SegmenterCache", "resolve_model", "segment_layer", "segment_widget"]

LayerData = tuple[Any, dict[str, Any], str]

INVERT_CHOICES = ("auto", "yes", "no")



def resolve_model(model: str | os.PathLike | None) -> tuple[Path | None, dict[str, Any]]:
    """``(config, overrides)`` for the widget's model field: what ``--model`` means on the command line
    (:func:`cryoet_monai.inference.cli.resolve_model`), and a missing path is said at once."""
    from cryoet_monai.inference.cli import resolve_model as resolve

    if model is not None and str(model).strip() not in ("", ".") and not Path(model).expanduser().exists():
        raise FileNotFoundError(f"model {Path(model).expanduser()}: no such file or folder.")
    return resolve(model)


class SegmenterCache:
    """Keeps the last :class:`~cryoet_monai.inference.TomogramSegmenter` a widget built (loading the
    shipped weights takes a few seconds); one per widget, safe to share with its worker threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: str | None = None
        self._segmenter: Any = None

    def get(self, model: str | os.PathLike | None, invert: str) -> Any:
        """The segmenter for the model field and polarity choice: the kept one if nothing changed
        (same config, same weights file and modification time), else a new one."""
        with self._lock:
            key, config, overrides = _model_key(model, invert)
            if key != self._key:
                self._segmenter = _build_segmenter(model, config, overrides, invert)
                self._key = key
            return self._segmenter


def _model_key(model: str | os.PathLike | None, invert: str) -> tuple[str, Path | None, dict[str, Any]]:
    from cryoet_monai.inference.cli import find_bundle_config

    config, overrides = resolve_model(model)
    file, _ = find_bundle_config(config)
    weights = Path(overrides.get("model_path", file.parent.parent / "models" / "model.pt"))
    stamp = weights.stat().st_mtime_ns if weights.is_file() else None
    return repr((str(file.resolve()), str(weights), stamp, invert)), config, overrides


def _build_segmenter(model: str | os.PathLike | None, config: Path | None, overrides: dict[str, Any],
                     invert: str) -> Any:
    """A :class:`~cryoet_monai.inference.TomogramSegmenter` for the widget: labels in memory only (no
    probabilities, uncertainty or preview files), no progress bar."""
    from cryoet_monai.engines.errors import innermost_error
    from cryoet_monai.inference.cli import build_segmenter
    from cryoet_monai.inference.engine import InferenceError

    overrides = {**overrides, "invert": invert, "progress": False, "save_probs": False,
                 "save_uncertainty": False, "preview": False, "voxel_size": None}
    try:
        return build_segmenter(config, **overrides).get_parsed_content("segmenter")
    except (RuntimeError, ValueError, AssertionError, OSError) as err:
        # ConfigParser wraps the real cause ("Failed to instantiate ...") in a chain: one line
        inner = innermost_error(err)
        lines = str(inner).strip().splitlines()
        where = model or config or "the shipped model"
        raise InferenceError(f"model {where}: {lines[0] if lines else type(inner).__name__}") from err


def _floats(value: Any) -> tuple[float, ...]:
    """A layer's ``scale``/``translate`` (numpy array, tuple or None) as a tuple of floats."""
    return () if value is None else tuple(float(v) for v in value)


def _layer_voxel_size(image: Any, voxel_size: float | Sequence[float] | None) -> tuple[float, ...]:
    name = getattr(image, "name", "image")
    if voxel_size is not None and not isinstance(voxel_size, (int, float)):
        return tuple(float(v) for v in voxel_size)
    if voxel_size:
        return (float(voxel_size),) * 3
    scale = _floats(getattr(image, "scale", None))
    if not scale or all(s == 1.0 for s in scale):
        raise ValueError(
            f"{name}: the layer has no voxel size (scale {scale or 'unset'}); enter the voxel size in Å "
            "in the widget, or open the tomogram with its voxel size as the layer scale."
        )
    return scale


def _check_voxel_size(segmenter: Any, vs: tuple[float, ...], name: str, source: str) -> None:
    """The engine's voxel-size checks, worded for the widget (its messages name the CLI options)."""
    from cryoet_monai.inference.engine import VoxelSizeError

    shown = "/".join(dict.fromkeys(f"{v:.4g}" for v in vs))
    if not all(math.isfinite(v) and v > 0 for v in vs):
        raise VoxelSizeError(
            f"{name}: voxel size {shown} Å ({source}) is not positive; enter the voxel size "
            "in Å in the widget."
        )
    lo, hi = segmenter.PLAUSIBLE_VOXEL_SIZE
    if segmenter.resample and segmenter.model_voxel_size is not None and not all(lo <= v <= hi for v in vs):
        raise VoxelSizeError(
            f"{name}: voxel size {shown} Å ({source}) is outside the plausible {lo:g}-{hi:g} Å; enter the "
            "voxel size in Å in the widget (a layer scale is taken as Å)."
        )


def segment_layer(
    image: Any,
    model: str | os.PathLike | None = None,
    voxel_size: float | Sequence[float] | None = 0.0,
    invert: str = "auto",
    cache: SegmenterCache | None = None,
) -> LayerData:
    """Segment a 3-D image layer; returns the labels layer-data tuple ``(labels, meta, "labels")``.

    Args:
        image: a ``napari.layers.Image`` (or an object with ``data``, ``name`` and optionally
            ``scale``/``translate``/``multiscale``/``rgb``); ``data`` is ``(Z, Y, X)``.
        model: ``None``/empty for the shipped model, else a model folder, an inference config or a
            checkpoint (:func:`resolve_model`).
        voxel_size: Å per voxel (one value or ``(z, y, x)``); 0/``None``: the layer's scale, taken as Å.
        invert: ``"auto"`` (polarity decided by the model), ``"yes"`` (dense material bright) or ``"no"``.
        cache: keeps the segmenter between calls (the widget's); ``None`` builds one for this call.

    The labels (uint8, 0-5) lie on the image's grid: the layer gets the image's scale and translate,
    the class names as features, the fixed class colours and, in ``metadata``, the class names, the
    voxel size used and the segmentation summary (class fractions, polarity, seconds).

    Raises:
        ValueError / :class:`~cryoet_monai.inference.InferenceError`: one line naming the layer (no
        voxel size, not 3-D, flat, a model that cannot be loaded, ...).
    """
    from cryoet_monai.inference.engine import VoxelSizeError
    from cryoet_monai.napari import labels_layer_meta

    if image is None:
        raise ValueError("no image layer selected: open a tomogram (or choose an image layer) first.")
    name = str(getattr(image, "name", "image"))
    if invert not in INVERT_CHOICES:
        raise ValueError(f"invert must be one of {', '.join(INVERT_CHOICES)}, got {invert!r}.")
    if getattr(image, "rgb", False):
        raise ValueError(f"{name}: an RGB(A) image is not a tomogram; choose a greyscale 3-D layer.")
    data = image.data
    if getattr(image, "multiscale", False):
        data = data[0]  # full resolution: the labels must match the image grid
    ndim, shape = getattr(data, "ndim", "?"), tuple(getattr(data, "shape", ()))
    if ndim != 3:
        raise ValueError(
            f"{name}: the layer is {ndim}-D with shape {shape}; a tomogram layer must be 3-D (Z, Y, X)."
        )
    vs = _layer_voxel_size(image, voxel_size)
    segmenter = (cache or SegmenterCache()).get(model, invert)
    _check_voxel_size(segmenter, vs, name, "the layer's scale" if not voxel_size else "the voxel size field")
    try:
        labels, summary = segmenter.segment_array(data, vs, name=name)
    except VoxelSizeError as err:  # a check of the engine's not made above (1.0 Å = unset): same hint
        raise VoxelSizeError(f"{err} (napari: enter the voxel size in Å in the widget)") from err
    # other InferenceErrors (flat volume, ...) are one line naming the layer already
    scale = _floats(getattr(image, "scale", None)) or tuple(summary["voxel_size"])
    translate = _floats(getattr(image, "translate", None)) or (0.0,) * 3
    meta = labels_layer_meta(f"{name}_seg", scale, translate)
    meta["metadata"].update(
        voxel_size=tuple(summary["voxel_size"]),
        summary={k: v for k, v in summary.items() if k not in ("input", "seg")},
        model=str(segmenter.model_path),
    )
    return labels, meta, "labels"


def _summary_line(layer: LayerData) -> str:
    meta = layer[1]
    summary = meta["metadata"]["summary"]
    top = sorted(summary["class_fractions"].items(), key=lambda kv: -kv[1])
    fractions = ", ".join(f"{k} {v:.1%}" for k, v in top if v >= 0.001)
    polarity = "inverted" if summary["inverted"] else "as is"
    return f"{meta['name']}: {summary['seconds']:.1f} s, contrast {polarity} | {fractions}"


def segment_widget() -> Any:
    """The npe2 widget (``cryoet-monai.segment_widget``): a magicgui form around :func:`segment_layer`.

    Segmentation runs in a napari worker thread; the labels layer is added when it finishes, errors
    show as napari notifications. Calling the form returns the worker (tests, scripts)."""
    import napari
    from magicgui import magicgui
    from napari.qt.threading import create_worker
    from napari.utils.notifications import notification_manager, show_info

    cache = SegmenterCache()  # this widget's: the model is loaded once, not per click

    def failed(err: Exception) -> None:
        # the message, with the traceback behind "details"; not re-raised in a Qt slot (napari's default
        # for workers), which PyQt answers with an abort outside napari's own event loop
        notification_manager.receive_error(type(err), err, err.__traceback__)

    def segment(
        viewer: napari.Viewer,
        image: napari.layers.Image,
        model: Path | None = None,
        voxel_size: float = 0.0,
        invert: str = "auto",
    ) -> Any:
        if image is None:
            raise ValueError("no image layer selected: open a tomogram (or choose an image layer) first.")
        if voxel_size == 0:
            _layer_voxel_size(image, None)  # no voxel size at all: say so now, not from the thread

        def done(layer: LayerData) -> None:
            viewer.add_layer(napari.layers.Layer.create(*layer))
            show_info(_summary_line(layer))

        def finished() -> None:
            gui.call_button.enabled = True

        worker = create_worker(
            segment_layer,
            image,
            model,
            voxel_size,
            invert,
            cache,
            _start_thread=False,
            _connect={"returned": done, "errored": failed, "finished": finished},
        )
        gui.call_button.enabled = False
        show_info(f"segmenting {image.name} with {model or 'the shipped model'} ...")
        worker.start()
        return worker

    gui = magicgui(
        segment,
        call_button="Segment",
        image={"label": "image"},
        model={
            "label": "model",
            "mode": "r",
            "filter": "*.pt *.pth *.json *.yaml",
            "tooltip": "empty: the shipped model; else a model folder (typed), its models/model.pt, an "
            "inference.json or a state_dict checkpoint for the shipped network",
        },
        voxel_size={
            "label": "voxel size (Å)",
            "min": 0.0,
            "max": 1000.0,
            "step": 0.1,
            "tooltip": "0: the layer's scale, taken as Å",
        },
        invert={
            "label": "dense material",
            "choices": [("auto (model decides)", "auto"), ("bright (invert)", "yes"), ("dark (as is)", "no")],
            "tooltip": "contrast polarity; auto lets the model decide",
        },
    )
    return gui
