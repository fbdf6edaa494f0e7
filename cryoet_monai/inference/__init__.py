"""Whole-tomogram inference: streaming z-slab sliding-window segmentation, TTA, uncertainty, clean-up.

Names are imported lazily, so that the command line (``cryoet_monai.inference.cli``) answers
``--help`` without importing torch and MONAI.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "InferenceError": "cryoet_monai.inference.engine",
    "TomogramSegmenter": "cryoet_monai.inference.engine",
    "find_inputs": "cryoet_monai.inference.engine",
    "is_output": "cryoet_monai.inference.engine",
    "output_stem": "cryoet_monai.inference.engine",
    "shard": "cryoet_monai.inference.engine",
    "remove_small_components": "cryoet_monai.inference.postprocess",
    "WindowPredictor": "cryoet_monai.inference.predictor",
    "resolve_autocast_dtype": "cryoet_monai.inference.predictor",
    "tta_transforms": "cryoet_monai.inference.predictor",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'cryoet_monai.inference' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_EXPORTS))


__all__ = sorted(_EXPORTS)
