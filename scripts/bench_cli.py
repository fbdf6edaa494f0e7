"""Wall time of ``cryoet-monai --help`` and ``cryoet-monai segment --help`` (target < 1.5 s).

    python scripts/bench_cli.py [--repeats 5]

Each call is a fresh interpreter, as a user types it; prints the best and the median.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    for command in (["--help"], ["segment", "--help"], ["finetune", "--help"], ["--version"]):
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "cryoet_monai", *command], check=True, capture_output=True)
            times.append(time.perf_counter() - t0)
        name = " ".join(command)
        print(f"cryoet-monai {name}: best {min(times):.2f} s, median {statistics.median(times):.2f} s")


if __name__ == "__main__":
    main()
