"""What the plane stride costs in accuracy: the shipped model at several ``plane_stride`` values on the
same tomograms (thin CLI).

    python scripts/evaluate_plane_stride.py --strides 2 3 [--n 3] \
        [--datalist .cache/synthetic-XXXX/datalist.json ...] [--out eval/plane_stride]

Every tomogram is segmented once per stride with ``configs/inference.json`` as shipped (int8 backend,
tuned post-processing) and scored with the tolerant F1 of
:func:`cryoet_monai.evaluation.transfer.score_volume`: the leave-one-style-out families
(:func:`~cryoet_monai.evaluation.transfer.style_tomograms`, the tomograms of
``scripts/evaluate_transfer.py``, generated once here) and, with ``--datalist``, the *validation*
tomograms of synthetic datalists. Never real data. Prints one table row per family and stride
(mean and per-class F1, largest absent-class fraction, seconds per tomogram, voxels equal to the
first stride's labels) and writes ``<out>/plane_stride.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from cryoet_monai import CLASS_NAMES
from cryoet_monai.evaluation.transfer import score_volume, style_tomograms, summarise_scores
from cryoet_monai.inference.cli import build_segmenter
from cryoet_monai.io.mrc import read_mrc, save_mrc


def _validation(datalists: list[Path]) -> Iterator[tuple[Path, np.ndarray]]:
    """``(image path, label)`` of every validation tomogram of the datalists."""
    for datalist in datalists:
        for item in json.loads(datalist.read_text())["validation"]:
            yield datalist.parent / item["image"], np.asarray(read_mrc(datalist.parent / item["label"])[0])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--strides", type=int, nargs="+", default=[2, 3])
    p.add_argument("--n", type=int, default=3, help="tomograms per family")
    p.add_argument("--datalist", type=Path, nargs="*", default=[],
                   help="synthetic datalists (their validation split)")
    p.add_argument("--out", type=Path, default=Path("eval/plane_stride"))
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    segmenters = {s: build_segmenter(None, plane_stride=s, progress=False).get_parsed_content("segmenter")
                  for s in args.strides}
    (args.out / "tomograms").mkdir(parents=True, exist_ok=True)
    scores = {s: {} for s in args.strides}
    seconds = {s: {} for s in args.strides}
    equal = {s: {} for s in args.strides}

    def run(group: str, path: Path, label: np.ndarray) -> None:
        first = None
        for s, segmenter in segmenters.items():
            t = time.perf_counter()
            result = segmenter.segment(path, args.out / f"stride{s}")
            seconds[s].setdefault(group, []).append(time.perf_counter() - t)
            pred = np.asarray(read_mrc(result["seg"], mmap=False)[0])
            first = pred if first is None else first
            scores[s].setdefault(group, []).append(score_volume(pred, label))
            equal[s].setdefault(group, []).append(float((pred == first).mean()))
        means = [summarise_scores(scores[s][group][-1:])["mean_f1"] for s in segmenters]
        print(f"{group} {path.name}: " + ", ".join(f"stride {s} {m:.3f}" for s, m in zip(segmenters, means)),
              flush=True)

    for family, i, voxel_size, image, label in style_tomograms(n_per_family=args.n):
        path = args.out / "tomograms" / f"{family}_{i}.mrc"
        save_mrc(path, image, voxel_size=voxel_size)
        run(family, path, label)
    for path, label in _validation(args.datalist):
        run("validation", path, label)

    names = CLASS_NAMES[1:]
    print("\n| tomograms | stride | " + " | ".join(names) + " | mean | max absent | s per tomogram | "
          f"labels = stride {args.strides[0]} |")
    print("|---" * (len(names) + 6) + "|")
    report = {}
    for group in scores[args.strides[0]]:
        for s in args.strides:
            summary = summarise_scores(scores[s][group])
            summary.update(seconds=float(np.mean(seconds[s][group])), tomograms=len(scores[s][group]),
                           labels_equal=float(np.mean(equal[s][group])))
            report.setdefault(group, {})[s] = summary
            cells = ["–" if summary["f1"][n] is None else f"{summary['f1'][n]:.3f}" for n in names]
            print(f"| {group} | {s} | " + " | ".join(cells) + f" | {summary['mean_f1']:.3f} | "
                  f"{100 * summary['max_absent_fraction']:.2f} % | {summary['seconds']:.1f} | "
                  f"{100 * summary['labels_equal']:.2f} % |")
    (args.out / "plane_stride.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
