"""Fine-tuning benchmark: F1 on the unpainted slices against the number of painted slices.

    python scripts/bench_finetune.py --out eval/finetune [--slices 1 3 5 10] [--minutes 3]

One synthetic tomogram rendered in a style outside the shipped model's training ranges (the
test's SHIFTED_STYLE: 3-D Fourier imaging, very low SNR, strong low-pass). For each number of
painted slices (evenly spaced, every class painted as in the ground truth, background as 6) it
fine-tunes the shipped model with ``cryoet_monai.finetune.finetune``, segments the tomogram with
the new model folder and scores the slices that were not painted (tolerant F1, 2 voxels, mean
over the classes present). Writes ``<out>/finetune.json`` and ``<out>/finetune.png``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np

from cryoet_monai.data.synthetic import generate_tomogram
from cryoet_monai.evaluation.figures import plot_example_slices
from cryoet_monai.evaluation.transfer import score_volume
from cryoet_monai.finetune import PAINTED_BACKGROUND, finetune
from cryoet_monai.inference.cli import build_segmenter
from cryoet_monai.io.mrc import read_mrc, save_mrc

STYLE = {"mode": "fourier", "snr": 0.15, "lowpass": 45.0, "class_mix": {"carbon_edge": 0.0}}


def _segment_and_score(model: Path | None, tomo: Path, out: Path, label: np.ndarray, painted_z) -> dict:
    segmenter = build_segmenter(model, progress=False).get_parsed_content("segmenter")
    result = segmenter.segment(tomo, out)
    pred, _ = read_mrc(result["seg"], mmap=False)
    keep = np.setdiff1d(np.arange(label.shape[0]), painted_z)
    f1 = score_volume(pred[keep], label[keep], tolerance=2)["f1"]
    return {"mean_f1": float(np.mean(list(f1.values()))), "f1": f1}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("eval/finetune"))
    p.add_argument("--slices", type=int, nargs="+", default=[1, 3, 5, 10])
    p.add_argument("--minutes", type=float, default=3.0)
    p.add_argument("--shape", type=int, nargs=3, default=[64, 384, 384])
    p.add_argument("--seed", type=int, default=4242)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    args.out.mkdir(parents=True, exist_ok=True)
    image, label = generate_tomogram(tuple(args.shape), 10.0, args.seed, **STYLE)
    tomo = args.out / "tomo.mrc"
    save_mrc(tomo, image, voxel_size=10.0)
    depth = label.shape[0]
    rows = []
    spaced = {n: [int(z) for z in np.linspace(depth * 0.1, depth * 0.9, n).round()] for n in args.slices}
    all_painted = sorted({z for zs in spaced.values() for z in zs})
    shipped = _segment_and_score(None, tomo, args.out / "shipped", label, all_painted)
    print(f"shipped model: mean tolerant F1 {shipped['mean_f1']:.3f} on the unpainted slices", flush=True)
    for n in args.slices:
        zs = spaced[n]
        painted = np.zeros_like(label)
        for z in zs:
            painted[z] = np.where(label[z] == 0, PAINTED_BACKGROUND, label[z])
        save_mrc(args.out / f"painted_{n}.mrc", painted, voxel_size=10.0)
        t0 = time.perf_counter()
        folder = finetune([tomo], [args.out / f"painted_{n}.mrc"], args.out / f"model_{n}",
                          minutes=args.minutes, overwrite=True, progress=False)
        minutes = (time.perf_counter() - t0) / 60
        score = _segment_and_score(folder, tomo, args.out / f"seg_{n}", label, all_painted)
        rows.append({"painted_slices": n, "minutes": minutes, **score})
        print(f"{n:>2} painted slices: mean tolerant F1 {score['mean_f1']:.3f} ({minutes:.1f} min)",
              flush=True)
    report = {"style": STYLE, "shape": args.shape, "shipped": shipped, "runs": rows,
              "scored_slices": "all but the union of every run's painted slices"}
    (args.out / "finetune.json").write_text(json.dumps(report, indent=2) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot([r["painted_slices"] for r in rows], [r["mean_f1"] for r in rows], "o-", label="fine-tuned")
    ax.axhline(shipped["mean_f1"], color="grey", ls="--", label="shipped model")
    for r in rows:
        ax.annotate(f"{r['minutes']:.1f} min", (r["painted_slices"], r["mean_f1"]),
                    textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
    ax.set_xlabel("painted slices")
    ax.set_ylabel("tolerant F1, unpainted slices")
    ax.set_ylim(0, 1)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out / "finetune.png", dpi=110)
    # an unpainted slice before and after fine-tuning on 3 painted slices
    n = 3 if 3 in args.slices else args.slices[0]
    z = [int(np.setdiff1d(np.arange(depth // 3, depth), all_painted)[0])]
    for tag, folder in (("shipped", args.out / "shipped"), (f"finetuned_{n}", args.out / f"seg_{n}")):
        pred, _ = read_mrc(folder / "tomo_seg.mrc", mmap=False)
        plot_example_slices(image, label, np.asarray(pred), args.out / f"example_{tag}.png", slices=z,
                            title=f"{tag.replace('_', ' on ')} painted slices" if tag != "shipped"
                            else "shipped model", dpi=80)


if __name__ == "__main__":
    main()
