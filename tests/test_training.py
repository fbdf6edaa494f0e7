"""Training path of the bundle, run in-process on tiny MRC volumes written to tmp_path.

The workflows are built from the real ``configs/train.json`` (+ ``configs/quick.json``) with
overrides that shrink them, so what is tested is what ``python -m monai.bundle run training`` runs.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from monai.bundle import ConfigWorkflow
from monai.handlers import CheckpointSaver
from monai.inferers import SimpleInferer, SliceInferer
from monai.utils import set_determinism

from cryoet_monai import IGNORE_LABEL, PaperUNet
from cryoet_monai.engines import (
    AutocastInferer,
    BestMetricCheckpoint,
    CheckpointResumeError,
    DatalistError,
    ResumeCheckpoint,
    prepare_datalist,
    write_datalist,
)
from cryoet_monai.io.mrc import save_mrc
from cryoet_monai.transforms.sampling import (
    CropZFraction,
    CropZFractiond,
    SliceStride,
    SliceStrided,
    z_fraction_slice,
)

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
FEATURES = [8, 16, 32, 64, 128]
# index of the progress bar in train#handlers (looked up: other handlers may be inserted before it)
_PROGRESS = next(
    i
    for i, h in enumerate(json.loads((CONFIGS / "train.json").read_text())["train"]["handlers"])
    if h["_target_"].endswith("ProgressBar")
)


def _tiny_tomogram(seed: int, shape=(12, 40, 40), ignore_border: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Boxes of classes 1..5 on background; the image is the label times a contrast plus noise, so the
    task is learnable in a few steps. ``ignore_border`` voxels around the in-plane edge are 255."""
    rng = np.random.default_rng(seed)
    label = np.zeros(shape, np.uint8)
    z, y, x = shape
    for c in range(1, 6):
        for _ in range(2):
            cy, cx = rng.integers(8, y - 8), rng.integers(8, x - 8)
            label[:, cy - 3 : cy + 3, cx - 3 : cx + 3] = c
    image = (label.astype(np.float32) - 2.0) + rng.normal(0, 0.3, shape).astype(np.float32)
    if ignore_border:
        b = ignore_border
        label[:, :b, :] = IGNORE_LABEL
        label[:, -b:, :] = IGNORE_LABEL
        label[:, :, :b] = IGNORE_LABEL
        label[:, :, -b:] = IGNORE_LABEL
    return image, label


def _write_dataset(root: Path, n_train: int = 2, n_val: int = 1, ignore_border: int = 0) -> Path:
    items = []
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    for i in range(n_train + n_val):
        image, label = _tiny_tomogram(i, ignore_border=ignore_border)
        save_mrc(root / "images" / f"t{i}.mrc", image, voxel_size=10.0)
        save_mrc(root / "labels" / f"t{i}.mrc", label, voxel_size=10.0)
        items.append({"image": f"images/t{i}.mrc", "label": f"labels/t{i}.mrc"})
    (root / "datalist.json").write_text(
        json.dumps({"training": items[:n_train], "validation": items[n_train:]})
    )
    return root / "datalist.json"


def _workflow(bundle_root: Path, datalist: Path, overlays=(), **overrides) -> ConfigWorkflow:
    settings = {
        "bundle_root": str(bundle_root),
        "data_list_file_path": str(datalist),
        "network_def#features": FEATURES,
        "network_def#dropout": 0.0,
        "patch_size": [32, 32],
        "z_skip_fraction": 0.0,
        "train#batch_size": 2,
        "train#num_samples": 2,
        "train#epoch_length": 5,
        "train#trainer#max_epochs": 2,
        f"train#handlers#{_PROGRESS}#_disabled_": True,  # no progress bar in tests
        "optimizer#lr": 0.01,
        "validate#inferer#inferer#sw_batch_size": 8,
    }
    settings.update(overrides)
    wf = ConfigWorkflow(
        config_file=[str(CONFIGS / "train.json"), *(str(CONFIGS / o) for o in overlays)],
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=False,
        workflow_type=None,
        **settings,
    )
    wf.initialize()
    return wf


def _run(wf: ConfigWorkflow) -> dict:
    trainer = wf.parser.get_parsed_content("train#trainer")
    seen: dict = {"loss": [], "iteration": []}

    @trainer.on(Events.ITERATION_COMPLETED)
    def _record(engine):
        seen["loss"].append(float(engine.state.output["loss"]))
        seen["iteration"].append(engine.state.iteration)

    trainer.run()
    seen["epoch"] = trainer.state.epoch
    seen["final_iteration"] = trainer.state.iteration
    return seen


SHIPPED_STANDIN = b"the shipped model"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One short training run (quick overlay: DiceCE) on two 12x40x40 tomograms."""
    root = tmp_path_factory.mktemp("train")
    (root / "models").mkdir()
    (root / "models" / "model.pt").write_bytes(SHIPPED_STANDIN)  # stands in for the shipped weights
    datalist = _write_dataset(root / "data")
    set_determinism(0)
    seen = _run(_workflow(root, datalist, overlays=("quick.json",), **{"train#trainer#max_epochs": 4}))
    set_determinism(None)
    return root, datalist, seen


def test_training_run_folder_is_a_model_folder(tmp_path):
    """``finalize`` writes configs/ into the run folder: ``segment --model RUN`` needs no config edits,
    whatever the widths; the shipped model is untouched."""
    import os
    import subprocess
    import sys

    root = tmp_path / "bundle"
    shutil.copytree(CONFIGS, root / "configs")
    (root / "models").mkdir()
    (root / "models" / "model.pt").write_bytes(SHIPPED_STANDIN)
    datalist = _write_dataset(tmp_path / "data")
    splits = json.loads(datalist.read_text())
    datalist.write_text(json.dumps({**splits, "test": splits["validation"]}))  # training ignores "test"
    wf = _workflow(root, datalist, output_dir=str(tmp_path / "run"), **{"train#trainer#max_epochs": 1})
    _run(wf)
    wf.finalize()
    run = tmp_path / "run"
    config = json.loads((run / "configs" / "inference.json").read_text())
    assert config["network_def"]["features"] == FEATURES and config["network_def"]["in_channels"] == 1
    assert config["class_gains"] is None and config["min_component_size"] == 0  # tuned for other weights
    assert (run / "configs" / "metadata.json").is_file() and (run / "models" / "model.pt").is_file()
    # the run folder remembers its datalist: evaluate.json over the folder's inference.json scores its
    # test split with its own network and weights
    assert json.loads((run / "configs" / "metadata.json").read_text())["datalist"] == str(datalist.resolve())
    from monai.bundle import run as bundle_run

    configs = [str(run / "configs" / "inference.json"), str(CONFIGS / "evaluate.json")]
    bundle_run("evaluate", config_file=configs, bundle_root=str(run), invert="no", backend="torch")
    assert json.loads((run / "eval" / "metrics.json").read_text())["num_tomograms"] == 1
    assert (run / "eval" / "predictions" / "t2_seg.mrc").is_file()
    assert (root / "models" / "model.pt").read_bytes() == SHIPPED_STANDIN
    image, _ = _tiny_tomogram(7)
    save_mrc(tmp_path / "t.mrc", image, voxel_size=10.0)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "cryoet_monai", "segment", str(tmp_path / "t.mrc"), "-o",
                           str(tmp_path / "out"), "--model", str(run), "--invert", "no", "--no-progress"],
                          capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "out" / "t_seg.mrc").is_file()


def test_loss_falls_and_checkpoints_are_written(trained):
    root, _, seen = trained
    losses = seen["loss"]
    assert len(losses) == 20 and seen["iteration"] == list(range(1, 21))
    assert all(np.isfinite(losses))
    # DiceCE on an easy task: every epoch's mean loss is below the previous one's, and the last
    # epoch's is well below the first's
    epoch_means = [float(np.mean(losses[i : i + 5])) for i in range(0, 20, 5)]
    assert all(b < a for a, b in zip(epoch_means, epoch_means[1:])), epoch_means
    assert epoch_means[-1] < 0.85 * epoch_means[0], epoch_means
    best = root / "runs" / "models" / "model.pt"
    last = root / "runs" / "models" / "checkpoint_last.pt"
    # training writes under its run folder, never over the shipped model of the bundle
    assert (root / "models" / "model.pt").read_bytes() == SHIPPED_STANDIN
    assert best.is_file() and last.is_file()
    # zoo convention: model.pt is the plain state_dict of the network
    net = PaperUNet(spatial_dims=2, in_channels=1, out_channels=6, features=FEATURES, dropout=0.0)
    state = torch.load(best, map_location="cpu", weights_only=True)
    assert set(state) == set(net.state_dict())
    net.load_state_dict(state)
    ckpt = torch.load(last, map_location="cpu", weights_only=False)
    assert {"network", "optimizer", "lr_scheduler", "best_saver", "trainer"} <= set(ckpt)
    # the best-model bookkeeping: one (score, file) pair, the best validation score
    assert len(ckpt["best_saver"]["_saved"]) == 1 and 0.0 <= ckpt["best_saver"]["_saved"][0][0] <= 1.0
    assert ckpt["trainer"]["iteration"] == 20 and ckpt["trainer"]["epoch_length"] == 5
    assert ckpt["lr_scheduler"]["last_epoch"] == 4
    assert len(ckpt["optimizer"]["state"]) > 0  # Adam moments are saved


def test_resume_continues_counters(trained, tmp_path):
    root, datalist, first = trained
    resumed_root = tmp_path / "bundle"
    shutil.copytree(root / "runs" / "models", resumed_root / "runs" / "models")
    before = torch.load(resumed_root / "runs" / "models" / "checkpoint_last.pt", weights_only=False)
    wf = _workflow(resumed_root, datalist, overlays=("quick.json",), **{"train#trainer#max_epochs": 6})
    seen = _run(wf)
    # the counters continue from the checkpoint (epochs 5-6, iterations 21-30) instead of restarting
    assert seen["iteration"] == list(range(21, 31))
    assert seen["epoch"] == 6 and seen["final_iteration"] == 30
    after = torch.load(resumed_root / "runs" / "models" / "checkpoint_last.pt", weights_only=False)
    assert after["trainer"]["iteration"] == 30 and after["lr_scheduler"]["last_epoch"] == 6
    # the weights did continue from the checkpoint: the first resumed loss is close to the last ones
    # of the first run, far below the loss of a fresh network
    assert seen["loss"][0] < 0.9 * np.mean(first["loss"][:3])
    changed = [
        k
        for k, v in before["network"].items()
        if v.is_floating_point() and not torch.equal(v, after["network"][k])
    ]
    assert changed  # and it kept training


def test_resume_rejects_unreadable_checkpoint(tmp_path):
    (tmp_path / "checkpoint_last.pt").write_bytes(b"not a checkpoint")
    net = torch.nn.Linear(2, 2)
    handler = ResumeCheckpoint(tmp_path, {"network": net})

    class _Engine:
        class state:  # noqa: N801 - mimics ignite's State
            max_epochs = 3

    with pytest.raises(CheckpointResumeError, match="checkpoint_last.pt"):
        handler.load(_Engine())


def _evaluate(handler, net: torch.nn.Linear, scores: list[float]) -> None:
    """Run an evaluator-like engine whose epoch ``k`` scores ``scores[k - 1]`` as its key metric; the
    network's weight is set to the score and its bias to the epoch before the handler sees them."""
    engine = Engine(lambda engine, batch: None)

    @engine.on(Events.STARTED)
    def _key_metric(engine):
        engine.state.key_metric_name = "val_mean_fg_f1"

    @engine.on(Events.EPOCH_COMPLETED)
    def _score(engine):
        score = scores[engine.state.epoch - 1]
        engine.state.metrics["val_mean_fg_f1"] = score
        with torch.no_grad():
            net.weight.fill_(score)
            net.bias.fill_(engine.state.epoch)

    handler.attach(engine)
    engine.run([0], max_epochs=len(scores))


def _monai_saver(folder: Path, net: torch.nn.Module) -> CheckpointSaver:
    """What train.json used before BestMetricCheckpoint."""
    return CheckpointSaver(str(folder), {"model": net}, save_key_metric=True, key_metric_filename="model.pt")


def _saved(folder: Path) -> tuple[float, float]:
    state = torch.load(folder / "model.pt", map_location="cpu", weights_only=True)
    assert set(state) == {"weight", "bias"}  # the plain state_dict of the one saved object
    return float(state["weight"][0, 0]), float(state["bias"][0])


def test_best_metric_checkpoint_keeps_the_best_like_checkpoint_saver(tmp_path):
    """Same files as monai's CheckpointSaver(save_key_metric=True, key_metric_filename="model.pt"): only
    model.pt, replaced only by a higher score (an equal one keeps the first)."""
    scores = [0.2, 0.5, 0.4, 0.5, 0.3]
    ours, monai_dir = tmp_path / "ours", tmp_path / "monai"
    net = torch.nn.Linear(2, 2)
    _evaluate(BestMetricCheckpoint(ours, {"model": net}), net, scores)
    _evaluate(_monai_saver(monai_dir, net), net, scores)
    assert sorted(p.name for p in ours.iterdir()) == ["model.pt"]
    assert sorted(p.name for p in monai_dir.iterdir()) == ["model.pt"]
    assert _saved(ours) == _saved(monai_dir) == (pytest.approx(0.5), 2.0)


def test_best_metric_checkpoint_resumes_its_best_score(tmp_path):
    net = torch.nn.Linear(2, 2)
    first = BestMetricCheckpoint(tmp_path, {"model": net})
    _evaluate(first, net, [0.2, 0.5, 0.4])
    state = first.state_dict()
    assert [p for p, _ in state["_saved"]] == [0.5]

    # a resumed run replaces model.pt only with a better score than the best one before
    resumed = BestMetricCheckpoint(tmp_path, {"model": net})
    resumed.load_state_dict(state)
    _evaluate(resumed, net, [0.3])
    assert _saved(tmp_path) == (pytest.approx(0.5), 2.0)
    _evaluate(resumed, net, [0.6])
    assert _saved(tmp_path) == (pytest.approx(0.6), 1.0)
    # while without the bookkeeping any first score would replace it
    _evaluate(BestMetricCheckpoint(tmp_path, {"model": net}), net, [0.1])
    assert _saved(tmp_path) == (pytest.approx(0.1), 1.0)

    # the bookkeeping saved from monai's CheckpointSaver (a checkpoint_last.pt written before this
    # handler existed) loads, and ours loads into a CheckpointSaver
    legacy = BestMetricCheckpoint(tmp_path, {"model": net})
    legacy.load_state_dict({"_saved": [(0.5, "model_key_metric=0.5000.pt")]})
    assert legacy.state_dict()["_saved"] == [(0.5, "model_key_metric=0.5000.pt")]
    _monai_saver(tmp_path, net).load_state_dict(resumed.state_dict())


def test_resume_checkpoint_needs_state_dicts(tmp_path):
    net = torch.nn.Linear(2, 2)
    handler = ResumeCheckpoint(tmp_path, {"network": net, "best_saver": _monai_saver(tmp_path, net)})
    with pytest.raises(TypeError, match="'best_saver'.*BestMetricCheckpoint"):
        handler.save(Engine(lambda engine, batch: None))


@pytest.mark.parametrize("overlays", [(), ("quick.json",)], ids=["weighted_ce", "dice_ce"])
def test_ignored_voxels_add_nothing_to_loss_or_gradient(tmp_path, overlays):
    """Through the real training pipeline: label volumes with a 255 border, padded with 255 up to the
    crop size. Ignored voxels get exactly zero gradient, and changing the prediction or the label
    there leaves the loss unchanged -- while changing a labelled voxel does change it."""
    datalist = _write_dataset(tmp_path / "data", ignore_border=5)
    # crops larger than the 40x40 volume: SpatialPadd pads the label with 255 as well
    wf = _workflow(tmp_path, datalist, overlays=overlays, **{"patch_size": [48, 48]})
    loader = wf.parser.get_parsed_content("train#dataloader")
    batch = next(iter(loader))
    image, label = batch["image"], batch["label"]
    assert image.shape == (4, 1, 48, 48) and label.shape == (4, 1, 48, 48)
    ignored = label[:, 0] == IGNORE_LABEL
    assert ignored.float().mean() > 0.3 and (~ignored).any()
    assert set(torch.unique(label).tolist()) <= {0, 1, 2, 3, 4, 5, IGNORE_LABEL}

    net = wf.parser.get_parsed_content("network")
    loss_fn = wf.parser.get_parsed_content("loss")
    inferer = wf.parser.get_parsed_content("train#inferer")
    logits = inferer(image, net).detach().requires_grad_(True)
    loss = loss_fn(logits, label)
    (grad,) = torch.autograd.grad(loss, logits)
    mask = ignored.unsqueeze(1).expand_as(grad)
    assert torch.count_nonzero(grad[mask]) == 0
    assert grad[~mask].abs().sum() > 0

    with torch.no_grad():
        noisy = logits.detach().clone()
        noisy[mask] = torch.randn(int(mask.sum())) * 50
        assert torch.allclose(loss_fn(noisy, label), loss.detach(), atol=1e-6, rtol=0)
        relabelled = label.clone()
        relabelled[label == IGNORE_LABEL] = 3
        assert not torch.allclose(loss_fn(logits.detach(), relabelled), loss.detach(), atol=1e-4)

    # and through the network parameters: detaching the prediction at ignored voxels changes nothing
    net.zero_grad()
    loss_fn(inferer(image, net), label).backward()
    g_full = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    out = inferer(image, net)
    loss_fn(torch.where(mask, out.detach(), out), label).backward()
    for a, p in zip(g_full, net.parameters()):
        assert torch.allclose(a, p.grad, atol=1e-7, rtol=1e-5)


def test_crop_z_fraction_values():
    vol = torch.arange(20, dtype=torch.float32).view(1, 20, 1, 1).expand(1, 20, 3, 3).clone()
    out = CropZFraction(0.1)(vol)
    assert out.shape == (1, 16, 3, 3) and out[0, :, 0, 0].tolist() == list(range(2, 18))
    assert z_fraction_slice(3, 0.4) == slice(1, 2)  # at least one slice survives
    assert z_fraction_slice(5, 0.0) == slice(0, 5)
    d = CropZFractiond(["image", "label"], 0.25)({"image": vol, "label": vol.clone().to(torch.uint8)})
    assert d["image"][0, :, 0, 0].tolist() == list(range(5, 15))
    assert d["label"][0, :, 0, 0].tolist() == list(range(5, 15))
    with pytest.raises(ValueError, match="0.5"):
        CropZFraction(0.5)
    with pytest.raises(ValueError, match="'label' has spatial shape"):
        CropZFractiond(["image", "label"], 0.1)({"image": vol, "label": vol[:, :10]})
    with pytest.raises(ValueError, match=r"\(C, Z, Y, X\)"):
        CropZFraction(0.1)(torch.zeros(1, 4, 4))


def test_slice_stride_values():
    vol = torch.arange(10, dtype=torch.float32).view(1, 10, 1, 1)
    assert SliceStride(3)(vol)[0, :, 0, 0].tolist() == [1.0, 4.0, 7.0]
    assert SliceStride(1)(vol) is vol
    d = SliceStrided(["image"], 4)({"image": vol})
    assert d["image"][0, :, 0, 0].tolist() == [2.0, 6.0]
    with pytest.raises(ValueError, match="stride"):
        SliceStride(0)


def test_autocast_inferer_matches_fp32():
    torch.manual_seed(0)
    net = PaperUNet(spatial_dims=2, features=FEATURES, dropout=0.0).eval()
    x = torch.randn(1, 1, 6, 32, 32)
    with torch.no_grad():
        ref = SliceInferer(roi_size=(32, 32), spatial_dim=0)(x, net)
        out = AutocastInferer(SliceInferer(roi_size=(32, 32), spatial_dim=0), device_type="cpu")(x, net)
        same = AutocastInferer(SimpleInferer(), enabled=False)(x[:, :, 0], net)
    assert out.dtype == torch.float32 and out.shape == ref.shape == (1, 6, 6, 32, 32)
    assert (out - ref).abs().max() < 0.05 * ref.abs().max()  # bf16 rounding, nothing worse
    assert (out.argmax(1) == ref.argmax(1)).float().mean() > 0.95
    assert torch.allclose(same, net(x[:, :, 0]), atol=1e-6)


def test_prepare_datalist_uses_existing_and_generates_synthetic(tmp_path, caplog):
    datalist = _write_dataset(tmp_path / "user")
    assert prepare_datalist(datalist, tmp_path / "cache") == str(datalist)
    assert not (tmp_path / "cache").exists()

    caplog.set_level(logging.INFO, logger="cryoet_monai")
    missing = tmp_path / "nowhere" / "datalist.json"
    generated = Path(prepare_datalist(missing, tmp_path / "cache", n_tomograms=3, shape=(8, 32, 32)))
    assert "generating 3 synthetic tomograms" in caplog.text
    content = json.loads(generated.read_text())
    assert len(content["training"]) >= 1 and len(content["validation"]) >= 1
    for item in content["training"] + content["validation"]:
        assert (generated.parent / item["image"]).is_file() and (generated.parent / item["label"]).is_file()
    mtime = generated.stat().st_mtime_ns
    caplog.clear()
    assert prepare_datalist(missing, tmp_path / "cache", n_tomograms=3, shape=(8, 32, 32)) == str(generated)
    assert generated.stat().st_mtime_ns == mtime and "generating" not in caplog.text

    bad = tmp_path / "bad.json"
    bad.write_text('{"training": []}')
    with pytest.raises(DatalistError, match="bad.json"):
        prepare_datalist(bad, tmp_path / "cache")


def test_write_datalist_splits_by_tomogram(tmp_path):
    _write_dataset(tmp_path, n_train=4, n_val=1)
    out = write_datalist(tmp_path, val_fraction=0.2, test_fraction=0.2, seed=1)
    content = json.loads(out.read_text())
    sizes = {k: len(v) for k, v in content.items()}
    assert sizes == {"training": 3, "validation": 1, "test": 1}
    images = [i["image"] for v in content.values() for i in v]
    assert sorted(images) == [f"images/t{i}.mrc" for i in range(5)]  # each tomogram in exactly one split
    assert all(i["label"] == i["image"].replace("images/", "labels/") for v in content.values() for i in v)
    (tmp_path / "labels" / "t2.mrc").unlink()
    with pytest.raises(DatalistError, match="t2.mrc"):
        write_datalist(tmp_path)
