"""Metrics: confusion matrix and scores against hand-computed examples, Ignite handler, tolerant F1."""

from __future__ import annotations

import json
import math

import pytest
import torch
from monai.data import MetaTensor, decollate_batch

from cryoet_monai.metrics import (
    SegmentationConfusionMetric,
    TolerantF1Metric,
    confusion_matrix,
    per_class_f1,
    per_class_iou,
    per_class_precision,
    per_class_recall,
    scores_from_confusion,
)

# rows truth, columns prediction; class 2 absent everywhere, class 4 never predicted, class 5 never true
CM6 = torch.tensor(
    [
        [10, 1, 0, 0, 0, 0],
        [2, 5, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0],
        [0, 0, 0, 4, 0, 0],
        [0, 0, 0, 0, 0, 3],
        [0, 0, 0, 0, 0, 0],
    ]
)
NAN = math.nan


def _volumes_from_cm(cm: torch.Tensor, n_ignored: int = 5, seed: int = 0):
    """(1, 1, N) truth and prediction label images realising ``cm``, plus ``n_ignored`` 255-voxels."""
    gt, pred = [], []
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            gt += [i] * int(cm[i, j])
            pred += [j] * int(cm[i, j])
    g = torch.Generator().manual_seed(seed)
    gt += [255] * n_ignored
    pred += torch.randint(0, cm.shape[0], (n_ignored,), generator=g).tolist()
    order = torch.randperm(len(gt), generator=g)
    return torch.tensor(pred)[order].view(1, 1, -1, 1), torch.tensor(gt)[order].view(1, 1, -1, 1)


def _logits(pred: torch.Tensor, num_classes: int = 6, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    onehot = torch.nn.functional.one_hot(pred[:, 0], num_classes).movedim(-1, 1).float()
    return 5.0 * onehot + torch.rand(onehot.shape, generator=g)


def _close(a, b):
    return all((math.isnan(x) and math.isnan(y)) or x == pytest.approx(y) for x, y in zip(a, b))


def test_two_class_hand_example():
    gt = torch.tensor([0, 0, 0, 1, 1, 1, 1, 255]).view(1, 1, 8)
    pred = torch.tensor([0, 0, 1, 1, 1, 0, 1, 1]).view(1, 1, 8)
    cm = confusion_matrix(pred, gt, num_classes=2)
    assert cm.tolist() == [[[2, 1], [1, 3]]]
    s = scores_from_confusion(cm[0], class_names=["bg", "fg"])
    assert s["per_class"]["fg"] == {
        "f1": 0.75, "precision": 0.75, "recall": 0.75, "iou": 0.6, "support": 4, "predicted": 4,
    }
    assert s["per_class"]["bg"]["f1"] == pytest.approx(2 / 3)
    assert s["per_class"]["bg"]["iou"] == pytest.approx(0.5)
    assert s["mean_fg_f1"] == 0.75
    assert s["mean_f1"] == pytest.approx((0.75 + 2 / 3) / 2)
    assert s["accuracy"] == pytest.approx(5 / 7)
    assert s["n_voxels"] == 7


def test_six_class_hand_example_with_absent_classes():
    pred, gt = _volumes_from_cm(CM6)
    cm = confusion_matrix(_logits(pred), gt)[0]
    assert torch.equal(cm, CM6)
    assert _close(per_class_f1(cm).tolist(), [20 / 23, 10 / 13, NAN, 1.0, 0.0, 0.0])
    assert _close(per_class_precision(cm).tolist(), [10 / 12, 5 / 6, NAN, 1.0, NAN, 0.0])
    assert _close(per_class_recall(cm).tolist(), [10 / 11, 5 / 7, NAN, 1.0, 0.0, NAN])
    assert _close(per_class_iou(cm).tolist(), [10 / 13, 5 / 8, NAN, 1.0, 0.0, 0.0])
    s = scores_from_confusion(cm)
    assert s["mean_fg_f1"] == pytest.approx((10 / 13 + 1.0 + 0.0 + 0.0) / 4)  # class 2 (NaN) excluded
    assert s["mean_iou"] == pytest.approx((10 / 13 + 5 / 8 + 1.0) / 5)
    assert s["accuracy"] == pytest.approx(19 / 25)
    assert s["per_class"]["ribosome"]["f1"] is None  # NaN -> JSON null
    assert s["per_class"]["single_membrane"] == {
        "f1": 0.0, "precision": None, "recall": 0.0, "iou": 0.0, "support": 3, "predicted": 0,
    }
    json.dumps(s, allow_nan=False)  # strict JSON
    assert math.isnan(scores_from_confusion(cm, nan_as_none=False)["per_class"]["ribosome"]["f1"])


def test_cumulative_metric_batches_lists_and_reset():
    pred, gt = _volumes_from_cm(CM6)
    logits = _logits(pred)
    metric = SegmentationConfusionMetric()
    # the same voxels split into two "samples" fed as a batch tensor, then again as a decollated list
    half = logits.shape[2] // 2
    metric(logits[:, :, :half], gt[:, :, :half])
    metric([MetaTensor(logits[0, :, half:])], [MetaTensor(gt[0, :, half:])])
    assert torch.equal(metric.confusion(), CM6)
    expected = (10 / 13 + 1.0) / 4
    assert metric.aggregate().item() == pytest.approx(expected)
    assert metric.scores()["per_class"]["double_membrane"]["f1"] == 1.0
    # label predictions (B, 1, ...) are accepted as they are
    metric.reset()
    metric(pred, gt)
    assert torch.equal(metric.confusion(), CM6)
    metric.reset()
    assert metric.confusion().sum() == 0 and math.isnan(metric.aggregate().item())
    assert SegmentationConfusionMetric(key="accuracy")(pred, gt) is not None


def test_ignite_metric_handler_uses_mean_foreground_f1():
    from ignite.engine import Engine
    from monai.handlers import IgniteMetricHandler

    pred, gt = _volumes_from_cm(CM6)
    logits = _logits(pred)
    batches = [(logits[..., :15, :], gt[..., :15, :]), (logits[..., 15:, :], gt[..., 15:, :])]
    engine = Engine(lambda e, batch: (list(decollate_batch(batch[0])), list(decollate_batch(batch[1]))))
    IgniteMetricHandler(metric_fn=SegmentationConfusionMetric()).attach(engine, "val_mean_fg_f1")
    engine.run(batches, max_epochs=1)
    assert engine.state.metrics["val_mean_fg_f1"] == pytest.approx((10 / 13 + 1.0) / 4)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match=r"outside 0..5.*\[7\]"):
        confusion_matrix(torch.zeros(1, 1, 4, 4), torch.full((1, 1, 4, 4), 7))
    with pytest.raises(ValueError, match="channels"):
        confusion_matrix(torch.zeros(1, 3, 4, 4), torch.zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match="key"):
        SegmentationConfusionMetric(key="dice")


def test_tolerant_f1_forgives_one_voxel_shift():
    gt = torch.zeros(1, 1, 16, 16, dtype=torch.long)
    pred = torch.zeros_like(gt)
    gt[0, 0, 5, 2:14] = 4  # a 12-voxel thin membrane
    pred[0, 0, 6, 2:14] = 4  # predicted one voxel off
    pred[0, 0, 12:14, 12:14] = 4  # plus a 4-voxel false positive far away
    gt[0, 0, 0, :] = 255  # an unannotated row: predictions there do not count
    pred[0, 0, 0, :] = 4
    plain = SegmentationConfusionMetric()
    plain(pred, gt)
    assert plain.scores()["per_class"]["single_membrane"]["f1"] == 0.0
    strict = TolerantF1Metric(tolerance=0)
    strict(pred, gt)
    assert strict.scores()["per_class"]["single_membrane"]["f1"] == 0.0
    tol = TolerantF1Metric(tolerance=1)
    tol(pred, gt)
    s = tol.scores()["per_class"]["single_membrane"]
    assert s["precision"] == pytest.approx(12 / 16) and s["recall"] == 1.0
    assert s["f1"] == pytest.approx(2 * 0.75 / 1.75)
    assert tol.scores()["per_class"]["ribosome"]["f1"] is None  # absent from both
    assert tol.aggregate().item() == pytest.approx(2 * 0.75 / 1.75)  # the only defined foreground class
    assert tol.counts()[4].tolist() == [12, 16, 12, 12]


def test_tolerant_f1_3d():
    gt = torch.zeros(2, 1, 8, 8, 8, dtype=torch.long)
    gt[:, 0, 4, 2:6, 2:6] = 3
    pred = torch.roll(gt, shifts=1, dims=2)  # shifted one slice in z
    tol = TolerantF1Metric(tolerance=1)
    tol(_logits(pred), gt)
    assert tol.scores()["per_class"]["double_membrane"]["f1"] == 1.0
    assert TolerantF1Metric(tolerance=0)(pred, gt)[:, 3, 0].tolist() == [0, 0]


_DDP_SCRIPT = """
import json, os, sys, torch, torch.distributed as dist, torch.multiprocessing as mp

def run(rank, port, q):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    from cryoet_monai.metrics import SegmentationConfusionMetric
    m = SegmentationConfusionMetric(num_classes=2)
    gt = torch.tensor([0, 0, 0, 1, 1, 1, 1, 255]).view(1, 1, 8)
    pred = torch.tensor([0, 0, 1, 1, 1, 0, 1, 1]).view(1, 1, 8)
    for _ in range(rank + 1):  # uneven: rank 0 one sample, rank 1 two
        m(pred, gt)
    q.put((rank, m.confusion().tolist(), m.aggregate().item()))
    dist.destroy_process_group()

if __name__ == "__main__":
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    ps = [ctx.Process(target=run, args=(r, int(sys.argv[1]), q)) for r in range(2)]
    [p.start() for p in ps]
    [p.join(60) for p in ps]
    print(json.dumps(sorted(q.get(timeout=5) for _ in ps)))
"""


@pytest.mark.slow
def test_ddp_gathers_confusion_across_ranks(tmp_path):
    """Two gloo ranks with uneven sample counts both aggregate the matrix of all three samples."""
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = tmp_path / "ddp_metric.py"
    script.write_text(_DDP_SCRIPT)
    out = subprocess.run(
        [sys.executable, str(script), str(port)], capture_output=True, text=True, timeout=120, check=True
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])  # [[rank, cm, score], ...]
    assert [r[0] for r in result] == [0, 1]
    for _, cm, score in result:
        assert cm == [[6, 3], [3, 9]] and score == pytest.approx(0.75)
