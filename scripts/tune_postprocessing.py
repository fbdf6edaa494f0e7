"""Choose the post-processing of the shipped model on the *synthetic validation* split (never on real data).

    python scripts/tune_postprocessing.py --datalist .cache/synthetic-XXXX/datalist.json [MORE.json ...] \
        [--write-config configs/inference.json]

Segments every validation tomogram of the datalists (pooled: more validation tomograms, a steadier
choice) once with the shipped model (probabilities kept, no
post-processing), then chooses, by coordinate ascent on the mean foreground F1 pooled over the
split, (1) one gain per class on the probabilities before the argmax (``class_gains``: a prior
correction for classes the network under-calls, e.g. a single membrane taken for a double one)
and (2) a minimum connected-component size per class (``min_component_size``), with the
double-membrane partner rule (``double_membrane_max_gap``, a definition, not tuned) applied after
both as the segmenter does. Prints the F1 of every step and, on the same tomograms, the F1 of the
post-processing the inference config has now (so a re-tune is adopted only where it scores higher);
``--write-config`` stores both in the inference config.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from cryoet_monai import CLASS_NAMES
from cryoet_monai.inference.cli import build_segmenter
from cryoet_monai.inference.postprocess import relabel_unpaired_double_membranes, remove_small_components
from cryoet_monai.io.mrc import read_mrc

GAINS = (0.5, 0.7, 1.0, 1.4, 2.0, 3.0, 4.5)
SIZES = (0, 1000, 4000, 16000)
C = len(CLASS_NAMES)


def _confusion(pred: np.ndarray, label: np.ndarray) -> np.ndarray:
    valid = label < C
    return np.bincount(label[valid].astype(np.int64) * C + pred[valid], minlength=C * C).reshape(C, C)


def _mean_fg_f1(cm: np.ndarray) -> tuple[float, np.ndarray]:
    tp = np.diag(cm).astype(float)
    f1 = 2 * tp / np.maximum(cm.sum(0) + cm.sum(1), 1)
    present = cm.sum(1) > 0
    return float(f1[1:][present[1:]].mean()), f1


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--datalist", type=Path, nargs="+", required=True,
                   help="datalists whose validation tomograms are pooled")
    p.add_argument("--out", type=Path, default=Path("eval/tune_postprocessing"))
    p.add_argument("--write-config", type=Path, help="store class_gains and min_component_size here")
    p.add_argument("--limit", type=int, default=None, help="use only the first N validation tomograms")
    p.add_argument("--reuse", action="store_true", help="reuse probabilities already written in --out")
    p.add_argument("--z-stride", type=int, default=2, help="score the gains on every N-th slice (speed)")
    p.add_argument("--double-membrane-max-gap", type=float, default=None,
                   help="Å; default: the inference config's (0: the rule off)")
    args = p.parse_args()
    parser = build_segmenter(None)
    gains_now, sizes_now = (parser.get_parsed_content(k) for k in ("class_gains", "min_component_size"))
    configured_gains = [float(gains_now.get(n, 1.0)) for n in CLASS_NAMES]
    configured_sizes = [int(sizes_now.get(n, 0)) for n in CLASS_NAMES]
    # the raw network output: no post-processing, probabilities written
    for key, value in dict(progress=False, min_component_size=0, class_gains=None, save_probs=True,
                           invert="no").items():
        parser[key] = value
    segmenter = parser.get_parsed_content("segmenter")
    max_gap = (segmenter.double_membrane_max_gap if args.double_membrane_max_gap is None
               else args.double_membrane_max_gap or None)
    double, single = CLASS_NAMES.index("double_membrane"), CLASS_NAMES.index("single_membrane")
    full = []
    pixel_sizes = []
    validation = [(datalist.parent, item) for datalist in args.datalist
                  for item in json.loads(datalist.read_text())["validation"]]
    names = [Path(item["image"]).name for _, item in validation]
    if len(set(names)) < len(names):  # their probabilities would overwrite each other in --out
        twice = sorted({n for n in names if names.count(n) > 1})
        raise SystemExit(f"{', '.join(map(str, args.datalist))}: validation images with the same file name "
                         f"({', '.join(twice[:3])}); pool datalists of distinct tomograms")
    chosen = validation[: args.limit]
    for i, (folder, item) in enumerate(chosen, 1):
        probs_path = args.out / (Path(item["image"]).name.replace(".mrc", "_probs.mrc"))
        if not (args.reuse and probs_path.is_file()):
            print(f"[{i}/{len(chosen)}] segmenting {folder / item['image']}", flush=True)
            probs_path = Path(segmenter.segment(folder / item["image"], args.out)["probs"])
        probs = torch.as_tensor(np.asarray(read_mrc(probs_path, mmap=False)[0], dtype=np.float32))
        label, meta = read_mrc(folder / item["label"], mmap=False)
        full.append((probs, np.asarray(label)))
        pixel_sizes.append(min(meta["voxel_size"][1:]))
    k = max(1, args.z_stride)
    cases = [(probs[:, ::k].contiguous(), label[::k]) for probs, label in full]

    def partner_rule(preds: list[np.ndarray]) -> list[np.ndarray]:
        if max_gap:
            for pr, pixel in zip(preds, pixel_sizes):
                relabel_unpaired_double_membranes(pr, pixel, double, single, max_gap=max_gap)
        return preds

    def labels_for(gains: list[float], rule: bool = True) -> list[np.ndarray]:
        g = torch.tensor(gains, dtype=torch.float32)[:, None, None, None]
        preds = [(probs * g).argmax(0).to(torch.uint8).numpy() for probs, _ in cases]
        return partner_rule(preds) if rule else preds

    def score(preds: list[np.ndarray]) -> tuple[float, np.ndarray]:
        return _mean_fg_f1(sum(_confusion(pr, lab) for pr, (_, lab) in zip(preds, cases)))

    gains = [1.0] * C
    best, per_class = score(labels_for(gains))
    print(f"plain argmax: mean foreground F1 {best:.4f}  per class {np.round(per_class, 3).tolist()}")
    for _ in range(2):
        for c in range(1, C):
            for g in GAINS:
                trial = gains.copy()
                trial[c] = g
                s, _ = score(labels_for(trial))
                if s > best + 1e-4:
                    best, gains = s, trial
        print(f"gains {gains}: mean foreground F1 {best:.4f}")
    cases = full  # component sizes need whole volumes (connectivity along z)

    def cleaned_score(preds: list[np.ndarray], sizes: list[int]) -> tuple[float, np.ndarray]:
        """Score of ``preds`` (left as they are) after small-component removal and the partner rule."""
        cleaned = [pr.copy() for pr in preds]
        for pr in cleaned:
            remove_small_components(pr, sizes, num_classes=C)
        return score(partner_rule(cleaned))

    preds = labels_for(gains, rule=False)
    sizes = [0] * C
    best, _ = cleaned_score(preds, sizes)
    for c in range(1, C):
        for size in SIZES[1:]:
            trial = sizes.copy()
            trial[c] = size
            s, _ = cleaned_score(preds, trial)
            if s > best + 1e-4:
                best, sizes = s, trial
    best, per_class = cleaned_score(preds, sizes)
    print(f"min_component_size {sizes}: mean foreground F1 {best:.4f}  "
          f"per class {np.round(per_class, 3).tolist()}")
    now, now_per_class = cleaned_score(labels_for(configured_gains, rule=False), configured_sizes)
    print(f"the inference config now (gains {configured_gains}, min_component_size {configured_sizes}): "
          f"mean foreground F1 {now:.4f}  per class {np.round(now_per_class, 3).tolist()}")
    if args.write_config:
        text = args.write_config.read_text()
        config = json.loads(text)
        # by class name, as configs/inference.json keeps them (defaults: gain 1, no size limit)
        by_name = {"class_gains": {n: g for n, g in zip(CLASS_NAMES, gains) if g != 1.0},
                   "min_component_size": {n: v for n, v in zip(CLASS_NAMES, sizes) if v}}
        for key, value in by_name.items():
            text = text.replace(f'"{key}": {json.dumps(config[key])},', f'"{key}": {json.dumps(value)},')
        args.write_config.write_text(text)


if __name__ == "__main__":
    main()
