"""Table-1 style F1 table of a trained bundle: whole-slice F1 on the training and validation tomograms.

Uses the bundle's own validation pipeline (``validate#preprocessing``, ``validate#inferer``, the
confusion-matrix metric) with the weights in ``<bundle_root>/models/model.pt``, once per split::

    python scripts/training_table.py --config configs/train.json configs/quick.json --bundle_root . \
        [--slice_stride 4] [--json table.json]

Prints a Markdown table (rows TRAINING / VALIDATION F1, columns as in the paper's Table 1).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from monai.bundle import ConfigWorkflow

from cryoet_monai import CLASS_NAMES

COLUMNS = ("NOISE", "MICROTUBULE", "RIBOSOME", "DOUBLE MEMBRANE", "SINGLE MEMBRANE", "CARBON EDGE")


def split_scores(configs: list[str], bundle_root: str, split: str, slice_stride: int) -> dict:
    wf = ConfigWorkflow(
        config_file=configs,
        meta_file=str(Path(configs[0]).parent / "metadata.json"),
        logging_file=False,
        workflow_type=None,
        bundle_root=bundle_root,
        **{
            "validate#dataset#data": f"$monai.data.load_decathlon_datalist(@datalist, True, '{split}')",
            "validate#slice_stride": slice_stride,
            "validate#evaluator#val_handlers": None,
        },
    )
    wf.initialize()
    network = wf.parser.get_parsed_content("network")
    state = torch.load(Path(bundle_root) / "models" / "model.pt", map_location="cpu", weights_only=True)
    getattr(network, "module", network).load_state_dict(state)
    evaluator = wf.parser.get_parsed_content("validate#evaluator")
    evaluator.run()
    metric = wf.parser.get_parsed_content("validate#key_metric#val_mean_fg_f1").metric_fn
    return metric.scores()


def markdown(rows: dict[str, dict]) -> str:
    head = "| | " + " | ".join(COLUMNS) + " | mean fg |\n|---|" + "---|" * (len(COLUMNS) + 1) + "\n"
    lines = []
    for name, scores in rows.items():
        cells = [scores["per_class"][c]["f1"] for c in CLASS_NAMES]
        text = ["n/a" if v is None else f"{v:.2f}" for v in cells]
        lines.append(f"| {name} F1 | " + " | ".join(text) + f" | {scores['mean_fg_f1']:.2f} |")
    return head + "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", nargs="+", default=["configs/train.json", "configs/quick.json"])
    parser.add_argument("--bundle_root", default=".")
    parser.add_argument("--slice_stride", type=int, default=1)
    parser.add_argument("--json", default=None, help="also write the scores here")
    args = parser.parse_args()
    t0 = time.time()
    rows = {
        "TRAINING": split_scores(args.config, args.bundle_root, "training", args.slice_stride),
        "VALIDATION": split_scores(args.config, args.bundle_root, "validation", args.slice_stride),
    }
    print(markdown(rows))
    print(f"(whole slices, every {args.slice_stride}. slice; {time.time() - t0:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
