"""Figure of synthetic tomograms: xy and xz slices, raw and with the labels overlaid.

    python scripts/make_synthetic_figure.py [--out docs/synthetic.png] [--shape 96 320 320] [--seeds 0 1]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from cryoet_monai import CLASS_NAMES  # noqa: E402
from cryoet_monai.data.synthetic import generate_tomogram  # noqa: E402

COLORS = ["#00000000", "#ffd400", "#00c8ff", "#ff3b30", "#34c759", "#bf5af2"]


def _show(ax, image, label, title, overlay):
    lo, hi = np.percentile(image, [1, 99])
    ax.imshow(image, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
    if overlay:
        rgba = np.zeros((*label.shape, 4))
        for c in range(1, len(COLORS)):
            rgba[label == c] = matplotlib.colors.to_rgba(COLORS[c], 0.45)
        ax.imshow(rgba, interpolation="nearest")
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])


def _richest(label: np.ndarray, axis: int) -> int:
    """Slice index along ``axis`` (middle half) showing the most classes, then the most foreground."""
    n = label.shape[axis]
    moved = np.moveaxis(label, axis, 0)[n // 4: 3 * n // 4]
    classes = np.array([len(np.unique(s)) for s in moved])
    fg = (moved > 0).reshape(len(moved), -1).mean(1)
    return int(np.argmax(classes + fg)) + n // 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="docs/synthetic.png")
    parser.add_argument("--shape", type=int, nargs=3, default=(96, 320, 320))
    parser.add_argument("--voxel-size", type=float, default=10.0)
    parser.add_argument("--seeds", type=int, nargs="+", default=(7, 3))
    args = parser.parse_args()
    z, y, x = args.shape
    n = len(args.seeds)
    fig, axes = plt.subplots(2 * n, 2, figsize=(10, 5.2 * n * (y + z) / y),
                             gridspec_kw={"height_ratios": [y, z] * n})
    for r, seed in enumerate(args.seeds):
        image, label, info = generate_tomogram(args.shape, args.voxel_size, seed, return_info=True)
        im = info["imaging"]
        iz, iy = _richest(label, 0), _richest(label, 1)
        desc = (f"tilt {im['tilt_min']:.0f}..{im['tilt_max']:.0f}° step {im['tilt_step']:g}°, "
                f"defocus {im['defocus_um']:.1f} µm, SNR {im['snr']:.2f}"
                f"{', phase-flipped' if im['phase_flip'] else ''}")
        xy_title = f"seed {seed}, {args.voxel_size:g} Å: xy slice z={iz}"
        _show(axes[2 * r, 0], image[iz], label[iz], xy_title, False)
        _show(axes[2 * r, 1], image[iz], label[iz], f"with labels; {desc}", True)
        xz_title = f"xz slice y={iy} (missing wedge: blur along z)"
        _show(axes[2 * r + 1, 0], image[:, iy], label[:, iy], xz_title, False)
        _show(axes[2 * r + 1, 1], image[:, iy], label[:, iy], "xz with labels", True)
        for a in axes[2 * r + 1]:
            a.invert_yaxis()
    handles = [Patch(color=COLORS[c], label=CLASS_NAMES[c]) for c in range(1, len(COLORS))]
    fig.legend(handles=handles, loc="lower center", ncol=5, fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
