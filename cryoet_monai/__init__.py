"""cryoet-monai: MONAI-based automatic annotation of cellular cryo-electron tomograms.

Array axis order, everywhere in this library: a tomogram is ``(Z, Y, X)`` as stored in the
MRC file (numpy/mrcfile order); MONAI tensors are channel-first ``(C, Z, Y, X)``; a 2-D
slice is ``(C, Y, X)``. Voxel sizes and origins are in ångström, also ordered ``(z, y, x)``.

Labels: 0 background, 1 microtubule, 2 ribosome, 3 double membrane, 4 single membrane,
5 carbon edge (see :data:`CLASS_NAMES`); 255 marks unannotated voxels (ignored by losses
and metrics).

Public names are imported lazily so that ``import cryoet_monai`` stays cheap and a bundle
config can name e.g. ``cryoet_monai.MRCReader`` directly.
"""

from __future__ import annotations

from cryoet_monai.lazy_exports import lazy_exports

__version__ = "0.2.0"

from cryoet_monai.classes import CLASSES, ClassInfo, ClassRegistry  # noqa: E402  (pure Python, cheap)

#: class names, index = label value (from the registry :data:`CLASSES`)
CLASS_NAMES: tuple[str, ...] = CLASSES.names
NUM_CLASSES: int = len(CLASS_NAMES)
IGNORE_LABEL: int = 255

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    # I/O
    "MRCReader": "cryoet_monai.io.mrc",
    "MRCWriter": "cryoet_monai.io.mrc",
    "MRCFormatError": "cryoet_monai.io.mrc",
    "save_mrc": "cryoet_monai.io.mrc",
    "read_mrc": "cryoet_monai.io.mrc",
    "create_mrc": "cryoet_monai.io.mrc",
    "MRCTruncatedError": "cryoet_monai.io.mrc",
    "MRCWriteError": "cryoet_monai.io.mrc",
    "is_mrc_path": "cryoet_monai.io.mrc",
    "mrc_stem": "cryoet_monai.io.mrc",
    # transforms
    "RobustNormalizeIntensity": "cryoet_monai.transforms.intensity",
    "RobustNormalizeIntensityd": "cryoet_monai.transforms.intensity",
    # networks
    "PaperUNet": "cryoet_monai.networks.unet",
    # synthetic data
    "generate_tomogram": "cryoet_monai.data.synthetic",
    "write_synthetic_dataset": "cryoet_monai.data.synthetic",
    # losses
    "PAPER_CLASS_WEIGHTS": "cryoet_monai.losses",
    "WeightedCrossEntropyLoss": "cryoet_monai.losses",
    "MaskedDiceCELoss": "cryoet_monai.losses",
    "compute_class_weights": "cryoet_monai.losses",
    # metrics
    "SegmentationConfusionMetric": "cryoet_monai.metrics",
    "TolerantF1Metric": "cryoet_monai.metrics",
    "scores_from_confusion": "cryoet_monai.metrics",
    # training
    "AutocastInferer": "cryoet_monai.engines.inferers",
    "BestMetricCheckpoint": "cryoet_monai.engines.handlers",
    "ResumeCheckpoint": "cryoet_monai.engines.handlers",
    "ClassMetricsHandler": "cryoet_monai.engines.handlers",
    "prepare_datalist": "cryoet_monai.engines.data",
    "write_datalist": "cryoet_monai.engines.data",
    "CropZFractiond": "cryoet_monai.transforms.sampling",
    "SliceStrided": "cryoet_monai.transforms.sampling",
    # inference
    "TomogramSegmenter": "cryoet_monai.inference.engine",
    "InferenceError": "cryoet_monai.inference.engine",
}


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())

__all__ = [
    "CLASSES", "CLASS_NAMES", "ClassInfo", "ClassRegistry", "NUM_CLASSES", "IGNORE_LABEL", "__version__",
    *_EXPORTS,
]  # fmt: skip
