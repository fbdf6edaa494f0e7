"""Whole-tomogram inference: streaming z-slab sliding-window segmentation, TTA, uncertainty, clean-up."""

from cryoet_monai.inference.engine import InferenceError, TomogramSegmenter, find_inputs, output_stem, shard
from cryoet_monai.inference.postprocess import remove_small_components
from cryoet_monai.inference.predictor import WindowPredictor, resolve_autocast_dtype, tta_transforms

__all__ = [
    "InferenceError",
    "TomogramSegmenter",
    "WindowPredictor",
    "find_inputs",
    "output_stem",
    "remove_small_components",
    "resolve_autocast_dtype",
    "shard",
    "tta_transforms",
]
