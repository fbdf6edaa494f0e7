"""Losses: ignore label (value and gradient), class weights vs hand-computed CE, weights from frequencies."""

from __future__ import annotations

import json
import math

import mrcfile
import numpy as np
import pytest
import torch

from cryoet_monai.losses import (
    PAPER_CLASS_WEIGHTS,
    LabelError,
    MaskedDiceCELoss,
    WeightedCrossEntropyLoss,
    class_weights_from_counts,
    compute_class_weights,
    count_labels,
)


def _batch(seed: int = 0, shape=(2, 6, 8, 8), ignore_frac: float = 0.4):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=g)
    labels = torch.randint(0, shape[1], (shape[0], 1, *shape[2:]), generator=g)
    ignored = torch.rand(labels.shape, generator=g) < ignore_frac
    return logits, labels.masked_fill(ignored, 255), ignored


def test_weighted_ce_matches_hand_computation():
    # 1 sample, 3 voxels, 3 classes: loss = sum w[y] * (-log softmax[y]) / sum w[y], voxel 3 ignored
    logits = torch.tensor([[[2.0, 0.0, 1.0, 5.0], [0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 3.0, 0.0]]])  # (1, 3, 4)
    labels = torch.tensor([[[0, 1, 2, 255]]])  # (1, 1, 4)
    w = [1.0, 2000.0, 3000.0]
    ce = []
    for v, y in enumerate([0, 1, 2]):
        z = logits[0, :, v]
        ce.append(-(z[y].item() - math.log(sum(math.exp(t) for t in z.tolist()))))
    expected = (w[0] * ce[0] + w[1] * ce[1] + w[2] * ce[2]) / (w[0] + w[1] + w[2])
    loss = WeightedCrossEntropyLoss(weight=w)(logits, labels)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert WeightedCrossEntropyLoss(weight=w, reduction="sum")(logits, labels).item() == pytest.approx(
        w[0] * ce[0] + w[1] * ce[1] + w[2] * ce[2], rel=1e-6
    )


def test_default_weights_are_the_papers():
    assert torch.equal(WeightedCrossEntropyLoss().weight, torch.tensor(PAPER_CLASS_WEIGHTS))
    assert PAPER_CLASS_WEIGHTS == (1, 2000, 3000, 2000, 2000, 3000)


@pytest.mark.parametrize(
    "loss_fn",
    [
        WeightedCrossEntropyLoss(),
        WeightedCrossEntropyLoss(weight=None),
        MaskedDiceCELoss(weight=PAPER_CLASS_WEIGHTS),
        MaskedDiceCELoss(include_background=False, batch=False),
    ],
    ids=["ce_paper", "ce_plain", "dicece_weighted", "dicece_nobg_per_sample"],
)
def test_ignored_voxels_contribute_nothing(loss_fn):
    logits, labels, ignored = _batch()
    logits.requires_grad_(True)
    loss = loss_fn(logits, labels)
    loss.backward()
    # gradient is exactly zero at ignored voxels and non-zero elsewhere
    grad_norm = logits.grad.abs().sum(1, keepdim=True)
    assert torch.all(grad_norm[ignored] == 0)
    assert torch.all(grad_norm[~ignored] > 0)
    # changing the logits or the labels of ignored voxels changes nothing
    other = logits.detach().clone()
    other[ignored.expand_as(other)] = 100.0 * torch.randn(int(ignored.sum()) * 6)
    assert loss_fn(other, labels).item() == pytest.approx(loss.item(), rel=1e-6)


def test_ignore_equals_loss_on_the_annotated_subset():
    # a single sample whose annotated voxels form one block: the loss equals the loss on that block alone
    logits, labels, _ = _batch(seed=1, shape=(1, 6, 8, 8), ignore_frac=0.0)
    sparse = labels.clone()
    sparse[..., 4:, :] = 255  # only rows 0..3 annotated ("painted slices")
    for loss_fn in (WeightedCrossEntropyLoss(), MaskedDiceCELoss(weight=PAPER_CLASS_WEIGHTS)):
        full = loss_fn(logits, sparse)
        subset = loss_fn(logits[..., :4, :], labels[..., :4, :])
        assert full.item() == pytest.approx(subset.item(), rel=1e-5)


def test_all_ignored_gives_zero_loss_and_zero_grad():
    logits = torch.randn(2, 6, 4, 4, requires_grad=True)
    labels = torch.full((2, 1, 4, 4), 255)
    for loss_fn in (WeightedCrossEntropyLoss(), MaskedDiceCELoss()):
        loss = loss_fn(logits, labels)
        loss.backward()
        assert loss.item() == 0.0 and not torch.isnan(loss)
        assert torch.all(logits.grad == 0)


def test_dicece_is_dice_plus_ce_when_nothing_ignored():
    from monai.losses import DiceCELoss

    logits, labels, _ = _batch(seed=2, ignore_frac=0.0)
    ours = MaskedDiceCELoss(batch=True)(logits, labels)
    ref = DiceCELoss(to_onehot_y=True, softmax=True, batch=True)(logits, labels)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5)
    # a perfect prediction has near-zero Dice loss
    perfect = 50.0 * torch.nn.functional.one_hot(labels[:, 0], 6).permute(0, 3, 1, 2).float()
    assert MaskedDiceCELoss(lambda_ce=0.0)(perfect, labels).item() < 1e-4


def test_bad_labels_raise():
    logits = torch.randn(1, 6, 4, 4)
    with pytest.raises(LabelError, match=r"\[7\]"):
        WeightedCrossEntropyLoss()(logits, torch.full((1, 1, 4, 4), 7))
    with pytest.raises(ValueError, match="class weights"):
        WeightedCrossEntropyLoss(weight=[1.0, 2.0])(logits, torch.zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match="one-hot"):
        MaskedDiceCELoss()(logits, torch.zeros(1, 6, 4, 4))
    with pytest.raises(ValueError, match="non-negative"):
        WeightedCrossEntropyLoss(weight=[1.0, -1.0])


def test_class_weights_from_known_counts():
    counts = np.array([1000, 100, 10, 0, 100, 1])
    med = class_weights_from_counts(counts[[0, 1, 2, 4, 5]], "median_frequency")
    # frequencies 1000:100:10:100:1, median 100 -> median/f = 0.1, 1, 10, 1, 100, normalised by min 0.1
    assert med.tolist() == pytest.approx([1, 10, 100, 10, 1000])
    sq = class_weights_from_counts([400, 100, 25, 4], "inverse_sqrt")
    assert sq.tolist() == pytest.approx([1, 2, 4, 10])
    with pytest.warns(UserWarning, match=r"\[3\]"):
        w = class_weights_from_counts(counts, "inverse", max_weight=500)
    assert w.tolist() == pytest.approx([1, 10, 100, 500, 10, 500])  # absent class 3 gets the max
    with pytest.raises(ValueError, match="no annotated"):
        class_weights_from_counts([0, 0, 0])


def test_compute_class_weights_from_label_files_and_datalist(tmp_path):
    rng = np.random.default_rng(0)
    vols = []
    for i, n_fg in enumerate((30, 10)):
        lab = np.zeros((4, 8, 8), np.uint8)
        where = rng.choice(lab.size, n_fg, replace=False)
        lab.reshape(-1)[where] = (1 + np.arange(n_fg) % 5).astype(np.uint8)
        lab[0] = 255  # an unannotated slice
        vols.append(lab)
        (tmp_path / "labels").mkdir(exist_ok=True)
        with mrcfile.new(tmp_path / "labels" / f"l{i}.mrc") as m:
            m.set_data(lab)
    expected = sum(np.bincount(v[v != 255].ravel(), minlength=6) for v in vols)
    assert count_labels(vols).tolist() == expected.tolist()
    assert count_labels([tmp_path / "labels" / "l0.mrc", vols[1]]).tolist() == expected.tolist()
    datalist = tmp_path / "datalist.json"
    entries = [{"image": f"images/i{i}.mrc", "label": f"labels/l{i}.mrc"} for i in range(2)]
    datalist.write_text(json.dumps({"training": entries, "validation": []}))
    w = compute_class_weights(datalist, method="inverse")
    f = expected / expected.sum()
    assert w.tolist() == pytest.approx((f.max() / f).tolist(), rel=1e-5)
    # a bad label names the file
    bad = vols[0].copy()
    bad[1, 0, 0] = 9
    with mrcfile.new(tmp_path / "labels" / "bad.mrc") as m:
        m.set_data(bad)
    with pytest.raises(LabelError, match="bad.mrc"):
        count_labels([tmp_path / "labels" / "bad.mrc"])
