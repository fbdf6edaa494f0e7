#!/usr/bin/env python
"""Peak RSS: a 128x1024x1024 float32 tomogram, MRC or OME-Zarr in -> MRC or OME-Zarr labels out.

Both runs are ``cryoet-monai segment`` in their own process (peak RSS from ``wait4``) with the same
narrow network (widths 8..128, random weights in a temporary model folder: memory, not accuracy, is
measured) on the same voxels, written once as MRC and once as a chunked OME-Zarr image (streamed
from the MRC's memory map with ome-zarr's writer). Needs the ``zarr`` extra.

    python scripts/bench_omezarr_rss.py [--shape 128 1024 1024]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def _run(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (GiB) of one child process."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr.read().decode()[-3000:]}")
    return time.perf_counter() - t, usage.ru_maxrss / 2**20


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", type=int, nargs=3, default=[128, 1024, 1024])
    args = p.parse_args()

    import dask.array as da
    import zarr
    from ome_zarr.writer import write_multiscale

    from cryoet_monai import PaperUNet
    from cryoet_monai.data.synthetic import generate_tomogram
    from cryoet_monai.io.mrc import create_mrc, read_mrc
    from cryoet_monai.model_folder import write_model_configs

    tmp = Path(tempfile.mkdtemp(prefix="bench_omezarr_"))
    shape = tuple(args.shape)
    # 16 generated slices repeated along z: realistic content without generating a huge volume
    image, _ = generate_tomogram((16, *shape[1:]), 10.0, 0, mode="fourier")
    src_mrc = tmp / "tomo.mrc"
    with create_mrc(src_mrc, shape, np.float32, voxel_size=10.0) as out:
        for z in range(shape[0]):
            out[z] = image[z % len(image)]
    del image
    volume, _ = read_mrc(src_mrc, mmap=True)
    src_zarr = tmp / "tomo.zarr"
    root = zarr.open_group(str(src_zarr), mode="w")
    axes = [{"name": n, "type": "space", "unit": "angstrom"} for n in "zyx"]
    # one level at 10 Å (write_image would add a pyramid, and the segmenter reads the level nearest 10 Å)
    write_multiscale([da.from_array(volume, chunks=(16, 512, 512))], root, axes=axes,
                     coordinate_transformations=[[{"type": "scale", "scale": [10.0, 10.0, 10.0]}]],
                     storage_options={"chunks": (16, 512, 512)})
    del volume

    model = tmp / "narrow_model"
    (model / "models").mkdir(parents=True)
    torch.manual_seed(0)
    net = PaperUNet(2, 5, 6, features=[8, 16, 32, 64, 128])
    torch.save(net.state_dict(), model / "models" / "model.pt")
    write_model_configs(model, net, REPO / "configs" / "inference.json")

    base = [sys.executable, "-m", "cryoet_monai", "segment", "--model", str(model), "--no-progress",
            "--invert", "no"]
    rows = {
        "MRC in -> MRC out": _run([*base, str(src_mrc), "-o", str(tmp / "out_mrc")]),
        "OME-Zarr in -> MRC out": _run([*base, str(src_zarr), "-o", str(tmp / "out_zarr_mrc")]),
        "MRC in -> OME-Zarr out": _run([*base, str(src_mrc), "-o", str(tmp / "out_mrc_zarr"),
                                        "--format", "zarr"]),
        "OME-Zarr in -> OME-Zarr out": _run([*base, str(src_zarr), "-o", str(tmp / "out_zarr"),
                                             "--format", "zarr"]),
    }
    from cryoet_monai.io.omezarr import read_ome_zarr

    labels_zarr = read_ome_zarr(tmp / "out_zarr" / "tomo_seg.zarr" / "labels" / "segmentation")[0]
    labels_mrc = read_mrc(tmp / "out_mrc" / "tomo_seg.mrc")[0]
    assert labels_zarr.shape == labels_mrc.shape == shape, (labels_zarr.shape, labels_mrc.shape)
    same = float(np.mean([np.mean(np.asarray(labels_zarr[z]) == np.asarray(labels_mrc[z]))
                          for z in range(0, shape[0], 8)]))
    print(f"labels equal on {100 * same:.2f} % of the voxels of every 8th slice")
    print(f"{'x'.join(map(str, shape))} float32 ({np.prod(shape) * 4 / 2**30:.2f} GiB), narrow U-Net 8..128")
    print("| path | seconds | peak RSS GiB |\n|---|---|---|")
    for name, (seconds, rss) in rows.items():
        print(f"| {name} | {seconds:.0f} | {rss:.2f} |")


if __name__ == "__main__":
    main()
