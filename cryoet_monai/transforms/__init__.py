"""MONAI transforms for tomograms (array + dictionary pairs)."""

from cryoet_monai.transforms import intensity, sampling, style
from cryoet_monai.transforms.intensity import *  # noqa: F403  (public names: intensity.__all__)
from cryoet_monai.transforms.sampling import *  # noqa: F403  (public names: sampling.__all__)
from cryoet_monai.transforms.style import *  # noqa: F403  (public names: style.__all__)

__all__ = [*intensity.__all__, *sampling.__all__, *style.__all__]
