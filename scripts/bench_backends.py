#!/usr/bin/env python
"""Seconds per typical tomogram with the shipped model, per CPU backend, in one run on this machine.

The input is a synthetic 184x630x630 float32 tomogram at 10 Å (the size of a binned Data Portal /
CZII tomogram). Every row runs in its own process (``cryoet-monai segment`` for the pipeline rows,
so "end to end" includes start-up, reading and writing) and reports wall seconds and peak RSS:

* ours with each backend: torch eager (autocast per the precision rule), torch fp32, ONNX Runtime
  (fp32), OpenVINO (its default precision: bf16 where the CPU has it natively), OpenVINO int8 (the
  shipped ``models/model_int8.xml``, made by ``scripts/quantize_model.py``); every row skips the
  planes outside the sample and runs the network on every ``plane_stride``-th plane (the defaults);
  more int8 rows segment every plane (``--all-planes``), run the network on every plane, every 2nd
  or every 3rd (``--plane-stride 1/2/3``, all but the default), and one turns the
  double-membrane partner rule off (``--double-membrane-max-gap 0``), to measure what each costs
  or saves and changes;
* baselines with the same weights: the seed paper's way (fp32 eager, one forward per slice, plain
  argmax) and MONAI's stock ``SliceInferer`` (fp32, whole slices, default batch);
* label agreement of each backend with torch fp32 (the reference: the ``fp32`` row, or the ``torch``
  row where the precision rule runs torch in fp32 and ``fp32`` is skipped), the fp32 and bf16 GEMM peaks of
  this machine and the fraction of them the torch row reaches, and the CPU's features.

``--max-isa AVX2`` emulates an older CPU on a newer one: it caps every library's documented
dispatcher before anything is imported (oneDNN ``ONEDNN_MAX_CPU_ISA``, OpenVINO ``OV_CPU_MAX_ISA``,
ATen ``ATEN_CPU_CAPABILITY``, MKL ``MKL_ENABLE_INSTRUCTIONS``), so the precision rule sees no native
bf16 and OpenVINO picks AVX2 int8/fp32 kernels. ONNX Runtime has no such switch: its row keeps the
machine's full ISA, and the table says so. Same cores, caches and clock: an emulation, not a
measurement on an AVX2-only CPU.

Usage::

    python scripts/bench_backends.py [--depth 184] [--size 630] [--skip openvino ...] [--max-isa AVX2]
        [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


#: environment variables that cap each library's ISA dispatch to AVX2 (``--max-isa AVX2``)
ISA_CAP_ENV = {"ONEDNN_MAX_CPU_ISA": "{isa}", "OV_CPU_MAX_ISA": "{isa}", "ATEN_CPU_CAPABILITY": "{isa_lower}",
               "MKL_ENABLE_INSTRUCTIONS": "{isa}"}


def cpu_report() -> dict[str, object]:
    """Model name, cores, the SIMD / matrix features that decide CPU speed, and any ISA cap in force."""
    from cryoet_monai.precision import cpu_features, onednn_isa_cap

    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    names = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")]
    model = names[0] if names else ""
    features = [name for name, present in cpu_features().items() if present]
    return {"model": model, "cores": os.cpu_count(), "features": features, "isa_cap": onednn_isa_cap()}


def _timed(cmd: list[str], env: dict[str, str] | None = None) -> dict:
    """Run ``cmd``; its wall seconds and peak RSS in GiB (``wait4``: this child's own rusage)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=REPO, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[:6])} ... failed:\n{err.read()[-3000:]}")
        out.seek(0)
        return {"seconds": seconds, "peak_rss_gib": usage.ru_maxrss / 2**20, "stdout": out.read()}


_BASELINE = r'''
import json, sys, time
import numpy as np, torch
from monai.inferers import SliceInferer
from cryoet_monai.inference.cli import build_segmenter
from cryoet_monai.io.mrc import read_mrc, save_mrc
from cryoet_monai.transforms.intensity import RobustNormalizeIntensity
from cryoet_monai.transforms.sampling import StackSlices

mode, src, out = sys.argv[1], sys.argv[2], sys.argv[3]
t0 = time.perf_counter()
parser = build_segmenter(None)
net = parser.get_parsed_content("network_def")
net.load_state_dict({k: v.float() for k, v in torch.load(parser.get_parsed_content("model_path"),
                                                         map_location="cpu").items()})
net.eval()
volume, meta = read_mrc(src)
volume = np.asarray(volume, np.float32)
norm = RobustNormalizeIntensity()
x = torch.as_tensor(norm(volume, name=src))
k = net.in_channels
stacked = StackSlices(k)(x[None])  # (k, Z, Y, X): neighbouring slices as channels, edges replicated
labels = np.zeros(volume.shape, np.uint8)
pad = [(-s) % 16 for s in volume.shape[1:]]
with torch.inference_mode():
    if mode == "seed":  # one slice per forward, fp32, argmax
        for z in range(volume.shape[0]):
            s = torch.nn.functional.pad(stacked[:, z][None], (0, pad[1], 0, pad[0]))
            labels[z] = net(s).argmax(1)[0, : volume.shape[1], : volume.shape[2]].numpy()
    else:  # MONAI's stock SliceInferer over the stacked volume, whole slices
        inferer = SliceInferer(roi_size=(volume.shape[1] + pad[0], volume.shape[2] + pad[1]), spatial_dim=0,
                               sw_batch_size=1, progress=False, padding_mode="constant")
        labels[:] = inferer(stacked[None], net).argmax(1)[0].numpy()
save_mrc(out, labels, voxel_size=meta["voxel_size"])
print(json.dumps({"seconds_inside": time.perf_counter() - t0}))
'''


def gemm_peaks(n: int = 2048, reps: int = 5) -> dict[str, float]:
    """Best FLOP/s of an n x n matmul in fp32 and bf16 (this process, all cores); bf16 only where the
    CPU computes it natively (emulated, one 2048² matmul takes minutes and says nothing useful)."""
    import torch

    from cryoet_monai.precision import cpu_has_native_bf16

    out = {"bf16": float("nan")}
    dtypes = [("fp32", torch.float32)] + ([("bf16", torch.bfloat16)] if cpu_has_native_bf16() else [])
    for name, dtype in dtypes:
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        torch.mm(a, b)
        best = 0.0
        for _ in range(reps):
            t = time.perf_counter()
            torch.mm(a, b)
            best = max(best, 2.0 * n**3 / (time.perf_counter() - t))
        out[name] = best
    return out


def network_flops(depth: int, ny: int, nx: int) -> tuple[float, int]:
    """``(FLOPs, planes)``: forward FLOPs of the shipped network over the planes its default inferer
    runs it on in a tomogram of ``depth`` whole slices (padded to 16), and how many planes that is
    (every ``plane_stride``-th, consecutive slabs sharing an end plane)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from cryoet_monai.inference.cli import build_segmenter

    parser = build_segmenter(None)
    parser["backend"] = "torch"  # only the plan and the network's shape are needed here
    planes = parser.get_parsed_content("segmenter").network_planes(depth)
    net = parser.get_parsed_content("network_def", lazy=False).to("meta")  # a fresh copy, no weights
    py, px = ny + (-ny) % 16, nx + (-nx) % 16
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        net(torch.zeros(1, net.in_channels, py, px, device="meta"))
    return float(counter.get_total_flops()) * planes, planes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--depth", type=int, default=184)
    p.add_argument("--size", type=int, default=630)
    p.add_argument("--voxel-size", type=float, default=10.0)
    p.add_argument("--skip", nargs="*", default=[], help="rows to leave out (torch, fp32, onnxruntime, "
                   "openvino, openvino-int8, 'openvino-int8 --all-planes', 'openvino-int8 --plane-stride N' "
                   "(N = 1, 2, 3 but the default), "
                   "'openvino-int8 --double-membrane-max-gap 0', seed, slice_inferer)")
    p.add_argument("--max-isa", choices=["AVX2"], help="emulate a CPU with at most this ISA (see above)")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # every line reaches the log even if a later step dies
    if args.max_isa:  # before torch/OpenVINO are imported here or in the rows' processes
        os.environ.update({k: v.format(isa=args.max_isa, isa_lower=args.max_isa.lower())
                           for k, v in ISA_CAP_ENV.items()})

    from cryoet_monai import CLASS_NAMES
    from cryoet_monai.data.synthetic import generate_tomogram
    from cryoet_monai.inference.cli import build_segmenter
    from cryoet_monai.io.mrc import read_mrc, save_mrc
    from cryoet_monai.precision import resolve_autocast_dtype

    cpu = cpu_report()
    capped = f"; ISA capped to {cpu['isa_cap']} (emulation)" if cpu["isa_cap"] else ""
    print(f"CPU: {cpu['model']}, {cpu['cores']} cores, features: {' '.join(cpu['features'])}{capped}",
          flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench_backends_"))
    src = tmp / "typical.mrc"
    t = time.perf_counter()
    image, _ = generate_tomogram((args.depth, args.size, args.size), args.voxel_size, 7)
    save_mrc(src, image.astype(np.float32), voxel_size=args.voxel_size)
    del image
    shape = f"{args.depth}x{args.size}x{args.size}"
    print(f"typical tomogram {shape} generated in {time.perf_counter() - t:.0f} s", flush=True)
    env = dict(os.environ)
    default_stride = int(build_segmenter(None).get_parsed_content("plane_stride"))
    other_strides = [n for n in (1, 2, 3) if n != default_stride]
    rows: dict[str, dict] = {}
    cli = [sys.executable, "-m", "cryoet_monai", "segment", str(src), "--no-progress", "--invert", "no"]
    pipeline = {"fp32": ["--backend", "torch", "--precision", "fp32"], "torch": ["--backend", "torch"],
                "onnxruntime": ["--backend", "onnxruntime"], "openvino": ["--backend", "openvino"],
                "openvino-int8": ["--backend", "openvino-int8"],
                "openvino-int8 --all-planes": ["--backend", "openvino-int8", "--all-planes"],
                **{f"openvino-int8 --plane-stride {n}": ["--backend", "openvino-int8",
                                                          "--plane-stride", str(n)] for n in other_strides},
                "openvino-int8 --double-membrane-max-gap 0": ["--backend", "openvino-int8",
                                                              "--double-membrane-max-gap", "0"]}
    for name, extra in pipeline.items():
        if name in args.skip:
            continue
        out = tmp / name.replace(" ", "")
        rows[name] = _timed([*cli, "-o", str(out), *extra], env)
        rows[name]["labels"] = out / "typical_seg.mrc"
        print(f"{name}: {rows[name]['seconds']:.1f} s", flush=True)
    for name in ("seed", "slice_inferer"):
        if name in args.skip:
            continue
        out = tmp / f"{name}_seg.mrc"
        rows[name] = _timed([sys.executable, "-c", _BASELINE, "seed" if name == "seed" else "slice", str(src),
                             str(out)], env)
        rows[name]["labels"] = out
        print(f"{name}: {rows[name]['seconds']:.1f} s", flush=True)
    # the reference is torch fp32: the fp32 row, else the torch row where the precision rule chose fp32
    torch_is_fp32 = resolve_autocast_dtype("auto", "cpu") is None
    ref_row = "fp32" if "fp32" in rows else "torch" if "torch" in rows and torch_is_fp32 else None
    reference = np.asarray(read_mrc(rows[ref_row]["labels"])[0]) if ref_row else None
    peaks = gemm_peaks()
    flops, planes = network_flops(args.depth, args.size, args.size)
    report = {"cpu": cpu, "shape": [args.depth, args.size, args.size], "gemm_peak_tflops":
              {k: v / 1e12 for k, v in peaks.items()}, "network_tflop": flops / 1e12,
              "network_planes": planes, "rows": {}}
    print(f"\nGEMM peak: fp32 {peaks['fp32'] / 1e12:.2f} TFLOP/s, bf16 {peaks['bf16'] / 1e12:.2f} TFLOP/s; "
          f"network {flops / 1e12:.2f} TFLOP per tomogram (on {planes} of {args.depth} planes)\n")
    print("| row | s per tomogram (end to end) | vs seed way | peak RSS GiB | labels = torch fp32 |")
    print("|---|---|---|---|---|")
    seed_s = rows.get("seed", {}).get("seconds")
    for name, row in rows.items():
        agree = None
        if reference is not None:
            labels = np.asarray(read_mrc(row["labels"])[0])
            agree = float((labels == reference).mean())
        speed = f"{seed_s / row['seconds']:.2f}x" if seed_s else "-"
        uncapped = " (not capped: full ISA)" if cpu["isa_cap"] and name == "onnxruntime" else ""
        print(f"| {name}{uncapped} | {row['seconds']:.1f} | {speed} | {row['peak_rss_gib']:.2f} | "
              f"{'-' if agree is None else f'{100 * agree:.2f} %'} |")
        report["rows"][name] = {"seconds": row["seconds"], "peak_rss_gib": row["peak_rss_gib"],
                                "agreement_with_fp32": agree}
    both = ("openvino-int8", "openvino-int8 --all-planes")
    if all(name in rows for name in both):
        skip, every = (np.asarray(read_mrc(rows[name]["labels"])[0]) for name in both)
        found = re.search(r"sample in planes (\d+)-(\d+)", rows[both[0]]["stdout"])
        extent = f"sample in planes {found[1]}-{found[2]} of {args.depth}" if found else "no plane skipped"
        equal = float((skip == every).mean())
        print(f"\nsample extent: {extent}; {rows[both[0]]['seconds']:.1f} s against "
              f"{rows[both[1]]['seconds']:.1f} s for every plane, labels equal on {100 * equal:.2f} %")
        report["sample_extent"] = {"found": extent, "labels_equal": equal}
    for stride in (1, 2, 3):
        both = ("openvino-int8", f"openvino-int8 --plane-stride {stride}")
        if not all(name in rows for name in both):
            continue
        default, strided = (np.asarray(read_mrc(rows[name]["labels"])[0]) for name in both)
        equal = float((default == strided).mean())
        print(f"\nplane stride {stride}: {rows[both[1]]['seconds']:.1f} s against "
              f"{rows[both[0]]['seconds']:.1f} s at stride {default_stride} (the default), labels equal on "
              f"{100 * equal:.2f} %")
        report[f"plane_stride_{stride}"] = {"labels_equal_to_default": equal, "default": default_stride}
    both = ("openvino-int8", "openvino-int8 --double-membrane-max-gap 0")
    if all(name in rows for name in both):
        ruled, plain = (np.asarray(read_mrc(rows[name]["labels"])[0]) for name in both)
        double, single = CLASS_NAMES.index("double_membrane"), CLASS_NAMES.index("single_membrane")
        moved = (ruled == single) & (plain == double)
        print(f"\ndouble-membrane partner rule: {rows[both[0]]['seconds']:.1f} s with it (the default) "
              f"against {rows[both[1]]['seconds']:.1f} s without; {int(moved.sum())} voxels relabelled "
              f"single membrane, all other labels equal: {bool(((ruled == plain) | moved).all())}")
        report["partner_rule"] = {"relabelled_voxels": int(moved.sum())}
    if "torch" in rows:
        rate = flops / rows["torch"]["seconds"]
        bf16 = "" if np.isnan(peaks["bf16"]) else f"{100 * rate / peaks['bf16']:.0f} % of the bf16 peak, "
        print(f"\ntorch row: {rate / 1e12:.2f} TFLOP/s end to end = {bf16}"
              f"{100 * rate / peaks['fp32']:.0f} % of the fp32 one")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
