"""Time and peak memory of the synthetic tomogram generator.

    python scripts/bench_synthetic.py [--shape 128 512 512] [--voxel-size 10] [--seeds 0 1 2]

Each tomogram is generated in a fresh subprocess so that its peak resident memory (RSS,
including the Python/numpy/scipy imports) is measured on its own. Prints one line per seed
and a summary; the numbers go into docs/synthetic.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

_CHILD = r"""
import json, resource, sys, time
import numpy as np
from cryoet_monai.data.synthetic import generate_tomogram
shape, vs, seed, workers = json.loads(sys.argv[1])
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
image, label, info = generate_tomogram(shape, vs, seed, return_info=True, workers=workers)
wall = time.perf_counter() - t
frac = (np.bincount(label.reshape(-1), minlength=6)[:6] / label.size).tolist()
print(json.dumps({"seed": seed, "wall_s": wall, **info["timing"],
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "import_rss_mib": rss0 / 1024, "ribosomes": info["ribosomes"],
                  "microtubules": len(info["microtubules"]),
                  "single_membranes": len(info["single_membranes"]),
                  "double_membranes": len(info["double_membranes"]),
                  "class_fractions": [round(f, 4) for f in frac]}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shape", type=int, nargs=3, default=(128, 512, 512))
    parser.add_argument("--voxel-size", type=float, default=10.0)
    parser.add_argument("--seeds", type=int, nargs="+", default=(0, 1, 2))
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    results = []
    for seed in args.seeds:
        payload = json.dumps([list(args.shape), args.voxel_size, seed, args.workers])
        cmd = [sys.executable, "-c", _CHILD, payload]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        results.append(r)
        print(f"seed {seed}: {r['wall_s']:.1f} s (phantom {r['phantom_s']:.1f} s, "
              f"imaging {r['imaging_s']:.1f} s), "
              f"peak RSS {r['peak_rss_mib']:.0f} MiB, {r['ribosomes']} ribosomes, {r['microtubules']} MTs, "
              f"{r['single_membranes']}+{r['double_membranes']} single+double membranes, "
              f"fractions {r['class_fractions']}", flush=True)
    walls = [r["wall_s"] for r in results]
    rss = [r["peak_rss_mib"] for r in results]
    print(f"shape {tuple(args.shape)} at {args.voxel_size:g} Å, {args.workers} FFT workers: "
          f"wall mean {sum(walls) / len(walls):.1f} s (max {max(walls):.1f} s), "
          f"peak RSS max {max(rss):.0f} MiB")


if __name__ == "__main__":
    main()
