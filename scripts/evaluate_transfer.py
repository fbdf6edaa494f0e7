"""Leave-one-style-out evaluation of a model, plus the real microtubule crops (thin CLI).

    python scripts/evaluate_transfer.py --model models/model.pt --out eval/transfer

Builds the segmenter of ``configs/inference.json`` (with ``--config`` overlays, e.g. the 2.5-D
network), then runs :func:`cryoet_monai.evaluation.transfer.evaluate_styles` and, when the shared
corpus is there, :func:`~cryoet_monai.evaluation.transfer.evaluate_real_crops`; prints a Markdown
table and writes ``<out>/transfer.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from monai.bundle import ConfigParser

from cryoet_monai import CLASS_NAMES
from cryoet_monai.evaluation.transfer import evaluate_polarity, evaluate_real_crops, evaluate_styles

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=str(ROOT / "models" / "model.pt"))
    p.add_argument("--config", nargs="*", default=[str(ROOT / "configs" / "inference.json")])
    p.add_argument("--out", default=str(ROOT / "eval" / "transfer"))
    p.add_argument("--n", type=int, default=3, help="tomograms per family")
    p.add_argument("--corpus", default=str(ROOT.parent / "shared" / "mrc-corpus"))
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    parser = ConfigParser()
    parser.read_meta(str(ROOT / "configs" / "metadata.json"))
    parser.read_config(args.config)
    parser["model_path"] = args.model
    parser["progress"] = False
    segmenter = parser.get_parsed_content("segmenter")

    report = evaluate_styles(segmenter, args.out, n_per_family=args.n)
    report["polarity"] = evaluate_polarity(segmenter)
    if (Path(args.corpus) / "real").is_dir():
        real = evaluate_real_crops(segmenter, args.corpus, Path(args.out) / "real")
        report["real_microtubule_crops"] = real
    (Path(args.out) / "transfer.json").write_text(json.dumps(report, indent=2) + "\n")
    names = CLASS_NAMES[1:]
    print("| family | " + " | ".join(names) + " | mean | max absent-class fraction |")
    print("|---" * (len(names) + 3) + "|")
    for family, r in report["families"].items():
        cells = ["–" if r["f1"][n] is None else f"{r['f1'][n]:.2f}" for n in names]
        tail = f" | {r['mean_f1']:.2f} | {100 * r['max_absent_fraction']:.2f} % |"
        print(f"| {family} | " + " | ".join(cells) + tail)
    pol = report["polarity"]["all"]
    print(f"polarity auto: {pol['right']} of {pol['of']} right ({100 * pol['accuracy']:.0f} %)")
    for name, f1 in report.get("real_microtubule_crops", {}).items():
        print(f"real crop {name}: microtubule tolerant F1 {f1:.2f}")


if __name__ == "__main__":
    main()
