"""Whole-tomogram inference: streaming z-slab sliding-window segmentation (the inferer and the label sink
are parts), TTA, uncertainty, clean-up.

Names are imported lazily, so that the command line (``cryoet_monai.inference.cli``) answers
``--help`` without importing torch and MONAI.
"""

from __future__ import annotations

from cryoet_monai.lazy_exports import lazy_exports

_EXPORTS: dict[str, str] = {
    "InferenceError": "cryoet_monai.inference.engine",
    "TomogramSegmenter": "cryoet_monai.inference.engine",
    "find_inputs": "cryoet_monai.inference.engine",
    "is_output": "cryoet_monai.inference.engine",
    "output_stem": "cryoet_monai.inference.engine",
    "shard": "cryoet_monai.inference.engine",
    "ArrayLabelSink": "cryoet_monai.inference.sinks",
    "LabelSink": "cryoet_monai.inference.sinks",
    "MRCLabelSink": "cryoet_monai.inference.sinks",
    "OmeZarrLabelSink": "cryoet_monai.inference.sinks",
    "label_sink": "cryoet_monai.inference.sinks",
    "SliceInferer2D": "cryoet_monai.inference.inferers",
    "SliceStackInferer": "cryoet_monai.inference.inferers",
    "TomogramInferer": "cryoet_monai.inference.inferers",
    "WindowInferer3D": "cryoet_monai.inference.inferers",
    "default_inferer": "cryoet_monai.inference.inferers",
    "network_kind": "cryoet_monai.inference.inferers",
    "remove_small_components": "cryoet_monai.inference.postprocess",
    "WindowPredictor": "cryoet_monai.inference.predictor",
    "resolve_autocast_dtype": "cryoet_monai.inference.predictor",
    "tta_transforms": "cryoet_monai.inference.predictor",
}


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())

__all__ = sorted(_EXPORTS)
