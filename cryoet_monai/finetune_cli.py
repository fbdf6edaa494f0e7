"""``cryoet-monai finetune``: adapt a model to your tomograms from a few painted slices.

    cryoet-monai finetune TOMO [TOMO ...] --labels PAINTED [PAINTED ...] -o my_model/
    cryoet-monai segment TOMO -o out/ --model my_model/

Paint a few slices in napari (a Labels layer over the tomogram, saved as-is: MRC or TIFF):
0 = not painted, 1 microtubule, 2 ribosome, 3 double membrane, 4 single membrane, 5 carbon
edge, 6 = background. Everything unpainted is ignored. Starts from the shipped model (or
--model), stops when the held-back painted slices stop improving or after --minutes, and writes
a new model folder; the source model is never changed. See docs/finetune.md.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``finetune`` on the ``cryoet-monai`` command line."""
    p = subparsers.add_parser(
        "finetune",
        help="fine-tune the model on a few painted slices of your tomograms",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("tomograms", nargs="+", type=Path, help="MRC tomograms")
    p.add_argument("--labels", nargs="+", type=Path, required=True,
                   help="painted label volumes, one per tomogram, same grid (MRC or TIFF)")
    p.add_argument("-o", "--output-dir", type=Path, required=True, help="the new model folder")
    p.add_argument("--model", type=Path, help="model folder to start from (default: the shipped model)")
    p.add_argument("--minutes", type=float, default=8.0, help="time budget of the training (default 8)")
    p.add_argument("--voxel-size", type=float, help="voxel size in Å when the headers are wrong or unset")
    p.add_argument("--invert", choices=["auto", "yes", "no"], default="auto", help="contrast polarity")
    p.add_argument("--no-adapt-norms", dest="adapt_norms", action="store_false",
                   help="keep the source model's batch-norm statistics (default: re-estimate them on the "
                        "tomograms first, kept when that scores better on the held-back slices)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--segment", action="store_true",
                   help="then segment the tomograms with the new model into OUTPUT_DIR/segmentations/")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from cryoet_monai.finetune import FinetuneError, finetune

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        folder = finetune(
            args.tomograms, args.labels, args.output_dir, model=args.model, minutes=args.minutes,
            voxel_size=args.voxel_size, invert=args.invert, adapt_norms=args.adapt_norms,
            overwrite=args.overwrite,
        )
    except (FinetuneError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; no model written", file=sys.stderr)
        return 130
    print(f"fine-tuned model: {folder}  (use: cryoet-monai segment TOMO -o out/ --model {folder})")
    if args.segment:
        from cryoet_monai.inference.cli import main as segment_main

        return segment_main([*map(str, args.tomograms), "-o", str(folder / "segmentations"),
                             "--model", str(folder), "--invert", args.invert])
    return 0
