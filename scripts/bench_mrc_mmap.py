"""Benchmark: opening a big MRC tomogram does not read it into memory.

Writes a float32 MRC of at least ``--gib`` GiB slab by slab through :func:`create_mrc` (a memory
map, never the whole volume in RAM), then, in a fresh child process, opens it with
:func:`read_mrc` and with ``MRCReader.read`` and copies one slab, printing the peak resident
memory (VmHWM) increase against the slab and file sizes. The file is deleted at the end.

    python scripts/bench_mrc_mmap.py [--gib 2.1] [--slab 4] [--dir /tmp]
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

MIB = 1024**2


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_hwm() -> None:
    # writing 5 to clear_refs resets VmHWM to the current RSS (Linux >= 4.0)
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def child(path: str, slab: int) -> None:
    from cryoet_monai.io.mrc import MRCReader, read_mrc

    out: dict[str, float] = {}
    _reset_hwm()
    base = _status_kib("VmHWM")
    t0 = time.perf_counter()
    volume, meta = read_mrc(path)
    out["open_s"] = time.perf_counter() - t0
    out["open_hwm_mib"] = (_status_kib("VmHWM") - base) / 1024
    z0 = volume.shape[0] // 2
    t0 = time.perf_counter()
    block = np.array(volume[z0 : z0 + slab], dtype=np.float32)  # copy of one slab
    out["slab_s"] = time.perf_counter() - t0
    out["slab_hwm_mib"] = (_status_kib("VmHWM") - base) / 1024
    out["slab_mib"] = block.nbytes / MIB
    expected = np.arange(z0, z0 + slab, dtype=np.float32)[:, None, None] + _pattern(block.shape[1:])
    out["slab_correct"] = bool(np.array_equal(block, expected))
    out["shape"] = list(volume.shape)
    del block

    # normalisation statistics on the strided subsample (what inference does once per tomogram)
    from cryoet_monai.transforms.intensity import compute_stats

    _reset_hwm()
    base = _status_kib("VmHWM")
    t0 = time.perf_counter()
    compute_stats(volume)
    out["stats_s"] = time.perf_counter() - t0
    out["stats_hwm_mib"] = (_status_kib("VmHWM") - base) / 1024
    out["rss_file_mib"] = _status_kib("RssFile") / 1024  # pages of the mapped file (page cache)
    out["rss_anon_mib"] = _status_kib("RssAnon") / 1024  # heap: interpreter, torch, monai, arrays
    del volume

    # the MONAI reader: read() opens the memory map; get_data() would copy it all for a tensor
    _reset_hwm()
    base = _status_kib("VmHWM")
    reader = MRCReader()
    array, _ = reader.read(path)
    _ = np.array(array[z0 : z0 + slab])
    out["reader_read_plus_slab_hwm_mib"] = (_status_kib("VmHWM") - base) / 1024
    print(json.dumps(out))


def _pattern(shape: tuple[int, int]) -> np.ndarray:
    y, x = np.indices(shape, dtype=np.float32)
    return (y * 1e-3 + x * 1e-6).astype(np.float32)


def main() -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=fmt)
    parser.add_argument("--gib", type=float, default=2.1, help="file size in GiB (>= 2 for the docs)")
    parser.add_argument("--slab", type=int, default=4, help="planes per slab")
    parser.add_argument("--dir", default=None, help="temporary folder (default: system temp)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.slab)
        return

    from cryoet_monai.io.mrc import create_mrc

    ny = nx = 2048
    nz = int(np.ceil(args.gib * 1024**3 / (ny * nx * 4)))
    plane = _pattern((ny, nx))
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "big.mrc"
        t0 = time.perf_counter()
        with create_mrc(path, (nz, ny, nx), np.float32, voxel_size=10.0, fill=None) as out:
            for z in range(nz):  # plane by plane: the writer never holds the volume
                out[z] = plane + np.float32(z)
        write_s = time.perf_counter() - t0
        size_mib = path.stat().st_size / MIB
        result = subprocess.run(
            [sys.executable, __file__, "--child", str(path), "--slab", str(args.slab)],
            check=True,
            capture_output=True,
            text=True,
        )
        stats = json.loads(result.stdout.strip().splitlines()[-1])
    print(f"file: {nz} x {ny} x {nx} float32, {size_mib:.0f} MiB, written in {write_s:.1f} s (create_mrc)")
    print(f"read_mrc open: {stats['open_s'] * 1e3:.1f} ms, peak RSS +{stats['open_hwm_mib']:.1f} MiB")
    print(
        f"one slab of {args.slab} planes ({stats['slab_mib']:.0f} MiB): {stats['slab_s'] * 1e3:.0f} ms, "
        f"peak RSS +{stats['slab_hwm_mib']:.0f} MiB ({stats['slab_hwm_mib'] / size_mib:.1%} of the file), "
        f"values correct: {stats['slab_correct']}"
    )
    print(
        f"compute_stats (1e6-voxel strided sample): {stats['stats_s']:.2f} s, "
        f"peak RSS +{stats['stats_hwm_mib']:.0f} MiB (now RssFile {stats['rss_file_mib']:.0f} MiB, "
        f"RssAnon {stats['rss_anon_mib']:.0f} MiB)"
    )
    print(f"MRCReader.read + same slab: peak RSS +{stats['reader_read_plus_slab_hwm_mib']:.0f} MiB")


if __name__ == "__main__":
    main()
