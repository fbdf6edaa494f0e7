"""The ``cryoet-monai`` command line: one entry point, one sub-command per task.

Each sub-command lives next to the code it drives and exposes ``add_parser(subparsers)``
(which registers its arguments and sets ``func``); this module only dispatches.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# sub-command name -> module exposing ``add_parser(subparsers)``
_SUBCOMMANDS: dict[str, str] = {
    "synth": "cryoet_monai.data.synthetic_cli",
    "segment": "cryoet_monai.inference.cli",
    "finetune": "cryoet_monai.finetune_cli",
}


def build_parser() -> argparse.ArgumentParser:
    from cryoet_monai import __version__

    parser = argparse.ArgumentParser(
        prog="cryoet-monai",
        description="Automatic annotation of cryo-electron tomograms (MONAI): labels 0 background, "
        "1 microtubule, 2 ribosome, 3 double membrane, 4 single membrane, 5 carbon edge.",
        epilog="example: cryoet-monai segment tomo.mrc -o out/   (then open out/tomo_seg.mrc in napari, "
        "IMOD 3dmod or ChimeraX)",
    )
    parser.add_argument("--version", action="version", version=f"cryoet-monai {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in _SUBCOMMANDS.values():
        importlib.import_module(module).add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
