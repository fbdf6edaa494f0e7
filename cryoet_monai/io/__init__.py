"""Reading and writing tomograms (MRC/CCP4) as MONAI ImageReader/ImageWriter."""

from cryoet_monai.io.mrc import (
    MRC_SUFFIXES,
    MRCFormatError,
    MRCReader,
    MRCTruncatedError,
    MRCWriter,
    create_mrc,
    mrc_mode_for,
    read_mrc,
    save_mrc,
)

__all__ = [
    "MRC_SUFFIXES",
    "MRCFormatError",
    "MRCReader",
    "MRCTruncatedError",
    "MRCWriter",
    "create_mrc",
    "mrc_mode_for",
    "read_mrc",
    "save_mrc",
]
