"""``cryoet-monai segment``: segment tomograms from the command line.

The command builds the same :class:`~cryoet_monai.inference.engine.TomogramSegmenter` as
``python -m monai.bundle run --config_file configs/inference.json``: it loads the bundle's
``configs/inference.json`` (+ ``configs/metadata.json`` as ``_meta_``), overrides the keys given on the
command line and runs the config's ``segmenter``. Without ``--model`` the bundle's ``models/model.pt``
is used; ``--config`` points to another bundle (its folder) or another inference config file.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_parser", "find_bundle_config", "build_segmenter", "main"]

_PACKAGE_BUNDLE = Path(__file__).resolve().parents[2]  # repository / bundle root of this package


def _installed_bundle() -> Path:
    """The bundle shipped inside an installed wheel (``cryoet_monai/shipped``, see setup.py)."""
    from importlib.resources import files

    return Path(str(files("cryoet_monai") / "shipped"))


def find_bundle_config(config: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """``(inference config file, bundle root)`` for ``--config`` (a bundle folder or a JSON/YAML file).

    Without ``config``: ``./configs/inference.json`` if present, else the checkout this package lives
    in, else the bundle shipped inside the installed package.
    """
    if config is None:
        candidates = [Path.cwd(), _PACKAGE_BUNDLE, _installed_bundle()]
    else:
        path = Path(config).expanduser()
        if path.is_file():
            root = path.parent.parent if path.parent.name == "configs" else path.parent
            return path, root
        candidates = [path]
    for root in candidates:
        file = root / "configs" / "inference.json"
        if file.is_file():
            return file, root
    where = config if config is not None else f"{Path.cwd()} or {_PACKAGE_BUNDLE}"
    raise FileNotFoundError(f"no bundle inference config (configs/inference.json) found in {where}.")


def build_segmenter(config: str | os.PathLike | None = None, **overrides: Any) -> Any:
    """Parse the bundle's inference config with ``overrides`` (config ids -> values); returns the parser.

    ``parser.get_parsed_content("segmenter")`` is then the ready :class:`TomogramSegmenter`.
    """
    from monai.bundle import ConfigParser

    file, root = find_bundle_config(config)
    parser = ConfigParser()
    parser.read_config(file)
    meta = file.parent / "metadata.json"
    if meta.is_file():
        parser.read_meta(meta)
    parser["bundle_root"] = str(root)
    for key, value in overrides.items():
        parser[key] = value
    return parser


def resolve_model(model: str | os.PathLike | None) -> tuple[Path | None, dict[str, Any]]:
    """``(config, overrides)`` for :func:`build_segmenter` from what a user names as the model (``--model``,
    the napari widget's field, the copick command's option).

    ``None``: the shipped bundle. A folder: a model folder or bundle, which describes itself (its own
    ``configs/inference.json`` and ``models/model.pt``). An ``.json``/``.yaml`` file: that inference
    config. ``<folder>/models/model.pt`` of a model folder: that folder's network with those weights.
    Any other file: a ``state_dict`` for the shipped network (``model_path``)."""
    if model is None or str(model).strip() in ("", "."):
        return None, {}
    path = Path(model).expanduser()
    if path.is_dir() or path.suffix.lower() in (".json", ".yaml", ".yml"):
        return path, {}
    root = path.parent.parent
    if path.parent.name == "models" and (root / "configs" / "inference.json").is_file():
        return root, {"model_path": str(path)}
    return None, {"model_path": str(path)}


def _positive_float(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a length >= 0, got {text}")
    return value


def _overlap(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def _int_range(lo: int, hi: int | None = None) -> Any:
    def parse(text: str) -> int:
        value = int(text)
        if value < lo or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(
                f"must be {lo}..{hi}, got {text}" if hi is not None else f"must be >= {lo}, got {text}"
            )
        return value

    parse.__name__ = "int"  # argparse names the type in "invalid int value"
    return parse


def _count_action(counts: tuple[int, ...], what: str) -> type[argparse.Action]:
    """An ``nargs="+"`` action that accepts only ``counts`` values (``parser.error`` otherwise)."""

    class CountAction(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None):
            if len(values) not in counts:
                parser.error(f"argument {option_string}: takes {what}, got {len(values)} values")
            setattr(namespace, self.dest, values[0] if len(values) == 1 else list(values))

    return CountAction


def _stop_on_signal(signum: int, frame: Any) -> None:
    print(f"interrupted by {signal.Signals(signum).name}: unfinished outputs removed, finished ones kept",
          file=sys.stderr, flush=True)
    sys.exit(128 + signum)


def run(args: argparse.Namespace) -> int:
    """Entry point of ``cryoet-monai segment``; exit status 1 when any input failed."""
    from cryoet_monai.engines.errors import error_line, innermost_error
    from cryoet_monai.inference.engine import InferenceError

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # SIGTERM (a batch scheduler), SIGINT (Ctrl-C) and SIGHUP (terminal closed) unwind the same way:
    # one line, temporary outputs removed, exit 128 + signal
    for sig in (signal.SIGTERM, signal.SIGINT, getattr(signal, "SIGHUP", None)):
        if sig is not None:
            signal.signal(sig, _stop_on_signal)
    overrides: dict[str, Any] = {"input": [str(p) for p in args.inputs], "output_dir": str(args.output_dir)}
    config = args.config
    model_config, model_overrides = resolve_model(args.model)
    if model_config is not None:
        # a model folder (fine-tuned or packaged) describes itself: its own configs and weights
        if config is not None:
            print("error: give either --config or a model folder as --model, not both", file=sys.stderr)
            return 2
        config = model_config
    overrides.update(model_overrides)
    optional = {
        "device": args.device,
        "sw_batch_size": args.batch_size,
        "precision": args.precision,
        "backend": args.backend,
        "roi_size": args.roi_size,
        "overlap": args.overlap,
        "slab_size": args.slab_size,
        "plane_stride": args.plane_stride,
        "min_component_size": args.min_size,
        "invert": args.invert,
        "output_format": args.format,
    }
    if args.skip_existing:
        overrides["overwrite"] = False
    overrides.update({k: v for k, v in optional.items() if v is not None})
    if args.voxel_size is not None:
        overrides["voxel_size"] = args.voxel_size
    if args.double_membrane_max_gap is not None:
        overrides["double_membrane_max_gap"] = args.double_membrane_max_gap  # 0: off
    if args.tta_n is not None or args.tta is not None:
        overrides["tta"] = args.tta_n if args.tta_n is not None else args.tta
    for flag, key in (("probs", "save_probs"), ("uncertainty", "save_uncertainty"), ("compile", "compile"),
                      ("preview", "preview")):
        if getattr(args, flag):
            overrides[key] = True
    if args.no_resample:
        overrides["resample"] = False
    if args.all_planes:
        overrides["sample_extent"] = False
    if args.no_progress:
        overrides["progress"] = False
    try:
        parser = build_segmenter(config, **overrides)
        segmenter = parser.get_parsed_content("segmenter")
        inputs, output_dir = parser.get_parsed_content("input"), parser.get_parsed_content("output_dir")
    except (RuntimeError, ValueError, AssertionError, OSError) as err:
        # a bad option or model: one line, not ConfigParser's chain of wrapped tracebacks
        print(error_line(innermost_error(err)), file=sys.stderr)
        return 2
    try:
        results = segmenter(inputs, output_dir)
    except InferenceError as err:
        if len(err.results) != 1:  # one input: its own line above says it all
            print(f"error: {err}", file=sys.stderr)
        return _failure_status(err.results)
    failed = [r for r in results if "error" in r]
    if failed:
        print(f"{len(failed)} of {len(results)} tomograms failed (see the messages above).", file=sys.stderr)
        return 1
    return 0


def _failure_status(failed: list[dict[str, Any]]) -> int:
    """Nothing was segmented: 2 when every file only needs an option from the user (its voxel size),
    a usage error like a bad option; else 1 (files failed)."""
    return 2 if failed and all(r.get("needs_voxel_size") for r in failed) else 1


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``segment`` on the ``cryoet-monai`` command line."""
    p = subparsers.add_parser(
        "segment",
        help="segment tomograms (MRC) into labels 0-5",
        description="Segment whole tomograms with the shipped model (or --model); writes <name>_seg.mrc "
        "per input (and <name>_probs.mrc / <name>_uncertainty.mrc / a preview on request) into the output "
        "folder, same grid, voxel size and origin as the input. Inputs may be MRC files, globs, folders or "
        "a datalist JSON; dense material is expected dark (--invert auto checks). Under torchrun the inputs "
        "are shared across ranks.",
        epilog="labels: 0 background, 1 microtubule, 2 ribosome, 3 double membrane, 4 single membrane, "
        "5 carbon edge.  example: cryoet-monai segment tomo.mrc -o out/ --preview  "
        "(then napari out/tomo_seg.mrc, or 3dmod tomo.mrc out/tomo_seg.mrc)",
    )
    p.add_argument("inputs", nargs="+", help="tomogram files, glob patterns, folders or a datalist .json")
    p.add_argument("-o", "--output-dir", required=True, type=Path, help="output folder")
    p.add_argument("--model", type=Path,
                   help="a model folder (configs/ + models/model.pt, e.g. from 'finetune') or a state_dict "
                   "checkpoint for the config's network (default: the shipped model)")
    p.add_argument("--config", help="bundle folder or inference config file (default: this package's bundle)")
    p.add_argument(
        "--tta", action="store_const", const=8, help="test-time augmentation: 8 in-plane flips/rotations"
    )
    p.add_argument(
        "--tta-n",
        type=_int_range(1, 8),
        metavar="N",
        help="test-time augmentation with the first N (1-8) of them",
    )
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: the GPU of this rank if any, else cpu)")
    p.add_argument("--batch-size", type=_int_range(1), help="windows (slices) per forward pass")
    p.add_argument(
        "--voxel-size",
        type=_positive_float,
        nargs="+",
        action=_count_action((1, 3), "one value or three (z y x)"),
        metavar="A",
        help="voxel size in Å (one value or z y x), overriding the file headers",
    )
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], help="compute precision")
    p.add_argument("--backend", choices=["auto", "torch", "onnxruntime", "openvino", "openvino-int8"],
                   help="CPU runtime for the same weights (default: the config's; see docs/inference.md)")
    p.add_argument(
        "--roi-size",
        type=int,
        nargs="+",
        action=_count_action((1, 2, 3), "one value, two (y x, 2-D models) or three (z y x, 3-D models)"),
        help="window size, e.g. 512 512 (-1 -1: whole slices)",
    )
    p.add_argument("--overlap", type=_overlap, help="sliding-window overlap, 0 <= overlap < 1")
    p.add_argument("--slab-size", type=_int_range(1), help="z-slices read and predicted at a time")
    p.add_argument("--plane-stride", type=_int_range(1), metavar="S",
                   help="2-D / 2.5-D models: run the network on every S-th plane and interpolate the "
                   "probabilities between (about 1/S of the compute; default: the config's, 2; "
                   "1 = every plane)")
    p.add_argument(
        "--min-size", type=_int_range(0), help="drop connected components smaller than this (voxels)"
    )
    p.add_argument("--double-membrane-max-gap", type=_non_negative, metavar="A",
                   help="two bilayers closer than this (Å) are a double membrane; double-membrane voxels "
                   "without such a partner become single membrane (default: the config's, 500; 0 = off)")
    p.add_argument(
        "--invert",
        choices=["auto", "yes", "no"],
        help="contrast polarity: 'no' = dense material dark (the model's convention), 'yes' = dense bright "
        "(negated before segmenting), 'auto' (default) = decided per tomogram by the model's confidence",
    )
    p.add_argument("--format", choices=["mrc", "zarr"],
                   help="label output: <name>_seg.mrc (default) or <name>_seg.zarr (OME-Zarr, NGFF labels "
                   "with class names and colours; needs the zarr extra)")
    p.add_argument("--probs", action="store_true", help="also write <name>_probs.mrc (float16, 6 channels)")
    p.add_argument("--uncertainty", action="store_true", help="also write <name>_uncertainty.mrc (entropy)")
    p.add_argument("--preview", action="store_true",
                   help="also write <name>_preview.png (central xy/xz/yz slices with the labels) and "
                   "<name>_summary.json (class fractions, uncertainty, polarity, voxel size, model, timings)")
    p.add_argument("--no-resample", action="store_true", help="never resample to the model's voxel size")
    p.add_argument("--all-planes", action="store_true",
                   help="segment every plane; by default the planes above and below the sample (found by "
                   "probing every 8th plane from each end) are labelled background without segmenting them")
    p.add_argument("--skip-existing", action="store_true",
                   help="skip tomograms whose <name>_seg.mrc exists (resume a batch); default: overwrite")
    p.add_argument("--compile", action="store_true", help="torch.compile the network (slow first slab)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cryoet-monai")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["segment", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
