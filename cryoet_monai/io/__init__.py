"""Reading and writing tomograms (MRC/CCP4) as MONAI ImageReader/ImageWriter."""

from cryoet_monai.io.mrc import (
    MRC_SUFFIXES,
    MRCFormatError,
    MRCOutputExistsError,
    MRCOutputFolderError,
    MRCReader,
    MRCTruncatedError,
    MRCWriteError,
    MRCWriter,
    create_mrc,
    is_mrc_path,
    mrc_mode_for,
    mrc_stem,
    read_mrc,
    release_pages,
    save_mrc,
)

__all__ = [
    "MRC_SUFFIXES",
    "MRCFormatError",
    "MRCOutputExistsError",
    "MRCOutputFolderError",
    "MRCReader",
    "MRCTruncatedError",
    "MRCWriteError",
    "MRCWriter",
    "create_mrc",
    "is_mrc_path",
    "mrc_mode_for",
    "mrc_stem",
    "read_mrc",
    "release_pages",
    "save_mrc",
]
