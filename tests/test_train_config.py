"""The bundle configs as users run them: ``python -m monai.bundle run ...`` in a subprocess, shrunk by
command-line overrides only (the files are not edited), on tiny synthetic data made in tmp_path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

from cryoet_monai import PaperUNet

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
FEATURES = "[4,8,16,32,64]"


def _bundle(args: list[str], cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, "-m", "monai.bundle", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


SHRINK = [
    "--network_def#features", FEATURES,
    "--network_def#dropout", "0.0",
    "--synthetic#n_tomograms", "3",
    "--synthetic#shape", "[12,48,48]",
    "--train#trainer#max_epochs", "1",
    "--train#epoch_length", "2",
    "--train#batch_size", "2",
    "--validate#slice_stride", "3",
]  # fmt: skip


def test_train_json_paper_configuration_runs_with_overrides(tmp_path):
    """``run training`` on configs/train.json: no datalist -> the embedded synthetic dataset is generated
    (and said so), the paper's weighted CE trains one short epoch, the best model is a plain state_dict."""
    proc = _bundle(
        [
            "run", "training",
            "--config_file", str(CONFIGS / "train.json"),
            "--bundle_root", str(tmp_path),
            "--patch_size", "[32,32]",
            *SHRINK,
        ],
        cwd=REPO,
    )  # fmt: skip
    log = proc.stdout + proc.stderr
    assert "generating 3 synthetic tomograms of shape (12, 48, 48)" in log
    assert "val F1 per class" in log and "Key metric: val_mean_fg_f1" in log
    datalist = next((tmp_path / ".cache").glob("synthetic-*/datalist.json"))
    assert json.loads(datalist.read_text())["validation"]

    state = torch.load(tmp_path / "runs" / "models" / "model.pt", map_location="cpu", weights_only=True)
    net = PaperUNet(spatial_dims=2, features=json.loads(FEATURES), dropout=0.0)
    net.load_state_dict(state)  # strict: exactly the network's keys, no "module." prefix
    last = torch.load(
        tmp_path / "runs" / "models" / "checkpoint_last.pt", map_location="cpu", weights_only=False
    )
    assert last["trainer"]["iteration"] == 2 and last["trainer"]["epoch_length"] == 2
    assert any((tmp_path / "runs").glob("events.out.tfevents.*"))  # TensorBoard logs


def test_3d_overlay_runs_with_plain_run(tmp_path):
    """``run`` (not ``run training``) with the 3-D U-Net overlay: 3-D crops, sliding-window validation."""
    _bundle(
        [
            "run",
            "--config_file", json.dumps([str(CONFIGS / "train.json"), str(CONFIGS / "train_3d.json")]),
            "--bundle_root", str(tmp_path),
            "--patch_size_3d", "[16,32,32]",
            *SHRINK,
            "--validate#slice_stride", "1",
        ],
        cwd=REPO,
    )  # fmt: skip
    state = torch.load(tmp_path / "runs" / "models" / "model.pt", map_location="cpu", weights_only=True)
    net = PaperUNet(spatial_dims=3, features=json.loads(FEATURES), dropout=0.0, upsample="trilinear")
    net.load_state_dict(state)
    assert all(v.ndim == 5 for k, v in state.items() if k.endswith("conv.weight"))


def _merged(*names: str) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / n) for n in names])
    parser.read_meta(str(CONFIGS / "metadata.json"))
    return parser


def test_config_defaults_and_overlays():
    """Paper defaults in train.json; quick.json and train_3d.json change only what they say."""
    paper = _merged("train.json")
    assert paper["network_def"]["features"] == [64, 128, 256, 512, 1024]
    assert paper["class_weights"] == [1, 2000, 3000, 2000, 2000, 3000]
    assert paper["loss"]["_target_"].endswith("WeightedCrossEntropyLoss")
    assert (
        paper["optimizer"]["lr"] == 0.001
        and paper["train"]["batch_size"] * paper["train"]["num_samples"] == 4
    )
    assert paper["train"]["trainer"]["max_epochs"] == 50 and paper["patch_size"] == [512, 512]
    assert paper.get_parsed_content("voxel_size") == 10.0
    for key in (
        "initialize",
        "run",
        "training",
        "finalize",
        "network_def",
        "ckpt_dir",
        "data_list_file_path",
    ):
        assert key in paper.config
    assert paper["run"] == paper["training"]

    quick = _merged("train.json", "quick.json")
    assert quick["loss"]["_target_"].endswith("MaskedDiceCELoss")
    assert quick["network_def"]["features"] == [16, 32, 64, 128, 256]
    assert quick["patch_size"] == [128, 128] and quick["optimizer"]["lr"] == 0.002
    assert quick.get_parsed_content("crop_size") == [1, 128, 128]
    assert quick["network_def"]["spatial_dims"] == 2 and quick["train"]["resume"] is True

    three = _merged("train.json", "train_3d.json")
    assert three["network_def"]["spatial_dims"] == 3
    assert three.get_parsed_content("crop_size") == [32, 128, 128]
    assert [t["_target_"] for t in three["train"]["crop"]] == ["RandCropByLabelClassesd"]  # no squeeze
    net = three.get_parsed_content("network_def").eval()
    with torch.no_grad():
        assert net(torch.zeros(1, 1, 16, 16, 16)).shape == (1, 6, 16, 16, 16)


@pytest.mark.parametrize("overlay", ["quick.json", "train_3d.json", "multi_gpu_train.json",
                                     "warm_start.json", "prune.json"])
def test_overlays_only_touch_known_ids(overlay):
    """Every nested key an overlay sets must exist in train.json (a typo would silently add a new key)."""
    base = _merged("train.json")
    content = json.loads((CONFIGS / overlay).read_text())
    known_new = {"patch_size_3d", "dist_backend", "train#sampler", "validate#sampler", "prune_weights",
                 "train#dataloader#sampler", "validate#dataloader#sampler"}  # fmt: skip
    for key in content:
        if key in known_new:
            continue
        parent = key.rsplit("#", 1)[0] if "#" in key else None
        assert key in base or (parent is not None and parent in base), f"{overlay}: unknown id {key!r}"


def test_warm_start_loads_the_initial_weights(tmp_path):
    """``initial_weights`` (warm_start.json: the shipped model) initialises the network; a file that
    does not fit the network is a one-line error naming it."""
    from cryoet_monai.inference import InferenceError

    torch.manual_seed(3)
    source = PaperUNet(2, 1, 6, features=[4, 8, 16, 32, 64])
    (tmp_path / "models").mkdir()
    torch.save(source.state_dict(), tmp_path / "models" / "model.pt")
    parser = _merged("train.json", "quick.json")
    parser["network_def"]["features"] = [4, 8, 16, 32, 64]
    parser["initial_weights"] = str(tmp_path)  # a model folder: its models/model.pt
    parser["device"] = "$torch.device('cpu')"
    network = parser.get_parsed_content("network")
    for key, value in source.state_dict().items():
        assert torch.equal(network.state_dict()[key], value), key
    fresh = _merged("train.json", "quick.json")
    fresh["network_def"]["features"] = [4, 8, 16, 32, 64]
    fresh["device"] = "$torch.device('cpu')"
    assert fresh["initial_weights"] is None
    first = next(iter(source.state_dict()))
    fresh_weights = fresh.get_parsed_content("network").state_dict()[first]
    assert not torch.equal(fresh_weights, source.state_dict()[first])
    wrong = _merged("train.json", "quick.json")  # width 16: the 4-wide weights do not fit
    wrong["initial_weights"] = str(tmp_path / "models" / "model.pt")
    wrong["device"] = "$torch.device('cpu')"
    with pytest.raises(Exception) as info:
        wrong.get_parsed_content("network")
    cause = info.value
    while cause.__cause__ is not None and not isinstance(cause, InferenceError):
        cause = cause.__cause__
    assert isinstance(cause, InferenceError) and "model.pt: the checkpoint does not fit" in str(cause)
    overlay = json.loads((CONFIGS / "warm_start.json").read_text())
    assert overlay["initial_weights"].endswith("'/models/model.pt'")


@pytest.mark.parametrize("kind, crop", [("train_2p5d.json", (5, 32, 32)), ("train_3d.json", (1, 8, 32, 32)),
                                        (None, (1, 32, 32))])
def test_transfer_style_augmentation_runs_on_every_kind(kind, crop):
    """transfer.json's style augmentation is shared by the 2-D, 2.5-D and 3-D recipes: each transform,
    forced to fire, keeps the crop's shape and changes it (3-D crops need trilinear up-sampling)."""
    parser = _merged(*[name for name in ("train.json", "transfer.json", kind) if name])
    transforms = parser.get_parsed_content("train#style_augmentation")
    assert "RandSimulateLowResolutiond" in [type(t).__name__ for t in transforms]
    image = torch.randn(*crop)
    for transform in transforms:
        transform.set_random_state(0)
        for level in (transform, getattr(transform, "transform", None)):  # our d-twins draw inside
            if level is not None:
                level.prob = 1.0
        out = transform({"image": image.clone(), "label": torch.zeros(*crop)})["image"]
        assert tuple(out.shape) == crop, type(transform).__name__
        assert not torch.equal(torch.as_tensor(out), image), type(transform).__name__
