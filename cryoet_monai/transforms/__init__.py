"""MONAI transforms for tomograms (array + dictionary pairs)."""

from cryoet_monai.transforms.intensity import (
    IntensityStats,
    NonFiniteIntensityError,
    RobustNormalizeIntensity,
    RobustNormalizeIntensityd,
    compute_stats,
)
from cryoet_monai.transforms.sampling import (
    CropZFraction,
    CropZFractiond,
    SliceStride,
    SliceStrided,
)

__all__ = [
    "IntensityStats",
    "NonFiniteIntensityError",
    "RobustNormalizeIntensity",
    "RobustNormalizeIntensityd",
    "compute_stats",
    "CropZFraction",
    "CropZFractiond",
    "SliceStride",
    "SliceStrided",
]
