"""The sample's extent along z: the planes of a tomogram that hold the specimen.

Reconstructions are often thicker than the lamella or ice slab in them; the planes above and below
hold only noise and back-projection streaks. Image statistics alone separate the two poorly (on
the benchmark tomogram the std of 8x8 block means is 0.10 inside the ice and 0.06 outside), so
:class:`SampleExtent` asks the model itself: it predicts single planes (with their z-context), from
each end of the tomogram inward, every ``spacing`` planes of the model's grid, and stops at the
first plane with foreground. The planes beyond the last empty probe are labelled background
without running the network over them.

* ``spacing`` 8 model planes (8 nm at 10 Å) is thinner than the smallest labelled object (a 20 nm
  ribosome; microtubules, membranes and the carbon film are larger still), so nothing labelled
  fits between two probes unseen.
* Cost: one plane per probe; a tomogram with sample in its first and last planes costs two.
* Reading: the probed planes lie outside the extent (except the two that hit), so a run still reads
  each plane about once: no extra pass over the file.
* When no probe finds anything the whole tomogram is segmented: a wrong voxel size or polarity
  must show as an all-background result (with its warning), not be hidden by the skip.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["SampleExtent"]


@dataclass(frozen=True)
class SampleExtent:
    """Find the planes ``[z0, z1)`` of a tomogram that hold the sample.

    Args:
        spacing: planes of the model's grid between two probes.
        min_foreground: fraction of a probed plane that must be foreground for it to hold sample
            (2e-4: 80 voxels of a 630² plane, a fifth of a ribosome's cross-section).
    """

    spacing: float = 8.0
    min_foreground: float = 2e-4

    def stride(self, z_scale: float = 1.0) -> int:
        """Input planes between probes, for a zoom ``z_scale`` from the input to the model's grid."""
        return max(1, math.floor(self.spacing / z_scale))

    def find(self, depth: int, foreground: Callable[[int], float],
             z_scale: float = 1.0) -> tuple[int, int, int]:
        """``(z0, z1, probes)``: the extent ``[z0, z1)`` and how many planes were probed.

        Args:
            depth: planes of the tomogram.
            foreground: fraction of plane ``z`` (input grid) the model labels foreground.
            z_scale: zoom from the input's z to the model's (model voxel size / input voxel size
                inverted, as :meth:`TomogramSegmenter.zoom_factors` gives it).
        """
        if depth < 1:
            return 0, 0, 0
        step = self.stride(z_scale)
        probes = list(range(0, depth, step))
        if probes[-1] != depth - 1:
            probes.append(depth - 1)
        seen: dict[int, bool] = {}

        def holds_sample(i: int) -> bool:
            z = probes[i]
            if z not in seen:
                seen[z] = foreground(z) >= self.min_foreground
            return seen[z]

        first = next((i for i in range(len(probes)) if holds_sample(i)), None)
        if first is None:  # nothing anywhere: segment it all (see the module docstring)
            return 0, depth, len(seen)
        last = next(i for i in reversed(range(first, len(probes))) if holds_sample(i))
        # the empty probes next to the hits stay inside: an object may reach up to them
        z0 = probes[first - 1] if first > 0 else 0
        z1 = probes[last + 1] + 1 if last + 1 < len(probes) else depth
        return z0, z1, len(seen)
