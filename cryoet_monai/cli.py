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
    parser = argparse.ArgumentParser(
        prog="cryoet-monai", description="Automatic annotation of cryo-electron tomograms (MONAI)."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in _SUBCOMMANDS.values():
        importlib.import_module(module).add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
