"""Structured channel pruning of a trained :class:`~cryoet_monai.networks.unet.PaperUNet`.

A narrower U-Net (fewer channels per level) runs in a fraction of the time: the convolutions'
cost grows with the square of the width. Training one from scratch costs a full training run;
starting it from the channels of a trained wider network that matter most and fine-tuning it
("network slimming", Liu et al. 2017, ICCV) starts it far ahead of a fresh one (for the shipped
2.5-D model pruned to width 16: training F1 0.49 after one epoch, against 0.12 from scratch; where it
ends is in docs/training.md). The importance of a channel is the magnitude of the batch-norm scale
that follows its convolution (``|gamma|``: a channel with a small scale barely reaches the next
layer); the one convolution without a norm (the up-convolution after interpolation) is ranked by
the L1 norm of its filters.

Channel sets of the U-Net (``F_k`` = ``features[k]``), each chosen on its own:

* encoder ``k``: the output of ``conv_0`` (internal) and of ``conv_1`` (the level's output: the
  skip connection, the next level's input and, at the deepest level, the decoder's input);
* decoder ``k``: the up-convolution's output, ``convs.conv_0`` (internal) and ``convs.conv_1``
  (the level's output, read by the next decoder level or the final 1x1 convolution);

and every consumer keeps the input channels of the kept producer channels (``convs.conv_0`` reads
``[skip, up]``: both sets, the second offset by the wider width).
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import chain

import torch
import torch.nn as nn
from monai.networks.blocks import Convolution

from cryoet_monai.networks.unet import DoubleConv, PaperUNet, UpConcat

__all__ = ["channel_importance", "prune_channels_into", "saved_features"]


def channel_importance(block: Convolution) -> torch.Tensor:
    """Importance ``(out_channels,)`` of each output channel of a MONAI ``Convolution`` block: the
    absolute scale of its normalisation when it has one with a learned scale, else the L1 norm of
    each filter (``conv.weight`` summed over input channels and the kernel)."""
    norm = _norm_of(block)
    if norm is not None and getattr(norm, "weight", None) is not None:
        return norm.weight.detach().abs().float()
    return block.conv.weight.detach().abs().float().flatten(1).sum(1)


def _norm_of(block: Convolution) -> nn.Module | None:
    adn = getattr(block, "adn", None)
    return None if adn is None else getattr(adn, "N", None)


def _top(block: Convolution, keep: int) -> torch.Tensor:
    """The indices (ascending) of the ``keep`` most important output channels of ``block``."""
    score = channel_importance(block)
    return torch.sort(torch.topk(score, keep, sorted=False).indices).values


@torch.no_grad()
def _copy(source: Convolution, target: Convolution, in_idx: torch.Tensor, out_idx: torch.Tensor) -> None:
    """Copy ``source``'s parameters and norm statistics at ``(out_idx, in_idx)`` into ``target``."""
    weight = source.conv.weight.index_select(0, out_idx).index_select(1, in_idx)
    if target.conv.weight.shape != weight.shape:
        shapes = f"{tuple(weight.shape)} and {tuple(target.conv.weight.shape)}"
        raise ValueError(f"the pruned weight does not fit the target: {shapes}.")
    target.conv.weight.copy_(weight)
    if source.conv.bias is not None and target.conv.bias is not None:
        target.conv.bias.copy_(source.conv.bias.index_select(0, out_idx))
    src_norm, dst_norm = _norm_of(source), _norm_of(target)
    if src_norm is None or dst_norm is None:
        return
    state = chain(src_norm.named_parameters(recurse=False), src_norm.named_buffers(recurse=False))
    for name, tensor in state:
        value = getattr(dst_norm, name)
        if tensor.ndim == 0:  # num_batches_tracked
            value.copy_(tensor)
        else:
            value.copy_(tensor.index_select(0, out_idx))


def _double_conv(source: DoubleConv, target: DoubleConv, in_idx: torch.Tensor) -> torch.Tensor:
    """Prune a :class:`DoubleConv` reading channels ``in_idx``; returns the kept output channels."""
    mid = _top(source.conv_0, target.conv_0.conv.out_channels)
    _copy(source.conv_0, target.conv_0, in_idx, mid)
    out = _top(source.conv_1, target.conv_1.conv.out_channels)
    _copy(source.conv_1, target.conv_1, mid, out)
    return out


def _encoder_double_conv(block: nn.Module) -> DoubleConv:
    # level 0 is a DoubleConv; deeper levels are Sequential(pool, DoubleConv)
    return block if isinstance(block, DoubleConv) else block[1]


def saved_features(state: Mapping[str, torch.Tensor], depth: int) -> list[int]:
    """The ``features`` of a ``depth``-level :class:`PaperUNet` saved as ``state`` (its state dict):
    the output channels of each encoder level's last convolution.

    Raises:
        KeyError: ``state`` has no such level (the missing key is the error's argument).
    """
    keys = ["encoder.0.conv_1.conv.weight"] + [f"encoder.{k}.1.conv_1.conv.weight" for k in range(1, depth)]
    for key in keys:
        if key not in state:
            raise KeyError(key)
    return [int(state[key].shape[0]) for key in keys]


def _up_convolution(block: UpConcat) -> Convolution:
    # interpolating up-sampling: Sequential(UpSample without parameters, Convolution)
    return block.upsample[1]


def prune_channels_into(source: PaperUNet, target: PaperUNet) -> PaperUNet:
    """Fill the narrower ``target`` with the most important channels of the trained ``source``.

    Both networks must have the same definition apart from ``features`` (spatial dims, input and
    output channels, depth, norm, up-sampling), and every ``target.features[k] <=
    source.features[k]``. ``target`` is modified in place and returned; ``source`` is unchanged.
    With ``target.features == source.features`` the copy is exact.

    Raises:
        ValueError: the networks do not fit (the message says how).
    """
    if len(source.features) != len(target.features):
        raise ValueError(f"depths differ: source features {source.features}, target {target.features}.")
    if any(t > s for s, t in zip(source.features, target.features)):
        raise ValueError(f"target features {target.features} must not exceed the source's {source.features}.")
    same = ("spatial_dims", "in_channels", "out_channels", "norm", "act", "bias", "upsample")
    differ = [k for k in same if source.definition.get(k) != target.definition.get(k)]
    if differ:
        raise ValueError(f"source and target differ in {differ}; only features may differ.")
    if source.definition.get("upsample") == "deconv":
        raise ValueError(
            "channel pruning supports interpolating up-sampling ('bilinear', 'nearest'), "
            "not a transposed convolution ('deconv')."
        )

    level_out: list[torch.Tensor] = []
    in_idx = torch.arange(source.in_channels)
    for src_block, dst_block in zip(source.encoder, target.encoder):
        in_idx = _double_conv(_encoder_double_conv(src_block), _encoder_double_conv(dst_block), in_idx)
        level_out.append(in_idx)

    x_idx = level_out[-1]  # the deepest level feeds the decoder
    for k in range(len(source.decoder) - 1, -1, -1):
        src_up, dst_up = source.decoder[k], target.decoder[k]
        up_src, up_dst = _up_convolution(src_up), _up_convolution(dst_up)
        up_idx = _top(up_src, up_dst.conv.out_channels)
        _copy(up_src, up_dst, x_idx, up_idx)
        # convs.conv_0 reads torch.cat([skip, up]): the skip's channels, then the up-convolution's
        concat_idx = torch.cat([level_out[k], up_idx + source.features[k]])
        x_idx = _double_conv(src_up.convs, dst_up.convs, concat_idx)

    with torch.no_grad():
        target.final_conv.weight.copy_(source.final_conv.weight.index_select(1, x_idx))
        if source.final_conv.bias is not None:
            target.final_conv.bias.copy_(source.final_conv.bias)
    return target
