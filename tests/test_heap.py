"""limit_heap_retention: freed mid-size blocks leave RSS at once (glibc), checked in a child process."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

CHILD = """
import sys
import numpy as np
from cryoet_monai.io.heap import limit_heap_retention

def rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20

if sys.argv[1] == "limit":
    assert limit_heap_retention()
big = np.ones(20 << 20, np.uint8); del big  # glibc now raises its dynamic mmap threshold to 20 MiB
base = rss_mib()
blocks = [np.ones(6 << 20, np.uint8) for _ in range(60)]  # 360 MiB in 6 MiB blocks, all touched
del blocks[:-1]  # the last one stays: the heap top cannot shrink past it
print(rss_mib() - base)
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_freed_blocks_leave_rss_only_with_the_limit():
    retained = {mode: float(subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True,
                                           text=True, check=True).stdout)
                for mode in ("default", "limit")}
    assert retained["default"] > 200  # the glibc behaviour the setting exists for
    assert retained["limit"] < 30
