"""MONAI transforms for tomograms (array + dictionary pairs)."""

from cryoet_monai.transforms.intensity import (
    IntensityStats,
    NonFiniteIntensityError,
    RobustNormalizeIntensity,
    RobustNormalizeIntensityd,
    compute_stats,
)

__all__ = [
    "IntensityStats",
    "NonFiniteIntensityError",
    "RobustNormalizeIntensity",
    "RobustNormalizeIntensityd",
    "compute_stats",
]
