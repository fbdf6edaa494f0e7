"""Inferers of :class:`~cryoet_monai.inference.TomogramSegmenter`: how one z-slab block is predicted.

One small object per kind of network, each a MONAI :class:`~monai.inferers.Inferer`:

* :class:`SliceInferer2D` -- a 2-D network, every ``(Y, X)`` slice on its own (MONAI ``SliceInferer``);
* :class:`SliceStackInferer` -- a 2.5-D network: ``k`` neighbouring slices as channels
  (:class:`~cryoet_monai.transforms.sampling.StackSlices`), then slice by slice;
* :class:`WindowInferer3D` -- a 3-D network over ``(Z, Y, X)`` windows (MONAI ``SlidingWindowInferer``)
  whose slabs overlap by a z-halo of half the window depth, blended by the segmenter.

An inferer knows what the segmenter must not: its z-halo (:attr:`TomogramInferer.halo`), how to prepare a
block (:meth:`TomogramInferer.prepare`), its window and batch sizes for a block
(:meth:`TomogramInferer.window`, :meth:`TomogramInferer.batch_size`). Configs name one as ``"inferer"``;
without one the segmenter builds :func:`default_inferer` for its network. A new kind (e.g. z-stacks as
channels of a 3-D network) is a new subclass here.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn as nn
from monai.inferers import Inferer, SliceInferer, SlidingWindowInferer

from cryoet_monai.transforms.sampling import StackSlices

__all__ = [
    "SliceInferer2D",
    "SliceStackInferer",
    "TomogramInferer",
    "WindowInferer3D",
    "default_inferer",
    "interpolate_planes",
    "network_kind",
    "strided_planes",
]


def network_kind(network: nn.Module) -> tuple[int, int]:
    """``(spatial_dims, context)`` of a logits network: 2 or 3 from its ``spatial_dims`` attribute (else
    from its first convolution); ``context`` = the slices a 2-D network takes as channels
    (``in_channels``; 1 for 3-D networks)."""
    dims = getattr(network, "spatial_dims", None)
    if dims not in (2, 3):
        convs = (m for m in network.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d)))
        first = next(convs, None)
        if first is None:
            raise ValueError(f"cannot tell whether {type(network).__name__} is a 2-D or a 3-D network.")
        dims = 2 if isinstance(first, nn.Conv2d) else 3
    context = int(getattr(network, "in_channels", 1)) if dims == 2 else 1
    return int(dims), context


class TomogramInferer(Inferer):
    """Class probabilities of a normalised block ``(1, 1, Z, Y, X)`` -> ``(1, C, Z, Y, X)`` (float32, on
    ``device``) with MONAI's sliding-window inference; ``network`` is the window predictor
    (:class:`~cryoet_monai.inference.predictor.WindowPredictor`, probabilities of a window batch).

    Args:
        roi_size: window size, ``(Y, X)`` for slice inferers or ``(Z, Y, X)`` for 3-D windows; one value
            for every axis; non-positive entries mean the whole extent of the block. A window is never
            larger than the block (a small slice is not padded up to the roi).
        overlap: overlap of neighbouring windows, in ``[0, 1)``.
        sw_batch_size: windows per forward pass; ``None``: ``batch_pixels // prod(window)`` (at least 1).
        batch_pixels: voxel budget of a forward pass when ``sw_batch_size`` is ``None``; default 2**22
            when the windows run on a GPU, else 2**20 (the paper-size U-Net needs about 1 GiB of
            activations per 1024x1024 slice in bf16).
        mode: ``"gaussian"`` or ``"constant"`` blending of overlapping windows.
        sw_device: device of the windows; ``None``: the ``device`` attribute of ``network`` (where the
            predictor runs), else the block's.
        device: device of the stitched probabilities (the segmenter accumulates slabs on the CPU).
    """

    #: spatial dimensions of the networks it runs
    spatial_dims: int = 0
    #: slices a network input holds as channels (2.5-D) -- 1 otherwise
    context: int = 1
    #: slice-wise inferers: predict every ``plane_stride``-th plane of a block (and its last one) and
    #: interpolate the probabilities of the planes between linearly (1: every plane)
    plane_stride: int = 1
    #: True: every output plane depends only on its own (prepared) input plane, so the halo planes of a
    #: block are context only and a block can be cut to the planes wanted before inference. False: the
    #: halo planes are predicted too and blended between neighbouring slabs.
    slice_wise: bool = True

    def __init__(
        self,
        roi_size: Sequence[int] | int = -1,
        overlap: float = 0.25,
        sw_batch_size: int | None = None,
        batch_pixels: int | None = None,
        mode: str = "gaussian",
        sw_device: str | torch.device | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        roi = (int(roi_size),) if isinstance(roi_size, int) else tuple(int(r) for r in roi_size)
        if len(roi) == 1:  # one value: the same size along every axis
            roi = roi * self.spatial_dims
        if len(roi) != self.spatial_dims:
            dims = self.spatial_dims
            raise ValueError(f"roi_size {roi} must have 1 or {dims} entries for a {dims}-D model.")
        if not 0.0 <= float(overlap) < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {overlap!r}.")
        self.roi_size = roi
        self.overlap = float(overlap)
        self.sw_batch_size = None if sw_batch_size is None else max(1, int(sw_batch_size))
        self.batch_pixels = None if batch_pixels is None else int(batch_pixels)
        self.mode = mode
        self.sw_device = None if sw_device is None else torch.device(sw_device)
        self.device = torch.device(device)

    # ------------------------------------------------------------------ what the segmenter asks
    @property
    def halo(self) -> int:
        """z-planes (model grid) each side of a slab that its core planes need."""
        raise NotImplementedError

    @property
    def planar(self) -> bool:
        """True when a slice is predicted from itself alone: inputs are never resampled along z."""
        return False

    @property
    def probe_halo(self) -> int:
        """Planes each side of the central slice in the block of the polarity probe
        (:meth:`~cryoet_monai.inference.TomogramSegmenter.polarity`)."""
        return self.halo

    def slab_depth(self, depth: int, slab_size: int) -> int:
        """Core planes per slab for a tomogram of ``depth`` planes (the segmenter's ``slab_size``)."""
        return slab_size

    @property
    def reuses_first_plane(self) -> bool:
        """Whether :meth:`__call__` takes ``first`` (a subclass overriding it may not): the segmenter
        lets strided slabs share their end plane only then."""
        return self.slice_wise and "first" in inspect.signature(self.__call__).parameters

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """The network's input for a block ``(1, 1, Z, Y, X)``, same spatial shape."""
        return x

    def window(self, spatial: Sequence[int]) -> tuple[int, ...]:
        """The window for a block of ``spatial`` = ``(Z, Y, X)`` (the roi's axes only)."""
        axes = spatial[-self.spatial_dims :]
        # never pad a small block up to the roi
        return tuple(min(r if r > 0 else s, s) for r, s in zip(self.roi_size, axes))

    def batch_size(self, window: Sequence[int], sw_device: torch.device) -> int:
        """Windows per forward pass (``sw_batch_size``, else as many as fit in ``batch_pixels``)."""
        if self.sw_batch_size is not None:
            return self.sw_batch_size
        budget = self.batch_pixels or (2**22 if sw_device.type == "cuda" else 2**20)
        return max(1, budget // math.prod(window))

    def check(self, spatial_dims: int, context: int, size_divisible: int) -> None:
        """Raise ``ValueError`` unless this inferer runs a network of that kind and its windows are at
        least one down-sampling block (``size_divisible``) wide."""
        if (spatial_dims, context) != (self.spatial_dims, self.context):
            raise ValueError(
                f"{type(self).__name__} runs {self.spatial_dims}-D networks with {self.context} slice(s) as "
                f"channels; the network is {spatial_dims}-D with {context} input channel(s)."
            )
        if any(0 < r < size_divisible for r in self.roi_size):
            # smaller windows are padded up to one down-sampling block: no context, empty output
            raise ValueError(
                f"roi_size {self.roi_size}: windows under {size_divisible} voxels are too small for this "
                "network (-1 = whole slices)."
            )

    def run_planes(self, depth: int, reuse_first: bool = False) -> list[int] | None:
        """Indices of the planes the network runs on, for a block that returns ``depth`` planes
        (``None``: all of them). Slice-wise inferers run every ``plane_stride``-th plane and the last.
        ``reuse_first``: the first plane's probabilities are given (``first`` of :meth:`__call__`), so
        that plane is left out."""
        run = strided_planes(depth, self.plane_stride) if self.slice_wise else None
        if reuse_first:
            run = (run or list(range(depth)))[1:]
        return run

    # ------------------------------------------------------------------ inference
    def sliding_window(self, window: Sequence[int], batch_size: int, sw_device: torch.device) -> Inferer:
        """MONAI's inferer for one block."""
        raise NotImplementedError

    def __call__(  # type: ignore[override]
        self,
        inputs: torch.Tensor,
        network: Callable[[torch.Tensor], torch.Tensor],
        planes: tuple[int, int] | None = None,
        first: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Probabilities ``(1, C, Z', Y, X)`` of a block ``(1, 1, Z, Y, X)``.

        Args:
            inputs: the normalised block.
            network: window batch ``(B, k, *roi)`` -> probabilities ``(B, C, *roi)``.
            planes: ``(start, stop)``: return only these planes, the others being context (default all).
            first: slice-wise inferers only: the probabilities ``(1, C, Y, X)`` of the first plane returned,
                already predicted (the last plane of the previous slab); it is not predicted again, and
                the planes up to the next predicted one are interpolated from it.
        """
        x = self.prepare(inputs)
        if first is not None and not self.slice_wise:
            raise ValueError(f"{type(self).__name__} blends its slabs' halos: it cannot reuse a plane.")
        if planes is not None and self.slice_wise:  # the context is in the channels now
            x, planes = x[:, :, planes[0] : planes[1]], None
        predicted = strided_planes(x.shape[2], self.plane_stride) if self.slice_wise else None
        run = self.run_planes(x.shape[2], reuse_first=first is not None)
        if run is not None:
            x = x[:, :, run]
        probs = None
        if x.shape[2]:
            sw_device = self.sw_device or torch.device(getattr(network, "device", x.device))
            window = self.window(x.shape[2:])
            probs = self.sliding_window(window, self.batch_size(window, sw_device), sw_device)(x, network)
            probs = torch.as_tensor(probs)
        if first is not None:
            known = first[:, :, None].to(device=self.device, dtype=torch.float32)
            probs = known if probs is None else torch.cat([known, probs.to(known.dtype)], dim=2)
        if predicted is not None:
            probs = interpolate_planes(probs, predicted)
        return probs if planes is None else probs[:, :, planes[0] : planes[1]]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(roi_size={self.roi_size}, overlap={self.overlap}, "
            f"sw_batch_size={self.sw_batch_size}, mode={self.mode!r}, context={self.context}"
            + (f", plane_stride={self.plane_stride})" if self.plane_stride > 1 else ")")
        )


def strided_planes(depth: int, stride: int) -> list[int] | None:
    """Planes ``0, s, 2s, ...`` and the last of a block of ``depth`` planes; ``None`` when that is all."""
    if stride <= 1 or depth <= 2:
        return None
    planes = list(range(0, depth, stride))
    if planes[-1] != depth - 1:
        planes.append(depth - 1)
    return planes


def interpolate_planes(probs: torch.Tensor, planes: Sequence[int]) -> torch.Tensor:
    """Probabilities ``(B, C, planes[-1] + 1, *S)`` from those of ``planes`` ``(B, C, len(planes), *S)``
    (increasing, from 0): linear along z between predicted planes, so every plane still sums to one."""
    b, c, _, *spatial = probs.shape
    out = probs.new_empty((b, c, planes[-1] + 1, *spatial))
    for i, (lo, hi) in enumerate(zip(planes[:-1], planes[1:])):
        out[:, :, lo] = probs[:, :, i]
        for z in range(lo + 1, hi):
            out[:, :, z] = torch.lerp(probs[:, :, i], probs[:, :, i + 1], (z - lo) / (hi - lo))
    out[:, :, planes[-1]] = probs[:, :, -1]
    return out


class SliceInferer2D(TomogramInferer):
    """A 2-D network over every ``(Y, X)`` slice of the block (MONAI ``SliceInferer`` along z): windows
    of ``roi_size`` (``(-1, -1)`` = whole slices), several slices or windows per forward pass. No halo.

    Args:
        plane_stride: predict every ``s``-th plane (and the last) of a block and interpolate the
            probabilities between linearly: about ``1/s`` of the compute. Features smear along z over
            several planes (missing wedge), so ``2`` costs little accuracy; measured in docs/inference.md.
        kwargs: :class:`TomogramInferer`.
    """

    spatial_dims = 2

    def __init__(
        self, roi_size: Sequence[int] | int = (-1, -1), plane_stride: int = 1, **kwargs: Any
    ) -> None:
        super().__init__(roi_size, **kwargs)
        if int(plane_stride) < 1:
            raise ValueError(f"plane_stride must be >= 1, got {plane_stride!r}.")
        self.plane_stride = int(plane_stride)

    def slab_depth(self, depth: int, slab_size: int) -> int:
        # a slab of m * s + 1 planes predicts every s-th plane with both ends exact; the segmenter
        # starts the next slab on its last plane and reuses that plane's prediction, so every s-th
        # plane of the tomogram is predicted once
        s = self.plane_stride
        return slab_size if s == 1 else max(1, round((slab_size - 1) / s)) * s + 1

    @property
    def halo(self) -> int:
        return self.context // 2

    @property
    def planar(self) -> bool:
        return self.context == 1

    @property
    def probe_halo(self) -> int:
        # the central slice and the slices its context reaches
        return self.context // 2 + 1

    def sliding_window(self, window: Sequence[int], batch_size: int, sw_device: torch.device) -> Inferer:
        return SliceInferer(
            spatial_dim=0, roi_size=list(window), sw_batch_size=batch_size, overlap=self.overlap,
            mode=self.mode, sw_device=sw_device, device=self.device,
        )  # fmt: skip


class SliceStackInferer(SliceInferer2D):
    """A 2.5-D network: each slice with its ``k // 2`` neighbours either side as ``k`` channels
    (``(1, 1, Z, Y, X)`` -> ``(1, k, Z, Y, X)``, the first and last slices repeated beyond the volume),
    then slice by slice as :class:`SliceInferer2D`. A slab's halo of ``k // 2`` planes is context only.

    Args:
        context: ``k``, the network's ``in_channels`` (odd).
        kwargs: :class:`TomogramInferer`.
    """

    def __init__(self, context: int = 5, roi_size: Sequence[int] | int = (-1, -1), plane_stride: int = 1,
                 **kwargs: Any) -> None:
        super().__init__(roi_size, plane_stride, **kwargs)
        self.stack_slices = StackSlices(int(context))  # refuses an even k
        self.context = int(context)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return self.stack_slices(x)


class WindowInferer3D(TomogramInferer):
    """A 3-D network over ``(Z, Y, X)`` windows (MONAI ``SlidingWindowInferer``). Slabs overlap by a
    z-halo of half the window depth, predicted and blended between neighbours by the segmenter; a window
    spanning the whole depth (``roi_size[0] <= 0``) makes the tomogram one slab.
    Arguments: :class:`TomogramInferer`."""

    spatial_dims = 3
    slice_wise = False

    def __init__(self, roi_size: Sequence[int] | int = (32, 128, 128), **kwargs: Any) -> None:
        super().__init__(roi_size, **kwargs)

    @property
    def halo(self) -> int:
        return 0 if self.roi_size[0] <= 0 else (self.roi_size[0] + 1) // 2

    def slab_depth(self, depth: int, slab_size: int) -> int:
        return depth if self.roi_size[0] <= 0 else slab_size

    def sliding_window(self, window: Sequence[int], batch_size: int, sw_device: torch.device) -> Inferer:
        return SlidingWindowInferer(
            roi_size=list(window), sw_batch_size=batch_size, overlap=self.overlap, mode=self.mode,
            sw_device=sw_device, device=self.device,
        )  # fmt: skip


def default_inferer(network: nn.Module, **kwargs: Any) -> TomogramInferer:
    """The inferer for a network's kind (:func:`network_kind`): :class:`WindowInferer3D` for 3-D,
    :class:`SliceStackInferer` for 2-D networks with ``k > 1`` input channels, else
    :class:`SliceInferer2D`; ``kwargs`` are its arguments (``roi_size``, ``overlap``, ...)."""
    spatial_dims, context = network_kind(network)
    if spatial_dims == 3:
        return WindowInferer3D(**kwargs)
    if context > 1:
        return SliceStackInferer(context, **kwargs)
    return SliceInferer2D(**kwargs)
