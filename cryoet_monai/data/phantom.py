"""Density phantoms of cellular cryo-ET scenes, drawn to physical scale (Å) on a voxel grid.

A :class:`Canvas` holds a density volume ``rho`` (float32, ``(Z, Y, X)``, scattering potential
relative to vitreous ice, protein ~ 1) and a label volume (uint8, the classes of
:data:`cryoet_monai.CLASS_NAMES`). Shapes are rasterised only where they are: small objects on
their own bounding box, large surfaces (membranes, films) on the 16³ blocks that the surface
crosses, so the cost follows the surface area, not the grid size.

Positions are in Å with voxel ``(i, j, k)`` centred at ``(i, j, k) * voxel_size``.
Densities are composited with ``max`` (objects do not add up where they touch); labels are
written in painting order, later objects over earlier ones.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Canvas", "Ellipsoid", "Sheet", "IceSlab", "random_rotation", "smooth_path"]

Coords = tuple[np.ndarray, np.ndarray, np.ndarray]
_BLOCK = 16  # voxels per block side for surface rasterisation


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random 3x3 rotation matrix (QR of a Gaussian matrix, sign-fixed)."""
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q *= np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _soft(u: np.ndarray, width: float) -> np.ndarray:
    """Anti-aliased step: 0 for ``u << 0``, 1 for ``u >> 0``, linear over one ``width``."""
    return np.clip(u / width + 0.5, 0.0, 1.0)


class Ellipsoid:
    """Ellipsoid surface: centre (Å, z y x), semi-axes (Å) and rotation (local -> world).

    ``sdf`` is the first-order signed distance ``(f - 1) / |grad f|`` with ``f = |q / a|``
    (exact for spheres, accurate within a few nm of the surface, which is all that is drawn).
    """

    def __init__(self, center: np.ndarray, axes: np.ndarray, rotation: np.ndarray):
        self.center = np.asarray(center, dtype=np.float64)
        self.axes = np.asarray(axes, dtype=np.float64)
        self.rotation = np.asarray(rotation, dtype=np.float64)

    @classmethod
    def through_point(
        cls, point: np.ndarray, axes: np.ndarray, rotation: np.ndarray, rng: np.random.Generator
    ) -> Ellipsoid:
        """An ellipsoid whose surface passes through ``point`` (so a large one still crosses the box)."""
        m = rng.standard_normal(3)
        m /= np.linalg.norm(m)
        s = m / np.linalg.norm(m / axes)  # local surface point in direction m
        return cls(np.asarray(point) - rotation @ s, axes, rotation)

    def bbox(self) -> tuple[np.ndarray, np.ndarray]:
        half = np.sqrt((self.rotation**2) @ (self.axes**2))  # extent of a rotated ellipsoid
        return self.center - half, self.center + half

    def sdf(self, z: np.ndarray, y: np.ndarray, x: np.ndarray, normals: bool = False):
        r = self.rotation.astype(np.float32)
        p = (z - self.center[0], y - self.center[1], x - self.center[2])
        a2 = (self.axes**2).astype(np.float32)
        # local coordinates q = R^T p
        q = [p[0] * r[0, i] + p[1] * r[1, i] + p[2] * r[2, i] for i in range(3)]
        f = np.sqrt(sum(qi * qi / ai for qi, ai in zip(q, a2)))
        g = [qi / ai for qi, ai in zip(q, a2)]  # grad of f^2 / 2 in local frame
        gn = np.sqrt(sum(gi * gi for gi in g)) + np.float32(1e-12)
        d = (f - 1.0) * f / gn
        if not normals:
            return d, None
        n = [(r[i, 0] * g[0] + r[i, 1] * g[1] + r[i, 2] * g[2]) / gn for i in range(3)]
        return d, n

    def sample_surface(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` random surface points (Å) and outward unit normals, both ``(n, 3)``."""
        m = rng.standard_normal((n, 3))
        m /= np.linalg.norm(m, axis=1, keepdims=True)
        s = m / np.linalg.norm(m / self.axes, axis=1, keepdims=True)
        g = s / self.axes**2
        g /= np.linalg.norm(g, axis=1, keepdims=True)
        return self.center + s @ self.rotation.T, g @ self.rotation.T


class Sheet:
    """A gently undulating sheet through ``point`` with mean ``normal`` (ER / nuclear envelope)."""

    def __init__(self, point, normal, amplitude: float, wavelengths: tuple[float, float], phases):
        self.point = np.asarray(point, dtype=np.float64)
        n = np.asarray(normal, dtype=np.float64)
        self.normal = n / np.linalg.norm(n)
        helper = np.array([1.0, 0.0, 0.0]) if abs(self.normal[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
        self.u = np.cross(self.normal, helper)
        self.u /= np.linalg.norm(self.u)
        self.v = np.cross(self.normal, self.u)
        self.amplitude = float(amplitude)
        self.k = (2 * math.pi / wavelengths[0], 2 * math.pi / wavelengths[1])
        self.phases = phases

    def bbox(self) -> tuple[np.ndarray, np.ndarray]:
        return np.full(3, -np.inf), np.full(3, np.inf)

    def _h(self, p):
        dot = lambda w: p[0] * np.float32(w[0]) + p[1] * np.float32(w[1]) + p[2] * np.float32(w[2])  # noqa: E731
        su, sv = self.k[0] * dot(self.u) + self.phases[0], self.k[1] * dot(self.v) + self.phases[1]
        return dot(self.normal), su, sv

    def sdf(self, z, y, x, normals: bool = False):
        p = (z - self.point[0], y - self.point[1], x - self.point[2])
        dn, su, sv = self._h(p)
        a = np.float32(self.amplitude)
        h = dn - a * np.sin(su) * np.cos(sv)
        # gradient = normal - a * (k_u cos(su) cos(sv) u - k_v sin(su) sin(sv) v)
        cu = a * self.k[0] * np.cos(su) * np.cos(sv)
        cv = -a * self.k[1] * np.sin(su) * np.sin(sv)
        g = [self.normal[i] - cu * self.u[i] - cv * self.v[i] for i in range(3)]
        gn = np.sqrt(g[0] ** 2 + g[1] ** 2 + g[2] ** 2)
        d = h / gn
        return d, ([gi / gn for gi in g] if normals else None)

    def sample_surface(
        self, rng: np.random.Generator, n: int, extent: float
    ) -> tuple[np.ndarray, np.ndarray]:
        a, b = rng.uniform(-extent, extent, (2, n))
        p = self.point + a[:, None] * self.u + b[:, None] * self.v
        rel = p - self.point
        su = self.k[0] * (rel @ self.u) + self.phases[0]
        sv = self.k[1] * (rel @ self.v) + self.phases[1]
        p = p + (self.amplitude * np.sin(su) * np.cos(sv))[:, None] * self.normal
        normals = np.repeat(self.normal[None], n, axis=0) * rng.choice([-1.0, 1.0], (n, 1))
        return p, normals


@dataclass
class IceSlab:
    """The vitreous ice layer (lamella): thickness, centre and small tilts; vacuum outside."""

    center_z: float
    thickness: float
    slope_y: float = 0.0
    slope_x: float = 0.0

    def surfaces(self, y: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mid = self.center_z + self.slope_y * y + self.slope_x * x
        return mid - self.thickness / 2, mid + self.thickness / 2

    def depth(self, z, y, x) -> np.ndarray:
        """Distance (Å) inside the slab (positive inside, negative outside), along z."""
        lo, hi = self.surfaces(y, x)
        return np.minimum(z - lo, hi - z)


@dataclass
class Canvas:
    """Density and label volumes being drawn, with the geometry needed to place objects."""

    shape: tuple[int, int, int]
    voxel_size: float
    rho: np.ndarray = field(init=False)
    label: np.ndarray = field(init=False)

    def __post_init__(self):
        self.shape = tuple(int(s) for s in self.shape)
        self.rho = np.zeros(self.shape, dtype=np.float32)
        self.label = np.zeros(self.shape, dtype=np.uint8)
        self.extent = np.asarray(self.shape, dtype=np.float64) * self.voxel_size

    # ---------------------------------------------------------------- geometry helpers
    def box(self, lo, hi) -> tuple[slice, slice, slice] | None:
        """Voxel slices covering the Å box ``[lo, hi]`` clipped to the grid (None when empty)."""
        vs = self.voxel_size
        sl = []
        for lo_i, hi_i, n in zip(lo, hi, self.shape):
            a = max(0, int(math.floor(lo_i / vs)) if np.isfinite(lo_i) else 0)
            b = min(n, int(math.ceil(hi_i / vs)) + 1 if np.isfinite(hi_i) else n)
            if a >= b:
                return None
            sl.append(slice(a, b))
        return tuple(sl)

    def coords(self, sl: tuple[slice, slice, slice]) -> Coords:
        vs = np.float32(self.voxel_size)
        z = np.arange(sl[0].start, sl[0].stop, dtype=np.float32) * vs
        y = np.arange(sl[1].start, sl[1].stop, dtype=np.float32) * vs
        x = np.arange(sl[2].start, sl[2].stop, dtype=np.float32) * vs
        return z[:, None, None], y[None, :, None], x[None, None, :]

    def blocks(
        self, lo, hi, sdf: Callable, band: float
    ) -> Iterator[tuple[tuple[slice, slice, slice], bool]]:
        """16³ blocks of the box ``[lo, hi]`` within ``band`` Å of a surface: ``(slices, inside)``.

        ``inside`` marks blocks entirely inside the surface (``sdf < -band`` everywhere), which
        need no per-voxel work; blocks entirely outside are skipped.
        """
        sl = self.box(lo, hi)
        if sl is None:
            return
        vs, b = self.voxel_size, _BLOCK
        starts = [np.arange(s.start, s.stop, b) for s in sl]
        ends = [np.minimum(st + b, s.stop) for st, s in zip(starts, sl)]
        cz, cy, cx = (((st + en - 1) / 2.0).astype(np.float32) * vs for st, en in zip(starts, ends))
        d, _ = sdf(cz[:, None, None], cy[None, :, None], cx[None, None, :])
        margin = band + 1.5 * math.sqrt(3) * b / 2 * vs  # 1.5: the sdf is only approximate far away
        near = np.argwhere(np.abs(d) <= margin)
        for i, j, k in near:
            yield (slice(starts[0][i], ends[0][i]), slice(starts[1][j], ends[1][j]),
                   slice(starts[2][k], ends[2][k])), False
        for i, j, k in np.argwhere(d < -margin):
            yield (slice(starts[0][i], ends[0][i]), slice(starts[1][j], ends[1][j]),
                   slice(starts[2][k], ends[2][k])), True

    def random_point(self, rng: np.random.Generator, slab: IceSlab | None, margin: float = 0.0,
                     tries: int = 50) -> np.ndarray:
        """A uniformly random point (Å) in the volume, inside the ice slab when given."""
        for _ in range(tries):
            p = rng.uniform(0, 1, 3) * (self.extent - self.voxel_size)
            if slab is None or slab.depth(p[0], p[1], p[2]) >= margin:
                return p
        return p

    # ---------------------------------------------------------------- painters
    def paint_membrane(
        self,
        shape,
        offsets: tuple[float, ...],
        label_value: int,
        half_thickness: float,
        leaflet_spacing: float,
        density: float = 1.0,
        fill: float = 0.0,
        visible: Callable[[list[np.ndarray]], np.ndarray] | None = None,
        tail_density: float = 0.0,
    ) -> int:
        """Draw one or more lipid bilayers parallel to ``shape``'s surface; returns labelled voxels.

        Each bilayer at signed offset ``o`` has two head-group leaflets (Gaussian peaks at
        ``o ± leaflet_spacing / 2``) and is labelled where ``|d - o| <= half_thickness`` and
        ``visible(normals)`` (the missing wedge hides membranes seen face-on). ``fill`` is a
        constant density for the interior beyond the innermost bilayer (mitochondrial matrix).
        ``tail_density`` (usually negative: hydrocarbon tails, 0.86 g/cm³, are lighter than
        vitreous ice) is a Gaussian trough between the two leaflets of each bilayer.
        """
        vs = self.voxel_size
        sigma = math.sqrt(5.0**2 + (0.4 * vs) ** 2)  # head-group width, widened to sample it without aliasing
        tail_sigma = math.sqrt((leaflet_spacing / 5) ** 2 + (0.4 * vs) ** 2)
        half = max(half_thickness, 0.55 * vs)
        band = max(abs(o) for o in offsets) + max(half, leaflet_spacing / 2 + 3 * sigma) + vs
        lo, hi = shape.bbox()
        inner = min(offsets) - half
        count = 0
        for sl, inside in self.blocks(lo, hi, shape.sdf, band):
            if inside:
                if fill > 0:
                    np.maximum(self.rho[sl], np.float32(fill), out=self.rho[sl])
                continue
            d, n = shape.sdf(*self.coords(sl), normals=visible is not None)
            dens = np.zeros(d.shape, np.float32)
            lab = np.zeros(d.shape, bool)
            for o in offsets:
                for s in (-leaflet_spacing / 2, leaflet_spacing / 2):
                    dens += np.exp(-0.5 * ((d - (o + s)) / sigma) ** 2)
                lab |= np.abs(d - o) <= half
            dens *= np.float32(density)
            if fill > 0:
                np.maximum(dens, np.float32(fill) * _soft(inner - d, vs), out=dens)
            if tail_density:
                # lipids displace what is under them: inside the bilayer the profile replaces the
                # density (max-compositing would hide the tail trough)
                core = np.zeros(d.shape, bool)
                for o in offsets:
                    dens += np.float32(tail_density) * np.exp(-0.5 * ((d - o) / tail_sigma) ** 2)
                    core |= np.abs(d - o) <= leaflet_spacing / 2
                self.rho[sl] = np.where(core, dens, np.maximum(self.rho[sl], dens))
            else:
                np.maximum(self.rho[sl], dens, out=self.rho[sl])
            if visible is not None and lab.any():
                lab &= visible(n)
            self.label[sl][lab] = label_value
            count += int(lab.sum())
        return count

    def paint_tube(
        self,
        path: np.ndarray,
        r_out: float,
        r_in: float,
        density: float,
        label_value: int | None,
        label_lumen: bool = True,
    ) -> int:
        """Draw a (hollow when ``r_in > 0``) tube along the polyline ``path`` ``(K, 3)`` Å.

        Each segment is drawn on its own bounding box, restricted to its slab of the axis, so a
        gently curved tube is drawn without a full-volume distance map. The label covers the
        whole cross-section (wall and lumen, as annotators paint microtubules) unless
        ``label_lumen`` is False (the wall only).
        """
        vs = self.voxel_size
        count = 0
        for a, b in zip(path[:-1], path[1:]):
            sl = self.box(np.minimum(a, b) - r_out - vs, np.maximum(a, b) + r_out + vs)
            if sl is None:
                continue
            z, y, x = self.coords(sl)
            v = (b - a).astype(np.float32)
            L2 = float(v @ v)
            pz, py, px = z - np.float32(a[0]), y - np.float32(a[1]), x - np.float32(a[2])
            t = (pz * v[0] + py * v[1] + px * v[2]) / L2
            eps = 0.5 * vs / math.sqrt(L2)
            keep = (t >= -eps) & (t <= 1 + eps)
            r = np.sqrt((pz - t * v[0]) ** 2 + (py - t * v[1]) ** 2 + (px - t * v[2]) ** 2)
            wall = _soft(r_out - r, vs)
            if r_in > 0:
                wall *= _soft(r - r_in, vs)
            dens = np.float32(density) * wall * keep
            np.maximum(self.rho[sl], dens, out=self.rho[sl])
            if label_value is not None:
                lab = keep & (r <= r_out)
                if not label_lumen:
                    lab &= r >= r_in
                self.label[sl][lab] = label_value
                count += int(lab.sum())
        return count

    def paint_blob(
        self,
        centers: np.ndarray,
        radii: np.ndarray,
        density: float,
        label_value: int | None,
        free_only: bool = False,
        overwrite: bool = False,
        densities: np.ndarray | None = None,
    ) -> int:
        """Draw a union of spheres ``centers (K, 3)``, ``radii (K,)`` Å as one object.

        With ``free_only`` the object is skipped (returns 0) when it would cover a labelled
        voxel; with ``overwrite`` its label also replaces earlier labels (otherwise 0-labelled
        objects, e.g. gold, clear the label under them). ``densities (K,)`` gives each sphere its
        own density (the max is taken where they overlap: small dense spheres inside a larger
        one make a lumpy interior), default ``density`` for all. Returns labelled voxels.
        """
        vs = self.voxel_size
        rmax = float(np.max(radii))
        sl = self.box(centers.min(0) - rmax - vs, centers.max(0) + rmax + vs)
        if sl is None:
            return 0
        z, y, x = self.coords(sl)
        sdf = None
        dens = None
        per = (np.full(len(radii), density, np.float32) if densities is None
               else np.asarray(densities, np.float32))
        for c, r, rho in zip(centers.astype(np.float32), radii, per):
            d = np.sqrt((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2) - np.float32(r)
            sdf = d if sdf is None else np.minimum(sdf, d)
            part = rho * _soft(-d, vs)
            dens = part if dens is None else np.maximum(dens, part)
        inside = sdf <= 0
        if free_only and (self.label[sl][inside] != 0).any():
            return 0
        if overwrite:
            self.rho[sl] = np.where(inside, dens, np.maximum(self.rho[sl], dens))
        else:
            np.maximum(self.rho[sl], dens, out=self.rho[sl])
        if label_value is not None:
            self.label[sl][inside] = label_value
        return int(inside.sum())

    def stamp_particles(self, rng: np.random.Generator, n: int, radius: float, density: float,
                        slab: IceSlab | None) -> None:
        """Scatter ``n`` small background particles (label 0) of one ``radius`` Å, vectorised.

        A single soft-sphere stamp is max-composited at all positions at once, one stamp voxel
        at a time, so thousands of particles cost a few hundred array operations.
        """
        if n <= 0:
            return
        vs = self.voxel_size
        rv = radius / vs
        h = int(math.ceil(rv + 0.5))
        g = np.arange(-h, h + 1, dtype=np.float32)
        dist = np.sqrt(g[:, None, None] ** 2 + g[None, :, None] ** 2 + g[None, None, :] ** 2)
        stamp = np.clip(rv - dist + 0.5, 0, 1) * np.float32(density)
        pos = (rng.uniform(0, 1, (n, 3)) * np.asarray(self.shape)).astype(np.int64)
        if slab is not None:
            pz, py, px = (pos * vs).T
            pos = pos[slab.depth(pz, py, px) > radius]
        amp = rng.uniform(0.6, 1.0, len(pos)).astype(np.float32)  # particles of different mass
        shape = np.asarray(self.shape)
        for off in np.argwhere(stamp > 0):
            q = pos + (off - h)
            ok = np.all((q >= 0) & (q < shape), axis=1)
            qz, qy, qx = q[ok].T
            val = stamp[tuple(off)] * amp[ok]
            self.rho[qz, qy, qx] = np.maximum(self.rho[qz, qy, qx], val)

    def apply_slab(self, slab: IceSlab, vacuum: float) -> None:
        """Cut everything outside the ice slab (lamella surfaces): vacuum density, label 0."""
        vs = self.voxel_size
        y = np.arange(self.shape[1], dtype=np.float32)[:, None] * np.float32(vs)
        x = np.arange(self.shape[2], dtype=np.float32)[None, :] * np.float32(vs)
        lo, hi = slab.surfaces(y, x)
        for iz in range(self.shape[0]):
            depth = np.minimum(iz * vs - lo, hi - iz * vs)
            if depth.min() > vs:
                continue
            w = _soft(depth, vs)
            self.rho[iz] = w * self.rho[iz] + (1 - w) * np.float32(vacuum)
            self.label[iz][depth < 0] = 0


def smooth_path(
    rng: np.random.Generator,
    start: np.ndarray,
    direction: np.ndarray,
    step: float,
    curvature_radius: float,
    lo: np.ndarray,
    hi: np.ndarray,
    max_length: float,
) -> np.ndarray:
    """A gently curved polyline through ``start``, grown both ways until it leaves ``[lo, hi]``.

    The direction turns by a random angle of ``step / curvature_radius`` per step (a worm-like
    chain), so ``curvature_radius`` (Å) sets how straight it is. Returns ``(K, 3)`` Å.
    """
    halves = []
    for sign in (1.0, -1.0):
        d = sign * direction / np.linalg.norm(direction)
        p = np.asarray(start, dtype=np.float64)
        pts, length = [], 0.0
        while length < max_length / 2 and np.all(p >= lo) and np.all(p <= hi):
            p = p + step * d
            pts.append(p)
            length += step
            d = d + rng.standard_normal(3) * (step / curvature_radius)
            d /= np.linalg.norm(d)
        halves.append(pts)
    return np.asarray(halves[1][::-1] + [np.asarray(start, dtype=np.float64)] + halves[0])
