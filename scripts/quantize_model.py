#!/usr/bin/env python
"""Make the int8 OpenVINO model of a model folder's weights, calibrated on synthetic tomograms (thin CLI).

    python scripts/quantize_model.py [--model .]     # writes models/model_int8.{xml,bin,json}

The network comes from the folder's ``configs/inference.json``, the weights from ``models/model.pt``;
calibration windows are whole slices of synthetic tomograms in the training style, normalised as at
inference (:func:`cryoet_monai.inference.quantize.calibration_windows`). Prints how many labels of a
held-out synthetic tomogram the int8 model keeps against the float weights in torch fp32 (the record
keeps the figure); ``segment --backend auto`` then uses it on the CPU. Needs ``openvino`` and ``nncf``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, default=ROOT, help="model folder (configs/ + models/model.pt)")
    p.add_argument("--tomograms", type=int, default=4, help="synthetic calibration tomograms")
    p.add_argument("--windows", type=int, default=10, help="calibration slices per tomogram")
    p.add_argument("--float-head", type=int, help="convolutions kept in float at the input end "
                   "(default: quantize_openvino's)")
    p.add_argument("--float-tail", type=int, help="convolutions kept in float at the output end "
                   "(default: quantize_openvino's)")
    args = p.parse_args()

    from cryoet_monai.data.synthetic import generate_tomogram
    from cryoet_monai.inference.cli import build_segmenter
    from cryoet_monai.inference.quantize import (
        MIN_LABEL_AGREEMENT,
        calibration_windows,
        quantize_openvino,
        update_int8_record,
    )

    def segmenter(backend: str):
        return build_segmenter(args.model, backend=backend, precision="fp32", progress=False,
                               invert="no").get_parsed_content("segmenter")

    reference = segmenter("torch")  # eval mode, weights loaded, batch norm folded
    network, model_path = reference.network, Path(reference.model_path)
    voxel_size = float(reference.model_voxel_size or 10.0)
    t = time.perf_counter()
    windows = calibration_windows(network.in_channels, args.tomograms, args.windows, voxel_size=voxel_size)
    network = network.to(memory_format=torch.contiguous_format)
    given = {"float_head": args.float_head, "float_tail": args.float_tail}
    kept = {k: v for k, v in given.items() if v is not None}
    xml = quantize_openvino(network, windows, model_path, **kept)
    seconds = time.perf_counter() - t

    # agreement on a held-out synthetic tomogram, whole pipeline: int8 against torch fp32
    image, _ = generate_tomogram((32, 384, 384), voxel_size, 91_000)
    a = reference.segment_array(image, voxel_size)[0]
    b = segmenter("openvino-int8").segment_array(image, voxel_size)[0]
    agreement = float(np.mean(a == b))
    update_int8_record(model_path, labels_equal_to_torch_fp32=agreement)
    size = xml.with_suffix(".bin").stat().st_size / 2**20
    print(f"wrote {xml} (+ .bin {size:.1f} MiB) in {seconds:.0f} s from {len(windows)} windows; "
          f"labels equal to torch fp32 on {100 * agreement:.2f} % of a held-out synthetic tomogram")
    if agreement < MIN_LABEL_AGREEMENT:
        print(f"below {100 * MIN_LABEL_AGREEMENT:.1f} %: segment refuses this int8 model; keep more "
              f"convolutions in float (e.g. --float-head 3 --float-tail 5)")


if __name__ == "__main__":
    main()
