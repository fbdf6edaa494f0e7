"""The per-window predictor used inside MONAI's sliding-window inferers.

:class:`WindowPredictor` turns a network that returns logits for inputs whose spatial sizes are
multiples of ``size_divisible`` into a function ``(B, 1, *S) -> (B, C, *S)`` of class
probabilities for *any* window size: it pads, runs the network under autocast (reusing
:class:`cryoet_monai.engines.inferers.AutocastInferer`), applies an fp32 softmax, optionally
averages in-plane test-time augmentations, and crops back.

Probabilities (not logits) are what the sliding-window inferer blends, what the TTA averages and
what the uncertainty map is computed from.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.inferers import SimpleInferer
from monai.networks.blocks import ADN, Convolution
from torch.nn.utils.fusion import fuse_conv_bn_eval

from cryoet_monai.engines.inferers import AutocastInferer
from cryoet_monai.precision import resolve_autocast_dtype

__all__ = ["WindowPredictor", "fold_batch_norm", "resolve_autocast_dtype", "tta_transforms"]

# the batch norms (and convolutions) `fold_batch_norm` folds: every eval-mode batch norm is an affine map
_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def fold_batch_norm(network: nn.Module) -> nn.Module:
    """A copy of ``network`` with eval-mode batch norms folded into the convolutions before them.

    Applies to MONAI :class:`~monai.networks.blocks.Convolution` blocks whose ``adn`` starts with the
    norm (the default ``"NDA"`` ordering), as in :class:`cryoet_monai.PaperUNet`. The result computes the
    same function in eval mode with one pass less over every activation (and one activation buffer
    less); other layers are left as they are. The input network is not modified.
    """
    network = copy.deepcopy(network).eval()
    for module in network.modules():
        # a Convolution is the Sequential (conv[, ADN]) and an ADN the Sequential of its layers in
        # `adn_ordering`: the norm comes right after the conv when it is the ADN's first layer
        if not isinstance(module, Convolution) or len(module) < 2:
            continue
        conv, adn = module[0], module[1]
        if (
            isinstance(conv, _CONVS)
            and isinstance(adn, ADN)
            and len(adn) > 0
            and isinstance(adn[0], _BATCH_NORMS)
            and adn[0].track_running_stats
        ):
            module[0] = fuse_conv_bn_eval(conv, adn[0])
            adn[0] = nn.Identity()
    return network


def tta_transforms(n: int) -> list[tuple[int, bool]]:
    """The first ``n`` (1..8) elements of the dihedral group of the (Y, X) plane as ``(k90, flip)``.

    In-plane flips and 90-degree rotations keep the missing wedge (along z) where it is, so a model
    trained on tomograms sees realistic inputs. Order: identity, flip-X, rot90, rot180, rot270 and the
    remaining flipped rotations.
    """
    group = [(0, False), (0, True), (1, False), (2, False), (3, False), (1, True), (2, True), (3, True)]
    if not 1 <= n <= len(group):
        raise ValueError(f"the number of TTA transforms must be in 1..8, got {n}.")
    return group[:n]


class WindowPredictor:
    """Class probabilities of a logits network for windows of any spatial size.

    Args:
        network: maps ``(B, 1, *S)`` to logits ``(B, C, *S)``; its ``size_divisible`` attribute (default
            16) says which multiple the spatial sizes must have.
        device: device of the network; windows are moved there.
        autocast_dtype: ``None`` for fp32, else the autocast dtype (bf16/fp16).
        channels_last: run with channels-last activations (faster oneDNN/cuDNN convolutions).
        tta: number of in-plane test-time augmentations averaged (1 = none, 8 = full dihedral group).

    Calling it with ``x`` of shape ``(B, 1, *S)`` returns float32 probabilities ``(B, C, *S)``
    on ``x``'s device.
    """

    def __init__(
        self,
        network: nn.Module,
        device: torch.device,
        autocast_dtype: torch.dtype | None = None,
        channels_last: bool = True,
        tta: int = 1,
    ) -> None:
        self.network = network
        self.device = device
        self.size_divisible = int(getattr(network, "size_divisible", 16))
        self.transforms = tta_transforms(tta)
        self.inferer = AutocastInferer(
            SimpleInferer(),
            device_type=device.type,
            dtype=autocast_dtype,
            enabled=autocast_dtype is not None,
            channels_last=channels_last,
        )

    def _probs(self, x: torch.Tensor) -> torch.Tensor:
        # softmax in fp32: bf16 probabilities would carry only ~3 significant digits
        return torch.softmax(self.inferer(x, self.network).float(), dim=1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out_device = x.device
        x = x.to(self.device, non_blocking=True)
        spatial = x.shape[2:]
        k = self.size_divisible
        pads: list[int] = []
        for s in reversed(spatial):  # F.pad wants the last dimension first
            pads += [0, (-s) % k]
        if any(pads):
            # zero = the mean of the normalised tomogram, like the sliding window's own padding
            x = F.pad(x, pads, mode="constant", value=0.0)
        probs: torch.Tensor | None = None
        for k90, flip in self.transforms:
            xt = torch.rot90(x, k90, dims=(-2, -1)) if k90 else x
            xt = xt.flip(-1) if flip else xt
            p = self._probs(xt)
            p = p.flip(-1) if flip else p
            p = torch.rot90(p, -k90, dims=(-2, -1)) if k90 else p
            probs = p if probs is None else probs.add_(p)
        assert probs is not None
        if len(self.transforms) > 1:
            probs /= len(self.transforms)
        crop = (slice(None), slice(None), *(slice(0, s) for s in spatial))
        return probs[crop].to(out_device)
