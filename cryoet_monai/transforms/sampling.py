"""Slice selection for training on tomograms.

The paper drops the top and bottom slices of each tomogram ("these images mostly have nothing but
noise"); :class:`CropZFraction` does that on a channel-first ``(C, Z, Y, X)`` volume, as a MONAI
crop (so the affine is updated and the operation is invertible). :class:`SliceStride` keeps every
k-th slice, to make whole-tomogram validation cheaper on big volumes.

Both are deterministic, so in a training pipeline they sit before the cache boundary of a
``CacheDataset``; the random 2-D sampling that follows is stock MONAI:
``ClassesToIndicesd`` (cached) -> ``RandCropByLabelClassesd(spatial_size=[1, H, W])``
-> ``SqueezeDimd(dim=1)``.

2.5-D networks see ``k`` neighbouring slices as channels. Training crops ``[k, H, W]`` and turns
them into a ``(k, H, W)`` input with the centre slice's label (:class:`SlicesToChannelsd`);
validation and inference stack the neighbours of *every* slice into channels,
``(1, Z, Y, X) -> (k, Z, Y, X)`` (:class:`StackSlices`), so MONAI's ``SliceInferer`` hands each
slice its own context.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, SpatialCrop, Transform

__all__ = [
    "CropZFraction",
    "CropZFractiond",
    "SliceStride",
    "SliceStrided",
    "SlicesToChannelsd",
    "StackSlices",
    "StackSlicesd",
    "z_fraction_slice",
]


def z_fraction_slice(depth: int, fraction: float) -> slice:
    """The slice of ``range(depth)`` left after removing ``fraction`` of the slices at each end.

    At least one slice is always kept (the middle one), so tiny volumes never become empty.
    """
    if not 0.0 <= fraction < 0.5:
        raise ValueError(f"z fraction to skip at each end must be in [0, 0.5), got {fraction}")
    if depth < 1:
        raise ValueError(f"volume has no slices along Z (depth {depth})")
    skip = int(depth * fraction)
    if depth - 2 * skip < 1:
        skip = (depth - 1) // 2
    return slice(skip, depth - skip)


class CropZFraction(Transform):
    """Remove ``fraction`` of the Z slices at the top and at the bottom of a ``(C, Z, Y, X)`` volume.

    Args:
        fraction: fraction of the depth to drop at *each* end, in ``[0, 0.5)``; e.g. 0.1 keeps the
            central 80 % of the slices.

    Returns:
        the cropped ``(C, Z', Y, X)`` tensor (a MetaTensor with its affine shifted, when given one).
    """

    def __init__(self, fraction: float = 0.1) -> None:
        z_fraction_slice(1, fraction)  # validate early
        self.fraction = float(fraction)

    def roi_slices(self, img: torch.Tensor) -> list[slice]:
        if img.ndim != 4:
            raise ValueError(f"CropZFraction expects a (C, Z, Y, X) volume, got shape {tuple(img.shape)}")
        return [z_fraction_slice(int(img.shape[1]), self.fraction), slice(None), slice(None)]

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if self.fraction == 0.0:
            return img
        return SpatialCrop(roi_slices=self.roi_slices(img))(img)


class CropZFractiond(MapTransform):
    """Dictionary version of :class:`CropZFraction`: the crop is computed from ``keys[0]`` and applied
    identically to every key (image and label stay aligned)."""

    def __init__(self, keys: KeysCollection, fraction: float = 0.1, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.cropper = CropZFraction(fraction)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        present = list(self.key_iterator(d))
        if not present or self.cropper.fraction == 0.0:
            return d
        reference = tuple(d[present[0]].shape[1:])
        crop = SpatialCrop(roi_slices=self.cropper.roi_slices(d[present[0]]))
        for key in present:
            if tuple(d[key].shape[1:]) != reference:
                raise ValueError(
                    f"CropZFractiond: '{key}' has spatial shape {tuple(d[key].shape[1:])}, "
                    f"'{present[0]}' has {reference}"
                )
        for key in present:
            d[key] = crop(d[key])
        return d


class SliceStride(Transform):
    """Keep every ``stride``-th Z slice of a ``(C, Z, Y, X)`` volume (starting at ``stride // 2``).

    Whole-slice validation through ``SliceInferer`` costs one 2-D forward pass per slice; neighbouring
    slices of a tomogram are nearly identical, so a stride of 2-4 changes the metric little.
    """

    def __init__(self, stride: int = 1) -> None:
        if int(stride) < 1:
            raise ValueError(f"slice stride must be >= 1, got {stride}")
        self.stride = int(stride)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            return img
        if img.ndim != 4:
            raise ValueError(f"SliceStride expects a (C, Z, Y, X) volume, got shape {tuple(img.shape)}")
        start = min(self.stride // 2, int(img.shape[1]) - 1)
        return img[:, start :: self.stride]


class SliceStrided(MapTransform):
    """Dictionary version of :class:`SliceStride` (same slices for every key)."""

    def __init__(self, keys: KeysCollection, stride: int = 1, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.strider = SliceStride(stride)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.strider(d[key])
        return d


class StackSlices(Transform):
    """Neighbouring slices as channels: ``(1, Z, Y, X) -> (k, Z, Y, X)`` (or ``(B, 1, Z, Y, X) ->
    (B, k, Z, Y, X)`` for batches), channel ``c`` of slice ``z`` being slice ``z + c - k // 2``,
    with the first and last slices repeated beyond the volume.

    Args:
        context: ``k``, an odd number of slices (1 = unchanged).
    """

    def __init__(self, context: int = 1) -> None:
        if int(context) < 1 or int(context) % 2 == 0:
            raise ValueError(f"slice context must be an odd number >= 1, got {context}")
        self.context = int(context)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if self.context == 1:
            return img
        if img.ndim not in (4, 5) or img.shape[-4] != 1:
            raise ValueError(
                f"StackSlices expects (1, Z, Y, X) or (B, 1, Z, Y, X), got shape {tuple(img.shape)}"
            )
        h = self.context // 2
        depth = int(img.shape[-3])
        index = torch.arange(depth)[None, :] + torch.arange(-h, h + 1)[:, None]  # (k, Z)
        index = index.clamp(0, depth - 1)
        vol = img[..., 0, :, :, :]  # (Z, Y, X) or (B, Z, Y, X)
        return vol[..., index, :, :]  # (k, Z, Y, X) or (B, k, Z, Y, X)


class StackSlicesd(MapTransform):
    """Dictionary version of :class:`StackSlices` (image keys only; labels keep one channel)."""

    def __init__(self, keys: KeysCollection, context: int = 1, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.stacker = StackSlices(context)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.stacker(d[key])
        return d


class SlicesToChannelsd(MapTransform):
    """A ``(1, k, H, W)`` training crop as a 2.5-D sample: image ``(k, H, W)`` (the slices as
    channels), label ``(1, H, W)`` (the centre slice).

    Args:
        keys: image keys.
        label_keys: label keys (centre slice kept).
    """

    def __init__(
        self, keys: KeysCollection, label_keys: KeysCollection = (), allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.label_keys = [label_keys] if isinstance(label_keys, str) else list(label_keys)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            if img.ndim != 4 or img.shape[0] != 1:
                raise ValueError(f"SlicesToChannelsd: {key!r} must be (1, k, H, W), got {tuple(img.shape)}")
            d[key] = img[0]
        for key in self.label_keys:
            if key in d:
                lab = d[key]
                d[key] = lab[:, lab.shape[1] // 2]
        return d
