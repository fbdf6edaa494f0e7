"""Self-describing model folders: ``configs/inference.json``, ``configs/metadata.json``, ``models/model.pt``.

A training run (``train.json``'s ``finalize``) and ``cryoet-monai finetune`` both leave one, so
``cryoet-monai segment --model FOLDER`` needs no matching config edits, whatever the widths or the
kind (2-D, 2.5-D, 3-D): the folder's ``inference.json`` is the bundle's, with the network definition
of the weights it holds and the inferer of its kind (:mod:`cryoet_monai.inference.inferers`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cryoet_monai.io.atomic import write_json_atomic

__all__ = ["inferer_config", "network_definition", "pruned_start", "warm_start", "write_model_configs"]

logger = logging.getLogger(__name__)

# the config inferer of each kind of network (spatial dims); 2-D: k slices as channels, k = in_channels
_SLICES = {"_target_": "cryoet_monai.inference.SliceStackInferer", "context": "@network_def#in_channels",
           "plane_stride": "@plane_stride"}
_WINDOWS = {"_target_": "cryoet_monai.inference.WindowInferer3D"}
#: inference window of a 3-D model folder when neither the bundle nor the caller gives a 3-D one
DEFAULT_ROI_3D = [32, 128, 128]


def _weights_file(weights: str | os.PathLike) -> Path:
    """``weights`` itself, or a model folder's ``models/model.pt``."""
    path = Path(weights)
    return path / "models" / "model.pt" if path.is_dir() else path


def warm_start(network: Any, weights: str | os.PathLike | None) -> Any:
    """``network`` with the weights of ``weights`` (a ``model.pt`` state dict or a model folder) loaded;
    unchanged when ``weights`` is ``None``. For training runs that continue from a shipped model.

    The checks and one-line errors are the segmenter's (a missing file, a corrupt one, widths that
    do not fit the configured ``network_def``). A run that resumes from its own checkpoint
    (``train#resume``) overwrites these weights with the checkpoint's, as it should.
    """
    if weights is None:
        return network
    from cryoet_monai.inference.engine import TomogramSegmenter

    path = _weights_file(weights)
    TomogramSegmenter.load_weights(network, path)
    logger.info("initial weights from %s", path)
    return network


def pruned_start(network: Any, weights: str | os.PathLike) -> Any:
    """``network`` (a :class:`cryoet_monai.PaperUNet`) filled with the most important channels of the
    wider trained U-Net in ``weights`` (a ``model.pt`` state dict or a model folder), to be fine-tuned:
    a narrower, faster model that starts from what the wider one learned
    (:mod:`cryoet_monai.networks.prune`).

    The source widths are read from the state dict; the rest of the source's definition is
    ``network``'s. A checkpoint that is not such a U-Net, or one narrower than ``network``, gets the
    segmenter's one-line error naming the file.
    """
    from cryoet_monai.inference.engine import InferenceError, TomogramSegmenter
    from cryoet_monai.networks.prune import prune_channels_into, saved_features
    from cryoet_monai.networks.unet import PaperUNet

    if not isinstance(network, PaperUNet):
        raise TypeError(f"pruned_start needs a PaperUNet to fill, got {type(network).__name__}.")
    path = _weights_file(weights)
    state = TomogramSegmenter.read_state_dict(path)
    definition = network_definition(network)
    definition.pop("_target_")
    try:
        definition["features"] = saved_features(state, len(network.features))
    except KeyError as err:
        raise InferenceError(
            f"{path}: not a {len(network.features)}-level U-Net checkpoint (no {err.args[0]}); "
            "give the wider model to prune."
        ) from err
    source = PaperUNet(**definition)
    TomogramSegmenter.load_weights(source, path, state)
    try:
        prune_channels_into(source, network)
    except ValueError as err:
        raise InferenceError(f"{path}: cannot prune it to the configured network: {err}") from err
    logger.info("initial weights: channels of %s (features %s) pruned to %s", path, definition["features"],
                list(network.features))
    return network


def network_definition(network: Any) -> dict[str, Any]:
    """The bundle-config definition (``{"_target_": ..., **arguments}``) a network was built from:
    :class:`cryoet_monai.PaperUNet` records it as ``definition``. Raises ``TypeError`` otherwise."""
    definition = getattr(network, "definition", None)
    if not isinstance(definition, Mapping) or "_target_" not in definition:
        raise TypeError(
            f"{type(network).__name__} does not record its definition (a 'definition' dict with '_target_'); "
            "give the network definition explicitly."
        )
    return json.loads(json.dumps(dict(definition)))  # plain JSON types: tuples become lists


def inferer_config(
    inference: Mapping[str, Any], spatial_dims: int, roi_size: Sequence[int] | None = None
) -> tuple[dict[str, Any], list[int] | int]:
    """``(inferer, roi_size)`` entries of an inference config for a network of ``spatial_dims``: the
    config's own inferer when it is of that kind, else ours of that kind with the same wired arguments
    (``@roi_size``, ``@overlap``, ...); ``roi_size`` (default the config's) must have 1 or
    ``spatial_dims`` entries, else whole slices (2-D) or :data:`DEFAULT_ROI_3D` (3-D) replace it."""
    current = dict(inference.get("inferer") or {})
    kind, other = (_WINDOWS, _SLICES) if spatial_dims == 3 else (_SLICES, _WINDOWS)
    if current.get("_target_") == other["_target_"]:  # ours, for the other kind: switch, keep the wiring
        current = {**kind, **{k: v for k, v in current.items() if k not in other}}
    roi = inference.get("roi_size", -1) if roi_size is None else [int(r) for r in roi_size]
    if isinstance(roi, Sequence) and len(roi) not in (1, spatial_dims):
        fallback = [-1, -1] if spatial_dims == 2 else list(DEFAULT_ROI_3D)
        logger.warning("roi_size %s does not fit a %d-D network; the model folder gets %s", roi, spatial_dims,
                       fallback)
        roi = fallback
    return current, roi


def _spatial_dims(network: Any) -> int:
    if isinstance(network, Mapping):
        return int(network.get("spatial_dims", 2))
    from cryoet_monai.inference.inferers import network_kind

    return network_kind(network)[0]


def write_model_configs(
    folder: str | os.PathLike,
    network: Any,
    inference_config: str | os.PathLike,
    metadata: Mapping[str, Any] | str | os.PathLike | None = None,
    changelog: str | None = None,
    keep_postprocessing: bool = False,
    extra_metadata: Mapping[str, Any] | None = None,
    roi_size: Sequence[int] | None = None,
) -> Path:
    """Write ``folder/configs/inference.json`` and ``metadata.json`` describing the weights in
    ``folder/models/model.pt``; returns the folder.

    Args:
        folder: the model folder (a training run's output folder, a fine-tuned model).
        network: the trained network (its :func:`network_definition` replaces ``network_def``), or a
            definition dict.
        inference_config: the bundle's ``configs/inference.json`` the folder's one is made from (when
            missing: the inference config of this checkout or installed package).
        metadata: the bundle metadata (dict or path); default: ``metadata.json`` beside ``inference_config``.
        changelog: a line added to the metadata's changelog under its version.
        keep_postprocessing: keep ``class_gains`` / ``min_component_size``: they were tuned for the
            source weights, so a newly trained network gets plain argmax and no size filter unless
            it is a fine-tuned copy of the same model.
        extra_metadata: top-level metadata entries to add (e.g. ``"finetune"``).
        roi_size: the folder's inference window (e.g. a 3-D model's training patch); default: the
            bundle's when it fits the network's kind (:func:`inferer_config`).
    """
    folder = Path(folder)
    (folder / "configs").mkdir(parents=True, exist_ok=True)
    if not Path(inference_config).is_file():  # e.g. a bundle_root without configs/: the package's own
        from cryoet_monai.inference.cli import find_bundle_config

        inference_config = find_bundle_config(None)[0]
    inference = json.loads(Path(inference_config).read_text())
    inference["network_def"] = dict(network) if isinstance(network, Mapping) else network_definition(network)
    inference["inferer"], inference["roi_size"] = inferer_config(inference, _spatial_dims(network), roi_size)
    if not keep_postprocessing:
        inference["class_gains"], inference["min_component_size"] = None, 0
    if metadata is None:
        metadata = Path(inference_config).parent / "metadata.json"
    if not isinstance(metadata, Mapping):
        metadata = json.loads(Path(metadata).read_text()) if Path(metadata).is_file() else {}
    meta = json.loads(json.dumps(dict(metadata)))
    if changelog:
        meta.setdefault("changelog", {})[meta.get("version", "0")] = changelog
    meta.update(dict(extra_metadata or {}))
    write_json_atomic(folder / "configs" / "inference.json", inference, indent=4)
    write_json_atomic(folder / "configs" / "metadata.json", meta, indent=4)
    logger.info("model folder %s: configs written (segment with: cryoet-monai segment TOMO --model %s)",
                folder, folder)
    return folder
