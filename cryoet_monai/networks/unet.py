"""The paper's U-Net (Zhao & Zhou), built from MONAI blocks, in 2-D (the paper) or 3-D.

The layout follows the paper's PyTorch port of https://github.com/zhixuhao/unet:

* encoder level ``k``: (2x2 max-pool, except level 0) -> double conv (3x3 conv -> norm -> act, twice)
  with ``features[k]`` channels; dropout on the outputs of ``dropout_levels`` (the 256- and
  512-channel levels by default), before they are pooled and used as skip connections;
* decoder level ``k`` (deepest first): x2 linear up-sampling (``align_corners=True``) -> 3x3 conv
  halving the channels (-> act) -> concat ``[skip, up]`` -> double conv with ``features[k]`` channels;
* 1x1 conv to ``out_channels`` logits (no softmax: the losses take logits).

The network can be compiled with ``torch.jit.script`` (and so exported with
``python -m monai.bundle ckpt_export`` without ``--use_trace``); the scripted module has the same
state-dict keys and computes the same function.

At the default widths ``(64, 128, 256, 512, 1024)`` in 2-D the network has 34,524,294 parameters.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.networks.blocks import Convolution, UpSample
from monai.networks.layers.factories import Conv, Dropout, Pool

__all__ = ["PaperUNet", "DoubleConv", "UpConcat", "InputSizeError"]

_LINEAR_MODES = ("linear", "bilinear", "trilinear")


class InputSizeError(ValueError):
    """The spatial size of a network input is not a multiple of the network's ``size_divisible``."""


class DoubleConv(nn.Sequential):
    """Two 3x3(x3) convolutions, each followed by normalisation and activation."""

    def __init__(
        self, spatial_dims: int, in_chns: int, out_chns: int, act: str | tuple, norm: str | tuple, bias: bool
    ):
        """
        Args:
            spatial_dims: number of spatial dimensions (2 or 3).
            in_chns: number of input channels.
            out_chns: number of output channels.
            act: activation type and arguments (MONAI ``Act`` factory).
            norm: feature normalisation type and arguments (MONAI ``Norm`` factory).
            bias: whether the convolutions have a bias term.
        """
        super().__init__()
        self.add_module("conv_0", Convolution(spatial_dims, in_chns, out_chns, act=act, norm=norm, bias=bias))
        self.add_module(
            "conv_1", Convolution(spatial_dims, out_chns, out_chns, act=act, norm=norm, bias=bias)
        )


# torch >= 2.13 deprecates TorchScript and warns on defining an interface; defining one must not warn
# on import (as in MONAI's DiNTS, monai/networks/nets/dints.py)
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)

    @torch.jit.interface
    class _DecoderBlock(nn.Module):
        """TorchScript interface of :class:`UpConcat`: lets scripted code index a ``ModuleList`` of them
        with a loop variable (TorchScript otherwise accepts only integer literals as indices)."""

        def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
            """``(B, in_chns, *S)``, ``(B, skip_chns, *2S)`` -> ``(B, out_chns, *2S)``."""
            pass


class UpConcat(nn.Module):
    """Up-sample x2, convolve to ``out_chns``, concatenate ``[skip, up]`` and apply a :class:`DoubleConv`."""

    def __init__(
        self,
        spatial_dims: int,
        in_chns: int,
        skip_chns: int,
        out_chns: int,
        act: str | tuple,
        norm: str | tuple,
        bias: bool,
        upsample: str = "bilinear",
    ):
        """
        Args:
            spatial_dims: number of spatial dimensions (2 or 3).
            in_chns: channels of the deeper feature map to be up-sampled.
            skip_chns: channels of the encoder feature map (skip connection).
            out_chns: output channels (also the channels of the up-sampled map before concatenation).
            act: activation type and arguments.
            norm: normalisation type and arguments (used in the double conv, as in the paper).
            bias: whether the convolutions have a bias term.
            upsample: ``"bilinear"``/``"linear"``/``"trilinear"`` (linear interpolation in any dimension,
                ``align_corners=True``, then a 3x3 conv), ``"nearest"`` (then a 3x3 conv) or ``"deconv"``
                (a learned 2x2 transposed convolution instead of interpolation + conv).
        """
        super().__init__()
        if upsample == "deconv":
            self.upsample: nn.Module = UpSample(
                spatial_dims, in_chns, out_chns, scale_factor=2, mode="deconv"
            )
        elif upsample in _LINEAR_MODES or upsample == "nearest":
            interp = "linear" if upsample in _LINEAR_MODES else "nearest"
            self.upsample = nn.Sequential(
                UpSample(
                    spatial_dims,
                    in_chns,
                    in_chns,
                    scale_factor=2,
                    mode="nontrainable",
                    pre_conv=None,
                    interp_mode=interp,
                    align_corners=True if interp == "linear" else None,
                ),
                # the paper's up-convolution: conv + activation, no normalisation
                Convolution(spatial_dims, in_chns, out_chns, act=act, norm=None, bias=bias),
            )
        else:
            raise ValueError(
                f"upsample must be one of {(*_LINEAR_MODES, 'nearest', 'deconv')}, got {upsample!r}."
            )
        self.convs = DoubleConv(spatial_dims, skip_chns + out_chns, out_chns, act, norm, bias)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: deeper features ``(B, in_chns, *S)``.
            skip: encoder features ``(B, skip_chns, *2S)``.

        Returns:
            ``(B, out_chns, *2S)``.
        """
        return self.convs(torch.cat([skip, self.upsample(x)], dim=1))


class PaperUNet(nn.Module):
    """The paper's U-Net for multi-class segmentation of cryo-ET slices (2-D) or sub-volumes (3-D).

    Input ``(B, in_channels, H, W)`` (2-D) or ``(B, in_channels, D, H, W)`` (3-D) with every spatial size a
    multiple of :attr:`size_divisible` (``2 ** (len(features) - 1)`` = 16 by default); output logits
    ``(B, out_channels, ...)`` of the same spatial size.

    Example::

        net = PaperUNet(spatial_dims=2, in_channels=1, out_channels=6)
        logits = net(torch.randn(4, 1, 512, 512))  # (4, 6, 512, 512)

    All constructor arguments are JSON-friendly, so a bundle config can build it with
    ``{"_target_": "cryoet_monai.PaperUNet", "spatial_dims": 2, "features": [32, 64, 128, 256, 512]}``.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 6,
        features: Sequence[int] = (64, 128, 256, 512, 1024),
        dropout: float = 0.5,
        dropout_levels: Sequence[int] = (2, 3),
        norm: str | tuple = "batch",
        act: str | tuple = "relu",
        bias: bool = True,
        upsample: str = "bilinear",
    ):
        """
        Args:
            spatial_dims: 2 (the paper: slices) or 3 (sub-volumes; trilinear up-sampling, Dropout3d).
            in_channels: input channels (1 for a tomogram; more for stacked neighbouring slices).
            out_channels: number of classes (6: background + five features).
            features: channels of each encoder level, shallowest first; ``len(features) - 1`` is the
                number of poolings (the depth). The paper uses ``(64, 128, 256, 512, 1024)``.
            dropout: channel-dropout probability (Dropout2d / Dropout3d) at ``dropout_levels``; 0 disables it.
            dropout_levels: indices into ``features`` of the encoder levels whose outputs get dropout.
            norm: normalisation after each conv of the double convs, e.g. ``"batch"``, ``"instance"``,
                ``("group", {"num_groups": 8})`` or ``None``.
            act: activation, e.g. ``"relu"`` or ``("leakyrelu", {"negative_slope": 0.1})``.
            bias: whether convolutions have a bias term (the paper's do).
            upsample: ``"bilinear"`` (linear interpolation in 2-D or 3-D, the paper), ``"nearest"`` or
                ``"deconv"``; see :class:`UpConcat`.
        """
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        features = tuple(int(f) for f in features)
        if len(features) < 2 or min(features) < 1:
            raise ValueError(f"features needs at least two positive channel counts, got {features}.")
        levels = tuple(int(level) for level in dropout_levels)
        if any(not 0 <= level < len(features) for level in levels):
            raise ValueError(f"dropout_levels {levels} must index features (0..{len(features) - 1}).")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}.")

        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.features = features
        #: the bundle-config definition this network was built from (model folders write it out;
        #: TorchScript leaves the attribute out of scripted modules)
        self.definition: dict = {
            "_target_": "cryoet_monai.PaperUNet", "spatial_dims": spatial_dims, "in_channels": in_channels,
            "out_channels": out_channels, "features": list(features), "dropout": dropout,
            "dropout_levels": list(dropout_levels), "norm": norm, "act": act, "bias": bias,
            "upsample": upsample,
        }  # fmt: skip
        depth = len(features) - 1
        # every spatial size must survive `depth` exact halvings
        self.size_divisible: int = 2**depth

        self.encoder = nn.ModuleList()
        self.encoder_dropout = nn.ModuleList()
        for k, chns in enumerate(features):
            block = DoubleConv(
                spatial_dims, in_channels if k == 0 else features[k - 1], chns, act, norm, bias
            )
            if k > 0:
                block = nn.Sequential(Pool["MAX", spatial_dims](kernel_size=2), block)
            self.encoder.append(block)
            use_dropout = dropout > 0 and k in levels
            self.encoder_dropout.append(
                Dropout["dropout", spatial_dims](p=dropout) if use_dropout else nn.Identity()
            )

        # decoder_blocks[k] produces level k (features[k] channels) from level k + 1
        self.decoder = nn.ModuleList(
            UpConcat(spatial_dims, features[k + 1], features[k], features[k], act, norm, bias, upsample)
            for k in range(depth)
        )
        self.final_conv = Conv["conv", spatial_dims](features[0], out_channels, kernel_size=1)

    @torch.jit.unused
    def _check_input(self, x: torch.Tensor) -> None:
        """Raise :class:`InputSizeError` unless ``x`` is ``(B, in_channels, *S)`` with ``S`` divisible by
        :attr:`size_divisible` (eager mode only)."""
        if x.ndim != self.spatial_dims + 2:
            raise InputSizeError(
                f"PaperUNet(spatial_dims={self.spatial_dims}) expects a "
                f"(B, C, {'D, ' * (self.spatial_dims - 2)}H, W) tensor, got shape {tuple(x.shape)}."
            )
        if x.shape[1] != self.in_channels:
            raise InputSizeError(
                f"PaperUNet expects {self.in_channels} input channel(s), got shape {tuple(x.shape)}."
            )
        bad = [s for s in x.shape[2:] if s % self.size_divisible]
        if bad:
            raise InputSizeError(
                f"PaperUNet spatial sizes must be multiples of {self.size_divisible}, "
                f"got {tuple(x.shape[2:])}; "
                "pad the input (e.g. monai.transforms.DivisiblePad) first."
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: ``(B, in_channels, H, W)`` or ``(B, in_channels, D, H, W)``, spatial sizes divisible by
                :attr:`size_divisible`.

        Returns:
            logits ``(B, out_channels, ...)`` with the spatial size of ``x``.
        """
        # shape checks are Python-side; skip them while scripting/tracing/compiling so graphs stay
        # shape-generic (`is_scripting()` is resolved when compiling: the branch is not scripted)
        if not torch.jit.is_scripting():
            if not (torch.jit.is_tracing() or torch.compiler.is_compiling()):
                self._check_input(x)
        skips: list[torch.Tensor] = []
        for block, drop in zip(self.encoder, self.encoder_dropout):
            x = drop(block(x))
            skips.append(x)
        x = skips.pop()
        if torch.jit.is_scripting():
            # TorchScript iterates a ModuleList forwards only and indexes it with literals only, except
            # through a module interface: run the same blocks, deepest first, by index
            for k in range(len(self.decoder) - 1, -1, -1):
                up: _DecoderBlock = self.decoder[k]
                x = up.forward(x, skips[k])
        else:
            for up in reversed(self.decoder):
                x = up(x, skips.pop())
        return self.final_conv(x)
