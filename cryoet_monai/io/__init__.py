"""Reading and writing tomograms (MRC/CCP4) as MONAI ImageReader/ImageWriter."""
