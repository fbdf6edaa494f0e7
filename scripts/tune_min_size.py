"""Choose per-class minimum component sizes on the *synthetic validation* split (never on real data).

    python scripts/tune_min_size.py --datalist .cache/synthetic-XXXX/datalist.json [--config ...]

Segments every validation tomogram once with the shipped model (no clean-up), then, for each
class and each candidate size, removes smaller connected components and scores the strict F1 of
that class over the split. Prints the best size per class and the F1 gain; the chosen values go
into ``configs/inference.json``'s ``min_component_size``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from cryoet_monai import CLASS_NAMES
from cryoet_monai.inference.cli import build_segmenter
from cryoet_monai.inference.postprocess import remove_small_components
from cryoet_monai.io.mrc import read_mrc

CANDIDATES = (0, 200, 500, 1000, 2000, 4000, 8000)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--datalist", type=Path, required=True)
    p.add_argument("--out", type=Path, default=Path("eval/tune_min_size"))
    p.add_argument("--write-config", type=Path, help="store the result as min_component_size in this config")
    args = p.parse_args()
    segmenter = build_segmenter(None, progress=False, min_component_size=0).get_parsed_content("segmenter")
    items = json.loads(args.datalist.read_text())["validation"]
    pairs = []
    for item in items:
        result = segmenter.segment(args.datalist.parent / item["image"], args.out)
        pred, _ = read_mrc(result["seg"], mmap=False)
        label, _ = read_mrc(args.datalist.parent / item["label"], mmap=False)
        pairs.append((np.array(pred), np.asarray(label)))
    chosen = [0] * len(CLASS_NAMES)
    for c in range(1, len(CLASS_NAMES)):
        scores = {}
        for size in CANDIDATES:
            tp = fp = fn = 0
            for pred, label in pairs:
                cleaned = pred.copy()
                if size:
                    thresholds = [0] * len(CLASS_NAMES)
                    thresholds[c] = size
                    remove_small_components(cleaned, thresholds, num_classes=len(CLASS_NAMES))
                p_c, t_c = cleaned == c, label == c
                tp += int((p_c & t_c).sum())
                fp += int((p_c & ~t_c).sum())
                fn += int((~p_c & t_c).sum())
            scores[size] = 2 * tp / max(2 * tp + fp + fn, 1)
        best = max(scores, key=lambda s: (round(scores[s], 4), -s))
        chosen[c] = best
        print(f"{CLASS_NAMES[c]}: " + ", ".join(f"{s}: {v:.3f}" for s, v in scores.items()) + f" -> {best}")
    print("min_component_size:", chosen)
    if args.write_config:
        text = args.write_config.read_text()
        config = json.loads(text)
        old = json.dumps(config["min_component_size"])
        new = text.replace(f'"min_component_size": {old},', f'"min_component_size": {chosen},')
        args.write_config.write_text(new)


if __name__ == "__main__":
    main()
