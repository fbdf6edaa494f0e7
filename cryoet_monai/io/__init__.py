"""Reading and writing tomograms (MRC/CCP4) as MONAI ImageReader/ImageWriter."""

from cryoet_monai.io import mrc
from cryoet_monai.io.mrc import *  # noqa: F403  (the public names are mrc.__all__)

__all__ = list(mrc.__all__)
