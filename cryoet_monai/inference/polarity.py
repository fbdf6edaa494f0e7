"""Contrast polarity from the image itself: is dense material dark (raw reconstruction) or bright?

In a raw reconstruction the specimen's dense material (protein, membranes, carbon, gold) is darker
than the vitreous ice around it, and it fills a minority of the volume: the intensity distribution,
low-pass filtered, has a long *dark* tail. :class:`DenseContrastSkewness` measures that tail as the
skewness of block means (blocks of ``block`` Å, about the scale below the first CTF zero, where the
phase contrast of dense objects is dark at any defocus we see): negative for dense-dark data,
positive once a pipeline has inverted it. Per-voxel noise (SNR 0.05-0.5) is symmetric and averages
out in the blocks.

The network's own confidence (:meth:`TomogramSegmenter.polarity`) is the second judge, asked only
when the skewness is too small to decide: images with little dense material, or renderings whose
low frequencies have been filtered away.

* Cost: a central slab of ``layers`` blocks along z, at most ``max_blocks`` blocks along y and x,
  read once, a few planes per read (at 10 Å, 32 planes of a 630² tomogram: 50 MB of float32).
* ``decisive`` 0.25: on the 40 tomograms it was chosen on (training-style synthetic tomograms,
  seed 9 of ``configs/transfer.json``, none of the evaluation seeds) the skewness lay between
  -6.0 and -0.41; 0.25 is well outside the block means' sampling noise (standard error
  ``sqrt(6 / n_blocks)``, 0.016 at 10 Å for 630²) and below every training value.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

__all__ = ["DenseContrastSkewness", "PolarityDecision"]


@dataclass(frozen=True)
class PolarityDecision:
    """How a tomogram's contrast polarity was settled (recorded in the segmentation summary).

    Args:
        inverted: True when dense material is bright (the data are negated before the network).
        decided_by: ``"image"`` (the skewness cue), ``"model"`` (the network's confidence) or
            ``"given"`` (``invert`` fixed by the user).
        skewness: the cue's value, ``None`` where it was not measured.
        confidence: the network's mean maximum class probability ``(as is, inverted)``, ``None``
            where the network was not asked.
    """

    inverted: bool
    decided_by: str
    skewness: float | None = None
    confidence: tuple[float, float] | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready ``{"decided_by", "skewness", "confidence"}`` (``inverted`` has its own key)."""
        return {"decided_by": self.decided_by, "skewness": self.skewness,
                "confidence": None if self.confidence is None else list(self.confidence)}


@dataclass(frozen=True)
class DenseContrastSkewness:
    """Skewness of the block means of a tomogram's central slab, and the polarity it implies.

    Args:
        block: edge of the averaging blocks (Å).
        layers: blocks along z in the central slab (fewer when the tomogram is thinner).
        max_blocks: blocks along y and x at most (a central square beyond that).
        decisive: the magnitude of skewness that decides on its own.
        min_blocks: fewer blocks than this (a small crop) never decide.
    """

    block: float = 80.0
    layers: int = 4
    max_blocks: int = 512
    decisive: float = 0.25
    min_blocks: int = 64
    READ_VOXELS: ClassVar[int] = 1 << 26

    def slab_planes(self, depth: int, voxel_size: Sequence[float]) -> tuple[int, int]:
        """``(z0, z1)``: the planes of a ``depth``-plane tomogram that :meth:`measure` reads."""
        bz = min(self.block_voxels(voxel_size)[0], depth)
        nbz = max(1, min(self.layers, depth // bz))
        z0 = (depth - nbz * bz) // 2
        return z0, z0 + nbz * bz

    def block_voxels(self, voxel_size: Sequence[float]) -> tuple[int, int, int]:
        """Voxels per block along (z, y, x) for a voxel size (Å), at least 1."""
        return tuple(max(1, round(self.block / float(v))) for v in voxel_size)  # type: ignore[return-value]

    def measure(self, volume: Any, voxel_size: Sequence[float]) -> float:
        """Skewness of the ``block``-Å block means of the central slab of ``volume`` ``(Z, Y, X)``
        (array-like, read a few planes at a time: the planes of :meth:`slab_planes`); 0.0 when the
        slab is constant or has fewer than ``min_blocks`` blocks."""
        _, by, bx = self.block_voxels(voxel_size)
        depth, ny, nx = volume.shape
        z0, z1 = self.slab_planes(depth, voxel_size)
        bz = min(self.block_voxels(voxel_size)[0], depth)
        nbz = (z1 - z0) // bz
        nby, nbx = (max(1, min(self.max_blocks, n // b)) for n, b in ((ny, by), (nx, bx)))
        by, bx = min(by, ny), min(bx, nx)
        if nbz * nby * nbx < self.min_blocks:
            return 0.0
        y0, x0 = (ny - nby * by) // 2, (nx - nbx * bx) // 2
        means = np.zeros((nbz, nby, nbx), dtype=np.float64)
        ys, xs = slice(y0, y0 + nby * by), slice(x0, x0 + nbx * bx)
        # several planes per read (chunked stores decompress a chunk per read), at most ~64 M voxels
        step = max(1, min(bz, self.READ_VOXELS // (nby * by * nbx * bx)))
        for layer in range(nbz):
            acc = np.zeros((nby * by, nbx * bx), dtype=np.float64)
            for z in range(z0 + layer * bz, z0 + (layer + 1) * bz, step):
                top = min(z + step, z0 + (layer + 1) * bz)
                acc += np.asarray(volume[z:top, ys, xs], dtype=np.float64).sum(axis=0)
            means[layer] = acc.reshape(nby, by, nbx, bx).mean(axis=(1, 3)) / bz
        centred = means - means.mean()
        std = float(np.sqrt(np.mean(centred**2)))
        if not math.isfinite(std) or std <= 0.0:
            return 0.0
        return float(np.mean(centred**3) / std**3)

    def decide(self, skewness: float) -> bool | None:
        """True: dense material bright (negate the data); False: dense dark; None: undecided."""
        if abs(skewness) < self.decisive:
            return None
        return skewness > 0.0
