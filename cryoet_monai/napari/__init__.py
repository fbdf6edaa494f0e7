"""napari plugin (npe2, ``napari.yaml``): open our outputs as layers with the class names and colours.

:func:`get_reader` returns a reader for ``<name>_seg.mrc`` / ``<name>_seg.zarr`` (a labels layer
with the fixed class colours of the evaluation figures and the class names as features),
``<name>_probs.mrc`` (one image layer per class) and ``<name>_uncertainty.mrc`` (an image layer),
with the voxel size as the layer scale. Plain functions returning napari layer-data tuples, so
they work (and are tested) without napari installed.

The widget ``Segment tomogram`` (:mod:`cryoet_monai.napari.widget`) segments an image layer with the
shipped or a chosen model and adds the same kind of labels layer.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cryoet_monai import CLASS_NAMES

__all__ = ["get_reader", "labels_layer_meta", "read_outputs"]

LayerData = tuple[Any, dict[str, Any], str]


def _kind(path: Path) -> str | None:
    stem = path.name
    for suffix in (".mrc", ".zarr"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    else:
        return None
    for kind in ("seg", "probs", "uncertainty"):
        if stem.endswith(f"_{kind}"):
            return kind
    return None


def labels_layer_meta(
    name: str, scale: tuple[float, ...], translate: tuple[float, ...] | None = None
) -> dict[str, Any]:
    """Layer keywords of a labels layer of ours: the fixed class colours of the evaluation figures
    (background transparent), the class names as features and in ``metadata``."""
    from cryoet_monai.evaluation.figures import CLASS_COLORS

    colors: dict[int | None, tuple[float, ...]] = {i: (*rgb, 1.0) for i, rgb in enumerate(CLASS_COLORS)}
    colors[0] = (0.0, 0.0, 0.0, 0.0)
    colors[None] = (0.5, 0.5, 0.5, 1.0)  # values outside the classes
    # a {label: RGBA, None: default} dict is napari's direct label colormap
    meta: dict[str, Any] = {
        "name": name,
        "scale": tuple(scale),
        "colormap": colors,
        "features": {"index": list(range(len(CLASS_NAMES))), "class": list(CLASS_NAMES)},
        "metadata": {"class_names": list(CLASS_NAMES)},
    }
    if translate is not None:
        meta["translate"] = tuple(translate)
    return meta


def get_reader(path: str | list[str]) -> Any:
    """npe2 reader hook: a reader function for our output files, else None (napari asks others)."""
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    if not paths or any(_kind(Path(p)) is None for p in paths):
        return None
    return read_outputs


def read_outputs(path: str | list[str]) -> list[LayerData]:
    """Layer-data tuples for ``<name>_seg``, ``_probs`` and ``_uncertainty`` files (MRC or OME-Zarr)."""
    from cryoet_monai.io.mrc import read_mrc

    layers: list[LayerData] = []
    for p in [path] if isinstance(path, (str, os.PathLike)) else path:
        p = Path(p)
        kind = _kind(p)
        if kind == "seg":
            if p.suffix == ".zarr":  # one open of the store: data and voxel size
                from cryoet_monai.io.omezarr import read_ome_zarr

                data, m = read_ome_zarr(p / "labels" / "segmentation")
            else:
                data, m = read_mrc(p, mmap=True)
            layers.append((data, labels_layer_meta(p.name, tuple(m["voxel_size"])), "labels"))
        elif kind == "probs":
            data, m = read_mrc(p, mmap=True)
            for c, name in enumerate(CLASS_NAMES[: data.shape[0]]):
                layers.append(
                    (
                        data[c],
                        {
                            "name": f"{p.name}: {name}",
                            "scale": tuple(m["voxel_size"]),
                            "colormap": "magma",
                            "contrast_limits": (0.0, 1.0),
                            "visible": c != 0,
                            "blending": "additive",
                        },
                        "image",
                    )
                )
        elif kind == "uncertainty":
            data, m = read_mrc(p, mmap=True)
            layers.append(
                (
                    data,
                    {
                        "name": p.name,
                        "scale": tuple(m["voxel_size"]),
                        "colormap": "inferno",
                        "contrast_limits": (0.0, 1.0),
                    },
                    "image",
                )
            )
    return layers
