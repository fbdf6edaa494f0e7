"""Data for cryoet-monai: the synthetic tomogram generator and datasets.

- :mod:`cryoet_monai.data.synthetic`: :func:`generate_tomogram`, :func:`write_synthetic_dataset`
- :mod:`cryoet_monai.data.phantom`: physical-scale density/label phantoms (shapes, rasterisation)
- :mod:`cryoet_monai.data.imaging`: missing wedge, CTF, noise, band-pass in Fourier space
"""
