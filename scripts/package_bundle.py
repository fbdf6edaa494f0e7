#!/usr/bin/env python
"""Package this checkout as a MONAI model-zoo bundle (folder + zip) and verify it offline.

    python scripts/package_bundle.py --output_dir dist/bundle
    python scripts/package_bundle.py --output_dir dist/bundle --no-verify
    python scripts/package_bundle.py --verify-only dist/bundle/cryoet_segmentation

Prints one line per check and writes ``<output_dir>/verification.json``; exits 1 if any check failed.
See scripts/bundle_tools.py (development tooling, not installed with the package) for what is
packaged and checked.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from bundle_tools import (  # scripts/, this script's folder
    DEFAULT_BUNDLE_NAME,
    VERIFY_CHECKS,
    BundleError,
    package_bundle,
    verify_bundle,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--output_dir", type=Path, default=Path("dist/bundle"), help="where <name>/ and <name>.zip go"
    )
    parser.add_argument("--name", default=DEFAULT_BUNDLE_NAME, help="bundle folder name")
    parser.add_argument(
        "--weights", type=Path, default=None, help="state_dict to ship (default models/model.pt)"
    )
    parser.add_argument("--repo_root", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument(
        "--network-overrides",
        type=json.loads,
        default=None,
        metavar="JSON",
        help="keys merged into every packaged network_def, e.g. '{\"features\": [16, 32, 64, 128, 256]}'",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing bundle of that name")
    parser.add_argument(
        "--no-verify", dest="verify", action="store_false", help="only build the folder and zip"
    )
    parser.add_argument("--checks", nargs="+", default=list(VERIFY_CHECKS), choices=VERIFY_CHECKS)
    parser.add_argument(
        "--verify-only",
        type=Path,
        default=None,
        metavar="BUNDLE_DIR",
        help="verify an existing bundle folder instead of building one",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    try:
        if args.verify_only is not None:
            checks = verify_bundle(args.verify_only, checks=args.checks)
            summary = {"bundle_dir": str(args.verify_only), "checks": [c.__dict__ for c in checks]}
            out_json = args.verify_only.parent / "verification.json"
        else:
            report = package_bundle(
                args.output_dir,
                args.repo_root,
                args.name,
                args.weights,
                args.network_overrides,
                verify=args.verify,
                checks=args.checks,
                overwrite=args.overwrite,
            )
            checks, summary = report.checks, report.to_dict()
            out_json = args.output_dir / "verification.json"
            print(f"bundle: {report.bundle_dir}\nzip:    {report.zip_path}")
    except BundleError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for c in checks:
        print(f"{'PASS' if c.passed else 'FAIL'} {c.name:<18} {c.seconds:7.1f} s  {c.detail}")
    out_json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0 if all(c.passed for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
