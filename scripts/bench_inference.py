#!/usr/bin/env python
"""Benchmark whole-tomogram inference on this machine (CPU or GPU).

Measures, in one run, on a synthetic tomogram written to a temporary folder:

(a) our pipeline (:class:`cryoet_monai.inference.TomogramSegmenter`, default settings: whole slices,
    several per batch, bf16/fp16 autocast where supported, channels-last, streaming MRC output);
(b) the seed pipeline's way: the paper-size U-Net in fp32 over each full slice, one slice per
    forward, argmax;
(c) dense GEMMs in fp32 and in the pipeline's dtype, i.e. this machine's practical peak FLOP/s;

and prints the model's FLOPs per slice, achieved FLOP/s of (a) and (b), their ratio to the GEMM
peak of the same dtype, the speed-up of (a) over (b), and the peak RSS of each step (every step runs
in its own subprocess so that peaks do not mix). Finally it streams a full-size tomogram (default
128x1024x1024 float32) through (a) with a narrow network to show that peak RSS does not grow with
the tomogram (the paper-size net would take tens of minutes on a 2-core CPU).

Usage::

    python scripts/bench_inference.py                     # 4 slices of 1024^2, paper-size net
    python scripts/bench_inference.py --slices 8 --size 512 --rss-depth 256
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

PAPER_FEATURES = [64, 128, 256, 512, 1024]
CHEAP_FEATURES = [8, 16, 32, 64, 128]


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


class _RssSampler(threading.Thread):
    """Peak anonymous and file-backed resident memory, sampled from /proc/self/status (Linux).

    ``ru_maxrss`` counts resident pages of memory-mapped files too; those are page cache (the
    kernel can drop them), so the split shows what the process really holds.
    """

    def __init__(self, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.peak = {"RssAnon": 0.0, "RssFile": 0.0}
        self.stop = threading.Event()

    def sample(self) -> None:
        try:
            text = Path("/proc/self/status").read_text()
        except OSError:
            return
        for line in text.splitlines():
            key, _, value = line.partition(":")
            if key in self.peak:
                self.peak[key] = max(self.peak[key], float(value.split()[0]) / 1024.0)

    def run(self) -> None:
        while not self.stop.is_set():
            self.sample()
            time.sleep(self.interval)


def _network(features: list[int]) -> torch.nn.Module:
    from cryoet_monai import PaperUNet

    torch.manual_seed(0)
    return PaperUNet(spatial_dims=2, in_channels=1, out_channels=6, features=features).eval()


def flops_per_slice(features: list[int], ny: int, nx: int) -> float:
    """Forward FLOPs (2 x multiply-adds of convolutions) of one ``(1, 1, ny, nx)`` slice."""
    from torch.utils.flop_counter import FlopCounterMode

    net = _network(features).to("meta")  # shapes only: counting costs nothing
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        net(torch.zeros(1, 1, ny, nx, device="meta"))
    return float(counter.get_total_flops())


def write_tomogram(path: Path, shape: tuple[int, int, int], voxel_size: float) -> None:
    """A synthetic tomogram streamed to disk plane by plane (never whole in memory)."""
    from cryoet_monai.data.synthetic import generate_tomogram
    from cryoet_monai.io.mrc import create_mrc

    # 16 generated slices repeated along z: realistic content without generating a huge volume
    image, _ = generate_tomogram(shape=(16, *shape[1:]), voxel_size=voxel_size, seed=0)
    with create_mrc(path, shape, np.float32, voxel_size=voxel_size) as out:
        for z in range(shape[0]):
            out[z] = image[z % len(image)]


# ---------------------------------------------------------------------------- steps (subprocesses)
def step_gemm(args: argparse.Namespace) -> dict:
    """Best FLOP/s of square matmuls (several sizes, best of N) in fp32 and in the pipeline's dtype."""
    device = torch.device(args.device)
    out = {}
    for name, dtype in (("fp32", torch.float32), (args.dtype, getattr(torch, _TORCH_DTYPE[args.dtype]))):
        rate = 0.0
        for n in args.gemm_size:
            a = torch.randn(n, n, device=device).to(dtype)
            b = torch.randn(n, n, device=device).to(dtype)
            torch.mm(a, b)  # warm-up
            for _ in range(args.gemm_reps):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t = time.perf_counter()
                torch.mm(a, b)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                rate = max(rate, 2.0 * n**3 / (time.perf_counter() - t))
        out[name] = rate
    return out


def _segmenter(args: argparse.Namespace, features, all_outputs: bool = False):
    """Pipeline (a) with this run's device, precision and batching."""
    from cryoet_monai.inference import TomogramSegmenter

    return TomogramSegmenter(
        _network(features),
        device=args.device,
        precision=args.precision,
        sw_batch_size=args.batch_size,
        slab_size=args.slab_size,
        model_voxel_size=args.voxel_size,
        save_probs=all_outputs,
        save_uncertainty=all_outputs,
        progress=False,
    )


def step_ours(args: argparse.Namespace) -> dict:
    seg = _segmenter(args, args.features)
    # warm-up on one slab-sized tomogram (oneDNN primitive creation), not timed
    warm = Path(args.tmp) / "warm.mrc"
    write_tomogram(warm, (2, args.size, args.size), args.voxel_size)
    seg.segment(warm, Path(args.tmp) / "warm_out")
    t = time.perf_counter()
    result = seg.segment(args.input, Path(args.tmp) / "out")
    seconds = time.perf_counter() - t
    return {"seconds": seconds, "dtype": str(seg.autocast_dtype), "fractions": result["class_fractions"]}


def step_seed(args: argparse.Namespace) -> dict:
    """The seed pipeline: fp32, one full slice per forward, argmax (no I/O streaming tricks)."""
    from cryoet_monai.io.mrc import read_mrc
    from cryoet_monai.transforms.intensity import RobustNormalizeIntensity

    device = torch.device(args.device)
    net = _network(args.features).to(device)
    volume, _ = read_mrc(args.input)
    norm = RobustNormalizeIntensity().fit(volume)
    with torch.no_grad():  # warm-up
        net(torch.zeros(1, 1, args.size, args.size, device=device))
    t = time.perf_counter()
    labels = np.zeros(volume.shape, np.uint8)
    with torch.no_grad():
        for z in range(volume.shape[0]):
            x = torch.as_tensor(norm(np.asarray(volume[z], np.float32)))[None, None].to(device)
            labels[z] = net(x).argmax(1)[0].cpu().numpy()
    return {"seconds": time.perf_counter() - t}


def step_rss(args: argparse.Namespace) -> dict:
    """Stream a big tomogram through the pipeline with a narrow network; report time and peak RSS."""
    seg = _segmenter(args, CHEAP_FEATURES, all_outputs=args.all_outputs)
    t = time.perf_counter()
    seg.segment(args.input, Path(args.tmp) / "rss_out")
    shutil.rmtree(Path(args.tmp) / "rss_out")
    return {"seconds": time.perf_counter() - t}


_STEPS = {"gemm": step_gemm, "ours": step_ours, "seed": step_seed, "rss": step_rss}
_TORCH_DTYPE = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def _run_step(name: str, argv: list[str], extra: list[str]) -> dict:
    """Run one step in a fresh interpreter; returns its JSON result plus its peak RSS."""
    cmd = [sys.executable, __file__, *argv, "--step", name, *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"step {name} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--slices", type=int, default=4, help="slices of the speed tomogram")
    p.add_argument("--repeats", type=int, default=2, help="timed runs of each pipeline (best is kept)")
    p.add_argument("--size", type=int, default=1024, help="in-plane size (Y = X)")
    p.add_argument("--features", type=int, nargs="+", default=PAPER_FEATURES, help="U-Net widths")
    p.add_argument("--batch-size", type=int, default=None, help="slices per forward in (a) (default: auto)")
    p.add_argument("--slab-size", type=int, default=8, help="z-slices per slab in (a)")
    p.add_argument("--precision", default="auto", help="precision of (a)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--rss-depth", type=int, default=128, help="slices of the streaming RSS tomogram (0: skip)"
    )
    p.add_argument("--gemm-size", type=int, nargs="+", default=[2048, 4096], help="matmul sizes for the peak")
    p.add_argument("--gemm-reps", type=int, default=5)
    p.add_argument("--voxel-size", type=float, default=10.0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--json", type=Path, help="also write the results here")
    # internal
    p.add_argument("--step", choices=sorted(_STEPS), help=argparse.SUPPRESS)
    p.add_argument("--input", help=argparse.SUPPRESS)
    p.add_argument("--tmp", help=argparse.SUPPRESS)
    p.add_argument("--dtype", default="bf16", help=argparse.SUPPRESS)
    p.add_argument("--all-outputs", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.step:  # child process: one measurement, JSON on the last stdout line
        sampler = _RssSampler()
        sampler.start()
        result = _STEPS[args.step](args)
        sampler.stop.set()
        sampler.sample()
        result["peak_rss_mib"] = _peak_rss_mib()
        result["peak_anon_mib"] = sampler.peak["RssAnon"]
        result["peak_file_mib"] = sampler.peak["RssFile"]
        print(json.dumps(result))
        return

    from cryoet_monai.inference.predictor import resolve_autocast_dtype

    autocast = resolve_autocast_dtype(args.precision, torch.device(args.device))
    dtype = {torch.bfloat16: "bf16", torch.float16: "fp16", None: "fp32"}[autocast]
    base = [a for a in sys.argv[1:] if a != "--json"]
    if args.json is not None:  # drop the --json value too
        i = sys.argv.index("--json")
        base = sys.argv[1:i] + sys.argv[i + 2 :]
    with tempfile.TemporaryDirectory(prefix="bench_inference_") as tmp:
        speed = Path(tmp) / "speed.mrc"
        write_tomogram(speed, (args.slices, args.size, args.size), args.voxel_size)
        common = ["--tmp", tmp, "--dtype", dtype]
        gemm = _run_step("gemm", base, common)
        # alternate the two pipelines so that both see the same (possibly shared) machine; keep the best
        runs: dict[str, list[dict]] = {"ours": [], "seed": []}
        for _ in range(args.repeats):
            for name in runs:
                runs[name].append(_run_step(name, base, [*common, "--input", str(speed)]))
        ours, seed = (min(runs[name], key=lambda r: r["seconds"]) for name in ("ours", "seed"))
        for name, r in (("ours", ours), ("seed", seed)):
            r["all_seconds"] = [x["seconds"] for x in runs[name]]
            r["peak_rss_mib"] = max(x["peak_rss_mib"] for x in runs[name])
            r["peak_anon_mib"] = max(x["peak_anon_mib"] for x in runs[name])
            r["peak_file_mib"] = max(x["peak_file_mib"] for x in runs[name])
        # the CPU may be shared: measure the peak again after the pipelines and keep the best
        gemm2 = _run_step("gemm", base, common)
        gemm = {k: max(v, gemm2[k]) for k, v in gemm.items() if k != "peak_rss_mib" and k in (dtype, "fp32")}
        rss = {}
        if args.rss_depth > 0:
            big = Path(tmp) / "big.mrc"
            write_tomogram(big, (args.rss_depth, args.size, args.size), args.voxel_size)
            rss["seg"] = _run_step("rss", base, [*common, "--input", str(big)])
            rss["seg + probs + uncertainty"] = _run_step(
                "rss", base, [*common, "--input", str(big), "--all-outputs"]
            )

    flops = flops_per_slice(args.features, args.size, args.size)
    total = flops * args.slices
    a_rate, b_rate = total / ours["seconds"], total / seed["seconds"]
    rows = {
        "machine": f"{os.cpu_count()} CPU threads visible, torch {torch.__version__}, device {args.device}",
        "model_gflop_per_slice": flops / 1e9,
        "slices": args.slices,
        "size": args.size,
        "features": args.features,
        "gemm_peak_gflops": {k: v / 1e9 for k, v in gemm.items()},
        "ours": {
            "dtype": dtype,
            "seconds": ours["seconds"],
            "s_per_slice": ours["seconds"] / args.slices,
            "all_seconds": ours["all_seconds"],
            "gflops": a_rate / 1e9,
            "fraction_of_peak": a_rate / gemm[dtype],
            "peak_rss_mib": ours["peak_rss_mib"],
            "peak_anon_mib": ours["peak_anon_mib"],
            "peak_file_mib": ours["peak_file_mib"],
        },
        "seed": {
            "dtype": "fp32",
            "seconds": seed["seconds"],
            "s_per_slice": seed["seconds"] / args.slices,
            "all_seconds": seed["all_seconds"],
            "gflops": b_rate / 1e9,
            "fraction_of_peak": b_rate / gemm["fp32"],
            "peak_rss_mib": seed["peak_rss_mib"],
            "peak_anon_mib": seed["peak_anon_mib"],
            "peak_file_mib": seed["peak_file_mib"],
        },
        "speedup": seed["seconds"] / ours["seconds"],
        "gemm_ratio": gemm[dtype] / gemm["fp32"],
    }
    rows["streaming"] = [
        {
            "shape": [args.rss_depth, args.size, args.size],
            "input_gib": args.rss_depth * args.size**2 * 4 / 2**30,
            "features": CHEAP_FEATURES,
            "outputs": outputs,
            "seconds": r["seconds"],
            "peak_rss_mib": r["peak_rss_mib"],
            "peak_anon_mib": r["peak_anon_mib"],
            "peak_file_mib": r["peak_file_mib"],
        }
        for outputs, r in rss.items()
    ]
    print(json.dumps(rows, indent=2))
    print()
    print(f"model: {flops / 1e9:.1f} GFLOP per {args.size}x{args.size} slice, features {args.features}")
    print(f"GEMM peak: fp32 {gemm['fp32'] / 1e9:.0f} GFLOP/s, {dtype} {gemm[dtype] / 1e9:.0f} GFLOP/s")
    print("| pipeline | dtype | s/slice | GFLOP/s | % of same-dtype GEMM peak | peak RSS (anon + file) |")
    print("|---|---|---|---|---|---|")
    for name, r in (("(a) ours", rows["ours"]), ("(b) seed way", rows["seed"])):
        print(
            f"| {name} | {r['dtype']} | {r['s_per_slice']:.2f} | {r['gflops']:.0f} | "
            f"{100 * r['fraction_of_peak']:.0f} % | {r['peak_rss_mib']:.0f} MiB "
            f"({r['peak_anon_mib']:.0f} + {r['peak_file_mib']:.0f}) |"
        )
    print(
        f"speed-up (a) over (b): {rows['speedup']:.2f}x (GEMM {dtype}/fp32 ratio {rows['gemm_ratio']:.2f}x)"
    )
    for r in rows["streaming"]:
        print(
            f"streaming {r['shape']} float32 ({r['input_gib']:.2f} GiB), narrow net, {r['outputs']}: "
            f"{r['seconds']:.0f} s, peak RSS {r['peak_rss_mib']:.0f} MiB "
            f"(anonymous {r['peak_anon_mib']:.0f} MiB, memory-mapped files {r['peak_file_mib']:.0f} MiB)"
        )
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
