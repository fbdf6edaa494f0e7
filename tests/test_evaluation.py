"""Evaluation: scores vs a hand-computed confusion, evaluate.json end to end, figures, training curves."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events

from cryoet_monai import CLASS_NAMES
from cryoet_monai.evaluation import (
    EvaluationError,
    TomogramEvaluator,
    TrainingCurvesHandler,
    load_history,
    plot_confusion_matrix,
    plot_example_slices,
    surface_dice,
)
from cryoet_monai.evaluation.figures import CLASS_COLORS, colorize_labels, pick_example_slices
from cryoet_monai.inference import TomogramSegmenter
from cryoet_monai.io.mrc import read_mrc, save_mrc
from cryoet_monai.metrics import SegmentationConfusionMetric
from cryoet_monai.networks import PaperUNet

TINY = [4, 8, 16, 32, 64]
SHAPE = (8, 32, 32)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _label() -> np.ndarray:
    """Background, a 4^3 microtubule cube (64 voxels), a 2x4x4 ribosome block (32), two unannotated rows."""
    y = np.zeros(SHAPE, np.uint8)
    y[2:6, 4:8, 4:8] = 1
    y[0:2, 20:24, 20:24] = 2
    y[:, 30:32, :] = 255
    return y


def _shifted_prediction() -> np.ndarray:
    """The microtubule cube shifted by one voxel in x, the ribosome missed, 16 false single-membrane
    voxels, and double membrane predicted only where the label is 255 (must not count)."""
    p = np.zeros(SHAPE, np.uint8)
    p[2:6, 4:8, 5:9] = 1
    p[7, 0:2, 0:8] = 4
    p[:, 30:32, :] = 3
    return p


@pytest.fixture
def labelled_set(tmp_path: Path) -> Path:
    """Two test tomograms: "tomo_a" with the shifted prediction, "tomo_b" predicted perfectly."""
    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    for name in ("tomo_a", "tomo_b"):
        save_mrc(tmp_path / "images" / f"{name}.mrc", rng.standard_normal(SHAPE).astype(np.float32), 10.0)
        save_mrc(tmp_path / "labels" / f"{name}.mrc", _label(), 10.0)
    datalist = {
        "training": [],
        "test": [{"image": f"images/{n}.mrc", "label": f"labels/{n}.mrc"} for n in ("tomo_a", "tomo_b")],
    }
    (tmp_path / "datalist.json").write_text(json.dumps(datalist))
    return tmp_path / "datalist.json"


def _segmenter() -> TomogramSegmenter:
    net = PaperUNet(spatial_dims=2, features=TINY)
    return TomogramSegmenter(net, device="cpu", precision="fp32", progress=False, model_voxel_size=10.0)


def test_report_matches_hand_computed_confusion(labelled_set: Path, tmp_path: Path):
    out = tmp_path / "eval"
    (out / "predictions").mkdir(parents=True)
    save_mrc(out / "predictions" / "tomo_a_seg.mrc", _shifted_prediction(), 10.0)
    label = _label()
    label[label == 255] = 0  # tomo_b: predicted perfectly (the 255 rows predicted as background)
    save_mrc(out / "predictions" / "tomo_b_seg.mrc", label, 10.0)
    evaluator = TomogramEvaluator(_segmenter(), out, reuse_predictions=True, num_examples=1)
    summary = evaluator(labelled_set)

    a = summary["per_tomogram"][0]
    assert a["name"] == "tomo_a"
    cm = np.array(a["confusion_matrix"])
    # 8 x 30 x 32 annotated voxels; the predicted double membrane lies only on unannotated voxels
    assert cm.sum() == 7680 and cm[:, 3].sum() == 0
    assert (cm[1, 1], cm[1, 0], cm[0, 1], cm[2, 0], cm[0, 4], cm[0, 0]) == (48, 16, 16, 32, 16, 7552)
    assert a["f1"]["microtubule"] == pytest.approx(0.75)  # 2*48 / (2*48 + 16 + 16)
    assert a["iou"]["microtubule"] == pytest.approx(0.6)  # 48 / 80
    assert a["precision"]["microtubule"] == pytest.approx(0.75)
    assert a["f1"]["ribosome"] == 0.0 and a["recall"]["ribosome"] == 0.0
    assert a["precision"]["ribosome"] is None  # never predicted
    assert a["f1"]["single_membrane"] == 0.0 and a["recall"]["single_membrane"] is None
    assert a["f1"]["double_membrane"] is None and a["f1"]["carbon_edge"] is None
    assert a["f1"]["background"] == pytest.approx(2 * 7552 / (2 * 7552 + 48 + 32))
    assert a["mean_foreground_f1"] == pytest.approx(0.25)  # mean of 0.75, 0, 0
    # one-voxel shift: plain F1 0.75, but every boundary voxel is within 1 voxel -> surface Dice 1
    assert a["surface_dice"]["1.0"]["microtubule"] == pytest.approx(1.0)
    assert a["surface_dice"]["1.0"]["single_membrane"] == 0.0
    assert a["surface_dice"]["1.0"]["double_membrane"] is None

    b = summary["per_tomogram"][1]
    assert b["f1"]["microtubule"] == 1.0 and b["f1"]["ribosome"] == 1.0
    overall, mean = summary["overall"], summary["mean_over_tomograms"]
    assert overall["f1"]["microtubule"] == pytest.approx(224 / 256)  # TP 112, FP 16, FN 16
    assert overall["f1"]["ribosome"] == pytest.approx(64 / 96)  # TP 32, FN 32
    assert mean["f1"]["ribosome"] == pytest.approx(0.5)  # (0 + 1) / 2
    assert overall["f1"]["single_membrane"] == 0.0

    # the files: metrics.json equal to the returned summary, table in the paper's layout, figures
    assert json.loads((out / "metrics.json").read_text()) == summary
    table = (out / "metrics.md").read_text()
    assert table.splitlines()[0].startswith("| | BACKGROUND | MICROTUBULE | RIBOSOME | DOUBLE MEMBRANE")
    assert (
        "| TEST F1 SCORE (DICE) | 1.00 (1.00) | 0.88 (0.88) | 0.67 (0.50) | n/a | 0.00 (0.00) | n/a |"
        in table
    )
    assert "| F1 tomo_a |" in table and "SURFACE DICE (τ=1 voxel)" in table
    for png in ("confusion_matrix.png", "f1_per_class.png", "examples_tomo_a.png"):
        assert (out / png).read_bytes()[:8] == PNG_MAGIC
    assert not (out / "examples_tomo_b.png").exists()  # num_examples=1


def test_evaluator_rejects_mismatched_label(labelled_set: Path, tmp_path: Path):
    save_mrc(tmp_path / "labels" / "tomo_a.mrc", np.zeros((8, 32, 16), np.uint8), 10.0)
    evaluator = TomogramEvaluator(_segmenter(), tmp_path / "eval", surface_dice_tolerances=())
    with pytest.raises(EvaluationError, match="tomo_a.mrc.*shape"):
        evaluator(labelled_set)
    (tmp_path / "empty.json").write_text(json.dumps({"training": [{"image": "a", "label": "b"}]}))
    with pytest.raises(EvaluationError, match="empty.json.*'test'"):
        evaluator(tmp_path / "empty.json")
    assert not (tmp_path / "eval" / "metrics.json").exists()


def test_evaluate_config_runs_inference_path(labelled_set: Path, tmp_path: Path, repo_root: Path):
    """configs/inference.json + configs/evaluate.json: segment the test split with inference.json's
    segmenter, then metrics.json equals the scores recomputed here by hand (numpy) from the written
    _seg.mrc files and the labels."""
    from monai.bundle import run

    # a 1x1 convolution as network_def: logits w_c * x + b_c, so the (normalised) intensity decides the
    # class deterministically: bright -> 3, dark -> 4, in between -> 0 or 1
    net = torch.nn.Conv2d(1, 6, kernel_size=1)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([0.0, 0.5, 0.0, 2.0, -2.0, 0.0]).view(6, 1, 1, 1))
        net.bias.copy_(torch.tensor([1.0, 0.8, -5.0, 0.0, 0.0, -5.0]))
    (tmp_path / "runs" / "models").mkdir(parents=True)  # where a training run leaves its best model
    torch.save(net.state_dict(), tmp_path / "runs" / "models" / "model.pt")
    configs = repo_root / "configs"
    run(
        "evaluate",
        config_file=[str(configs / "inference.json"), str(configs / "evaluate.json")],
        meta_file=str(configs / "metadata.json"),
        bundle_root=str(tmp_path),
        datalist=str(labelled_set),
        network_def={"_target_": "torch.nn.Conv2d", "in_channels": 1, "out_channels": 6, "kernel_size": 1},
        model_path=str(tmp_path / "runs" / "models" / "model.pt"),
        precision="fp32",
        backend="torch",
        # the shipped weights' tuned post-processing is not this network's: plain argmax (monai.bundle
        # drops None overrides, so no gains are {} gains), no size limit
        class_gains={},
        min_component_size=0,
    )
    summary = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert summary["num_tomograms"] == 2
    total = np.zeros((6, 6), np.int64)
    for rec in summary["per_tomogram"]:
        seg, meta = read_mrc(tmp_path / "eval" / "predictions" / f"{rec['name']}_seg.mrc")
        truth, _ = read_mrc(tmp_path / "labels" / f"{rec['name']}.mrc")
        assert seg.shape == SHAPE and meta["voxel_size"] == pytest.approx((10.0, 10.0, 10.0))
        assert set(np.unique(seg).tolist()) == {0, 1, 3, 4}  # a non-trivial prediction
        keep = truth != 255
        cm = np.bincount(truth[keep].astype(np.int64) * 6 + seg[keep], minlength=36).reshape(6, 6)
        assert rec["confusion_matrix"] == cm.tolist()
        total += cm
        for c, name in enumerate(CLASS_NAMES):
            tp, fp, fn = cm[c, c], cm[:, c].sum() - cm[c, c], cm[c, :].sum() - cm[c, c]
            expected = None if 2 * tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)
            assert rec["f1"][name] == pytest.approx(expected)
    assert summary["overall"]["confusion_matrix"] == total.tolist()
    assert (tmp_path / "eval" / "metrics.md").is_file()


def test_surface_dice_tolerance_and_ignore():
    label = np.zeros((1, 24, 24), np.uint8)
    label[0, 10, 4:20] = 3  # a one-voxel-thick membrane line
    pred = np.zeros_like(label)
    pred[0, 12, 4:20] = 3  # two voxels off
    nsd = surface_dice(pred[0], label[0], classes=(3,), tolerances=(1.0, 2.0))
    assert nsd[1.0]["double_membrane"] == 0.0 and nsd[2.0]["double_membrane"] == 1.0
    label[0, 12, :] = 255  # the prediction now lies on unannotated voxels only
    assert surface_dice(pred[0], label[0], classes=(3,), tolerances=(2.0,))[2.0]["double_membrane"] == 0.0


def test_figures(tmp_path: Path):
    label = np.zeros((6, 16, 16), np.uint8)
    label[4, 2:6, 2:6] = 1
    label[4, 8:10, 8:10] = 2
    label[1, 0:3, 0:3] = 5
    assert pick_example_slices(label, count=2) == [1, 4]
    rgb = colorize_labels(label[4])
    assert rgb.shape == (16, 16, 3)
    assert tuple(rgb[3, 3]) == pytest.approx(CLASS_COLORS[1]) and tuple(rgb[9, 9]) == pytest.approx(
        CLASS_COLORS[2]
    )
    image = np.random.default_rng(0).standard_normal(label.shape).astype(np.float32)
    path = plot_example_slices(image, label, label, tmp_path / "ex.png")
    assert path.read_bytes()[:8] == PNG_MAGIC
    cm = np.diag([5, 4, 3, 2, 1, 1])
    assert plot_confusion_matrix(cm, tmp_path / "cm.png").read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(ValueError, match="confusion matrix must be"):
        plot_confusion_matrix(np.eye(3), tmp_path / "bad.png")
    with pytest.raises(ValueError, match="one shape"):
        plot_example_slices(image, label[:3], label, tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


def test_training_curves_handler(tmp_path: Path):
    """Loss averaged per epoch and per-class F1 read from the validator's confusion metric."""
    losses = iter([1.0, 3.0, 0.5, 1.5])  # epoch 1 mean 2.0, epoch 2 mean 1.0
    metric = SegmentationConfusionMetric()
    truth = torch.tensor([[[[1, 1, 0, 0]]]])
    preds = iter([torch.tensor([[[[1, 0, 0, 0]]]]), truth])  # F1 microtubule 2/3, then 1

    def validate(engine, batch):
        metric(y_pred=next(preds), y=truth)

    validator = Engine(validate)
    validator.add_event_handler(Events.EPOCH_STARTED, lambda e: metric.reset())
    trainer = Engine(lambda engine, batch: {"loss": torch.tensor(next(losses))})
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: validator.run([0], max_epochs=e.state.epoch))
    TrainingCurvesHandler(tmp_path, validator=validator, metric=metric).attach(trainer)
    trainer.run([0, 1], max_epochs=2)

    history = load_history(tmp_path / "training_history.json")
    assert history["epoch"] == [1, 2] and history["loss"] == pytest.approx([2.0, 1.0])
    assert history["val_epoch"] == [1, 2]
    assert history["val_f1"][0]["microtubule"] == pytest.approx(2 / 3)
    assert history["val_f1"][1]["microtubule"] == 1.0 and history["val_f1"][1]["ribosome"] is None
    assert math.isclose(history["val_f1"][0]["background"], 0.8)
    assert history["val_mean_fg_f1"] == pytest.approx([2 / 3, 1.0])
    assert (tmp_path / "training_curves.png").read_bytes()[:8] == PNG_MAGIC
