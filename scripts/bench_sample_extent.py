#!/usr/bin/env python
"""What sample-extent skipping saves and changes, on a tomogram thicker than its ice slab (thin CLI).

A synthetic 184x630x630 float32 tomogram at 10 Å whose ice slab fills ``--ice-fraction`` of the depth
(0.6: a 110 nm lamella in a 184 nm reconstruction) is segmented twice with the shipped model and the
default backend, in separate processes, end to end: by default (planes outside the sample skipped) and
with ``--all-planes``. Reports both times, the extent found, how many labels differ, and the tolerant
F1 (2 voxels) of both against the generator's labels.

    python scripts/bench_sample_extent.py [--ice-fraction 0.6] [--depth 184] [--size 630]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ice-fraction", type=float, default=0.6)
    p.add_argument("--depth", type=int, default=184)
    p.add_argument("--size", type=int, default=630)
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args()

    from cryoet_monai.data.synthetic import generate_tomogram
    from cryoet_monai.evaluation.transfer import score_volume
    from cryoet_monai.io.mrc import read_mrc, save_mrc

    tmp = Path(tempfile.mkdtemp(prefix="bench_extent_"))
    src = tmp / "thin_ice.mrc"
    image, label = generate_tomogram((args.depth, args.size, args.size), 10.0, args.seed,
                                     ice_fraction=args.ice_fraction)
    save_mrc(src, image.astype(np.float32), voxel_size=10.0)
    del image
    labelled = np.flatnonzero(((label > 0) & (label < 255)).any(axis=(1, 2)))
    print(f"{args.depth}x{args.size}x{args.size}, ice fraction {args.ice_fraction}: labelled objects in "
          f"planes {labelled.min()}-{labelled.max()}", flush=True)
    runs = {}
    for name, extra in (("skip", []), ("all planes", ["--all-planes"])):
        out = tmp / name.replace(" ", "_")
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "cryoet_monai", "segment", str(src), "-o", str(out),
                               "--no-progress", "--invert", "no", *extra],
                              capture_output=True, text=True, cwd=REPO, check=True)
        seconds = time.perf_counter() - t
        pred = np.asarray(read_mrc(out / "thin_ice_seg.mrc")[0])
        found = re.search(r"sample in planes (\d+)-(\d+)", proc.stdout)
        runs[name] = {"seconds": seconds, "pred": pred,
                      "extent": f"planes {found[1]}-{found[2]}" if found else "every plane"}
    for name, run in runs.items():
        f1 = score_volume(run["pred"], label, tolerance=2)["f1"]
        scores = ", ".join(f"{k} {v:.3f}" for k, v in f1.items())
        print(f"{name}: {run['seconds']:.1f} s, segmented {run['extent']}; tolerant F1 {scores}")
    same = float((runs["skip"]["pred"] == runs["all planes"]["pred"]).mean())
    print(f"labels equal on {100 * same:.3f} % of the voxels; "
          f"{runs['all planes']['seconds'] / runs['skip']['seconds']:.2f}x faster with the skip")


if __name__ == "__main__":
    main()
