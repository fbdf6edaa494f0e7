#!/usr/bin/env python
"""Seconds of the label clean-up with each implementation, on the shipped model's raw labels (thin CLI).

A synthetic 184x630x630 float32 tomogram at 10 Å (the benchmark's typical tomogram) is segmented once
with the shipped model and the default backend, post-processing off (``--min-size 0
--double-membrane-max-gap 0``). On those raw labels, in this process, the bundle's small-component
removal (``min_component_size`` of configs/inference.json) and then the double-membrane partner rule
run with every implementation installed: scipy (always), and connected-components-3d / edt (the
``cpu`` extra). Reports the best of ``--repeats`` timings of each step and checks that the labels of
all implementations are equal.

    python scripts/bench_postprocess.py [--depth 184] [--size 630] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _best_time(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--depth", type=int, default=184)
    p.add_argument("--size", type=int, default=630)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()

    from cryoet_monai.data.synthetic import generate_tomogram
    from cryoet_monai.inference.cli import build_segmenter
    from cryoet_monai.inference.postprocess import (
        has_cc3d,
        has_edt,
        relabel_unpaired_double_membranes,
        remove_small_components,
    )
    from cryoet_monai.io.mrc import read_mrc, save_mrc

    sys.path.insert(0, str(REPO / "scripts"))
    from bench_backends import cpu_report

    print(json.dumps(cpu_report()), flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench_postprocess_"))
    src = tmp / "typical.mrc"
    image, _ = generate_tomogram((args.depth, args.size, args.size), 10.0, args.seed)
    save_mrc(src, image.astype(np.float32), voxel_size=10.0)
    del image
    subprocess.run([sys.executable, "-m", "cryoet_monai", "segment", str(src), "-o", str(tmp),
                    "--no-progress", "--min-size", "0", "--double-membrane-max-gap", "0"],
                   check=True, cwd=REPO)
    raw = np.array(read_mrc(tmp / "typical_seg.mrc")[0], dtype=np.uint8)

    # the bundle's post-processing settings, as `segment` parses them
    parser = build_segmenter(None, progress=False, invert="no", backend="torch")
    segmenter = parser.get_parsed_content("segmenter")
    sizes = list(segmenter.min_component_size)
    gap = float(segmenter.double_membrane_max_gap)
    double, single = segmenter.membrane_labels
    labellers = ["scipy"] + (["cc3d"] if has_cc3d else [])
    distances = ["scipy"] + (["edt"] if has_edt else [])

    print(f"raw labels {raw.shape}; min sizes {sizes}; partner rule {gap:.0f} Å")
    print(f"| step | implementation | s (best of {args.repeats}) |")
    print("|---|---|---|")
    cleaned = {}
    for labeller in labellers:
        def remove(lab: str = labeller) -> np.ndarray:
            work = raw.copy()
            remove_small_components(work, sizes, num_classes=len(sizes), labeller=lab)
            return work

        seconds, cleaned[labeller] = _best_time(remove, args.repeats)
        print(f"| small-component removal | {labeller} | {seconds:.2f} |", flush=True)
    first = cleaned[labellers[0]]
    same = all(np.array_equal(first, v) for v in cleaned.values())
    ruled = {}
    for distance in distances:
        def rule(d: str = distance) -> np.ndarray:
            work = first.copy()
            relabel_unpaired_double_membranes(work, 10.0, double, single, max_gap=gap, distance=d)
            return work

        seconds, ruled[distance] = _best_time(rule, args.repeats)
        print(f"| partner rule | {distance} | {seconds:.2f} |", flush=True)
    same = same and all(np.array_equal(ruled[distances[0]], v) for v in ruled.values())
    print(f"labels of all implementations equal: {same}")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
