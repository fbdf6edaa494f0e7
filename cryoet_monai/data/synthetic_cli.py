"""cryoet-monai synth: write a synthetic training set (MRC tomograms, labels, MONAI datalist).

  cryoet-monai synth OUT_DIR --n N [--shape Z Y X] [--voxel-size A] [--seed S]

Writes OUT_DIR/images/synth_0000.mrc ..., OUT_DIR/labels/..., OUT_DIR/datalist.json (split by
tomogram) and OUT_DIR/synthetic.json (every parameter). Without --voxel-size each tomogram
gets a random voxel size in 5-20 A (domain randomisation); with it, all share that voxel size.
Tomograms are made like real ones by default (tilt series, CTF, dose, WBP or SIRT-like);
--mode fourier is the fast approximation. Example:

  cryoet-monai synth data/synth --n 10 --shape 64 256 256 --voxel-size 10
"""

from __future__ import annotations

import argparse
import sys

from cryoet_monai.data.synthetic import STORAGE_DTYPES, SyntheticDataError, write_synthetic_dataset

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "synth",
        help="write synthetic tomograms + labels (MRC) and a MONAI datalist",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("out_dir", metavar="OUT_DIR", help="output folder (images/, labels/, datalist.json)")
    p.add_argument("--n", type=int, required=True, help="number of tomograms")
    p.add_argument("--shape", type=int, nargs=3, default=(64, 256, 256), metavar=("Z", "Y", "X"),
                   help="voxels per tomogram (default 64 256 256)")
    p.add_argument("--voxel-size", type=float, default=None, metavar="Å",
                   help="voxel size for all tomograms (default: random 5-20 Å per tomogram)")
    p.add_argument("--seed", type=int, default=0, help="base random seed (default 0)")
    p.add_argument("--val-fraction", type=float, default=0.2, help="tomograms for validation (default 0.2)")
    p.add_argument("--test-fraction", type=float, default=0.1, help="tomograms for test (default 0.1)")
    p.add_argument("--dtype", default="float32", choices=(*STORAGE_DTYPES, "random"),
                   help="storage dtype of the tomograms (default float32; 'random' varies it)")
    p.add_argument("--mode", choices=("tilt_series", "fourier"), default="tilt_series",
                   help="image formation: a simulated tilt series + WBP/SIRT-like (default) or the fast "
                   "3-D Fourier filter")
    p.add_argument("--dose", type=float, default=None, metavar="E_PER_A2",
                   help="total dose of the tilt series in e/A^2 (default random 60-180; tilt_series mode)")
    p.add_argument("--snr", type=float, default=None,
                   help="fixed SNR per voxel (fourier mode; default random 0.5-2); "
                   "'inf' = noise-free in both modes")
    p.add_argument("--tilt-range", type=float, nargs=2, default=None, metavar=("MIN", "MAX"),
                   help="tilt range in degrees (default random around -60 60)")
    p.add_argument("--tilt-step", type=float, default=None, help="tilt step in degrees, 0 = continuous")
    p.add_argument("--defocus", type=float, default=None, metavar="µm",
                   help="defocus in µm, negative = underfocus (default random -8..-1.5)")
    p.add_argument("--phase-flip", choices=("yes", "no"), default=None,
                   help="CTF phase flipping (default random)")
    p.add_argument("--invert", action="store_true", help="dense material bright (default: raw, dense dark)")
    p.add_argument("--overwrite", action="store_true", help="regenerate even if the same dataset exists")
    p.add_argument("--quiet", action="store_true", help="no per-tomogram lines")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    options = {"invert": args.invert, "mode": args.mode}
    for key, value in (("snr", args.snr), ("tilt_range", args.tilt_range), ("tilt_step", args.tilt_step),
                       ("defocus_um", args.defocus), ("dose", args.dose)):
        if value is not None:
            options[key] = tuple(value) if isinstance(value, list) else value
    if args.phase_flip is not None:
        options["phase_flip"] = args.phase_flip == "yes"
    try:
        path = write_synthetic_dataset(
            args.out_dir,
            args.n,
            shape=tuple(args.shape),
            voxel_size=args.voxel_size if args.voxel_size is not None else 10.0,
            seed=args.seed,
            val_fraction=args.val_fraction,
            test_fraction=args.test_fraction,
            randomize_voxel_size=args.voxel_size is None,
            storage_dtype=args.dtype,
            overwrite=args.overwrite,
            verbose=not args.quiet,
            **options,
        )
    except (SyntheticDataError, OSError) as err:
        print(f"cryoet-monai synth: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0
