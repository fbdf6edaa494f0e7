"""Segmentation networks."""

from cryoet_monai.networks.unet import DoubleConv, InputSizeError, PaperUNet, UpConcat

__all__ = ["PaperUNet", "DoubleConv", "UpConcat", "InputSizeError"]
