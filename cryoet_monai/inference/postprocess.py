"""Label clean-up that streams over z-slabs: drop small connected components, per class.

A whole-volume ``scipy.ndimage.label`` needs an int32/int64 label array four to eight times the size
of the uint8 segmentation, which for big tomograms is more than the rest of inference uses. Here the
volume is labelled slab by slab; components that touch across a slab boundary are merged with a
union-find, so the result is exactly that of a whole-volume labelling (face connectivity).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from cryoet_monai.io.mrc import release_pages

__all__ = ["remove_small_components"]


class _UnionFind:
    """Union-find over integer ids 1..n (0 is background), with component sizes."""

    def __init__(self) -> None:
        self.parent = np.zeros(1, dtype=np.int64)
        self.size = np.zeros(1, dtype=np.int64)

    def add(self, sizes: np.ndarray) -> int:
        """Add components with the given voxel counts; returns the first new id."""
        first = len(self.parent)
        self.parent = np.concatenate([self.parent, np.arange(first, first + len(sizes), dtype=np.int64)])
        self.size = np.concatenate([self.size, sizes.astype(np.int64)])
        return first

    def find(self, i: int) -> int:
        root = i
        while self.parent[root] != root:
            root = int(self.parent[root])
        while self.parent[i] != root:  # path compression
            self.parent[i], i = root, int(self.parent[i])
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra
            self.size[ra] += self.size[rb]

    def component_sizes(self) -> np.ndarray:
        """Total size of the component that each id belongs to."""
        roots = np.array([self.find(i) for i in range(len(self.parent))], dtype=np.int64)
        return self.size[roots]


def _label_slab(block: np.ndarray, classes: Sequence[int]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Label each class of ``block`` (n, Y, X); returns slab-local ids (one id space for all classes,
    0 = unlabelled) and the voxel counts of the components, class by class."""
    ids = np.zeros(block.shape, dtype=np.int64)
    sizes: list[np.ndarray] = []
    offset = 0
    for c in classes:
        lab, n = ndimage.label(block == c)
        if n:
            mask = lab > 0
            ids[mask] = lab[mask] + offset
            sizes.append(np.bincount(lab[mask], minlength=n + 1)[1:])
            offset += n
    return ids, sizes


def remove_small_components(
    seg: np.ndarray,
    min_size: int | Sequence[int],
    slab: int = 16,
    num_classes: int = 6,
) -> np.ndarray:
    """Set voxels of connected components smaller than ``min_size`` voxels to background (0), in place.

    Args:
        seg: writable ``(Z, Y, X)`` integer label volume (e.g. the memory-mapped output file).
        min_size: minimum component size in voxels; an int for every foreground class, or one value per
            class (index = label; entry 0 is ignored). 0 keeps everything of that class.
        slab: number of z-slices labelled at a time (memory: about ``16 * slab * Y * X`` bytes).
        num_classes: labels ``1..num_classes-1`` are cleaned; other values are left untouched.

    Returns:
        voxel counts per label ``0..num_classes-1`` after the clean-up.
    """
    if seg.ndim != 3:
        raise ValueError(f"remove_small_components expects a (Z, Y, X) volume, got shape {seg.shape}.")
    if isinstance(min_size, (int, np.integer)):
        thresholds = [0] + [int(min_size)] * (num_classes - 1)
    else:
        thresholds = [int(v) for v in min_size]
        if len(thresholds) != num_classes:
            raise ValueError(f"min_size needs one value per class ({num_classes}), got {len(thresholds)}.")
    classes = [c for c in range(1, num_classes) if thresholds[c] > 0]
    depth = seg.shape[0]
    ranges = [(a, min(a + slab, depth)) for a in range(0, depth, slab)]
    counts = np.zeros(num_classes, dtype=np.int64)
    if not classes:
        for a, b in ranges:
            counts += np.bincount(np.asarray(seg[a:b]).ravel(), minlength=256)[:num_classes]
            release_pages(seg[a:b])
        return counts

    # pass 1: label slabs, merge components across slab boundaries
    uf = _UnionFind()
    firsts: list[int] = []
    previous_last: np.ndarray | None = None
    for a, b in ranges:
        block = np.array(seg[a:b])
        release_pages(seg[a:b])
        ids, sizes = _label_slab(block, classes)
        first = uf.add(np.concatenate(sizes) if sizes else np.zeros(0, np.int64))
        firsts.append(first)
        gid = np.where(ids > 0, ids + first - 1, 0)
        if previous_last is not None:
            # same class on both sides of the boundary (ids are per class, so equal class is implied
            # by both being labelled and the labels being equal)
            touch = (gid[0] > 0) & (previous_last > 0) & (block[0] == np.asarray(seg[a - 1]))
            if touch.any():
                pairs = np.unique(np.stack([previous_last[touch], gid[0][touch]], axis=1), axis=0)
                for p, q in pairs:
                    uf.union(int(p), int(q))
        previous_last = gid[-1].copy()
    total = uf.component_sizes()

    # pass 2: relabel (deterministically identical ids) and erase the small components
    keep_threshold = np.asarray(thresholds, dtype=np.int64)
    for (a, b), first in zip(ranges, firsts):
        block = np.array(seg[a:b])
        ids, _ = _label_slab(block, classes)
        gid = np.where(ids > 0, ids + first - 1, 0)
        small = (gid > 0) & (total[gid] < keep_threshold[np.minimum(block, num_classes - 1)])
        if small.any():
            block[small] = 0
            seg[a:b] = block
        release_pages(seg[a:b])
        counts += np.bincount(block.ravel(), minlength=256)[:num_classes]
    return counts
