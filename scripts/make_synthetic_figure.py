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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="docs/synthetic.png")
    parser.add_argument("--shape", type=int, nargs=3, default=(96, 320, 320))
    parser.add_argument("--voxel-size", type=float, default=10.0)
    parser.add_argument("--seeds", type=int, nargs="+", default=(3, 7))
    args = parser.parse_args()
    rows = len(args.seeds)
    z, y, x = args.shape
    fig, axes = plt.subplots(rows, 4, figsize=(16, 4.6 * rows),
                             gridspec_kw={"width_ratios": [x, x, x, x]})
    axes = np.atleast_2d(axes)
    for r, seed in enumerate(args.seeds):
        image, label, info = generate_tomogram(args.shape, args.voxel_size, seed, return_info=True)
        im = info["imaging"]
        # the xz slice through the row with the most labelled foreground shows the missing wedge
        iy = int(np.argmax((label > 0).sum(axis=(0, 2))[y // 4: 3 * y // 4])) + y // 4
        iz = z // 2
        desc = (f"seed {seed}, {args.voxel_size:g} Å, tilt {im['tilt_min']:.0f}..{im['tilt_max']:.0f}° "
                f"step {im['tilt_step']:g}°, defocus {im['defocus_um']:.1f} µm, SNR {im['snr']:.2f}"
                f"{', phase-flipped' if im['phase_flip'] else ''}")
        _show(axes[r, 0], image[iz], label[iz], f"xy z={iz}: {desc}", False)
        _show(axes[r, 1], image[iz], label[iz], "xy + labels", True)
        _show(axes[r, 2], image[:, iy], label[:, iy], f"xz y={iy} (missing wedge elongates in z)", False)
        _show(axes[r, 3], image[:, iy], label[:, iy], "xz + labels", True)
        for a in axes[r, 2:]:
            a.invert_yaxis()
    handles = [Patch(color=COLORS[c], label=CLASS_NAMES[c]) for c in range(1, len(COLORS))]
    fig.legend(handles=handles, loc="lower center", ncol=5, fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
