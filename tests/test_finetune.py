"""Fine-tuning from painted slices: the painting convention, checks before training, and a real
fine-tuning run that beats the shipped model on a tomogram rendered in a style it never saw."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from cryoet_monai.cli import main
from cryoet_monai.evaluation.transfer import score_volume
from cryoet_monai.finetune import PAINTED_BACKGROUND, FinetuneError, finetune, painted_to_labels
from cryoet_monai.io.mrc import read_mrc, save_mrc

pytestmark = pytest.mark.usefixtures("single_thread")


def test_painting_convention():
    painted = np.array([[0, 1, 2, 3], [4, 5, 6, 255]], np.uint8)
    labels = painted_to_labels(painted)
    # 0 and 255: not painted (ignored); 6: painted background; 1-5: the classes as in the output
    assert labels.tolist() == [[255, 1, 2, 3], [4, 5, 0, 255]]
    assert PAINTED_BACKGROUND == 6
    with pytest.raises(FinetuneError, match=r"x\.mrc: painted values 7, 9 are not classes"):
        painted_to_labels(np.array([0, 7, 9, 1]), "x.mrc")
    with pytest.raises(FinetuneError, match=r"x\.mrc: nothing is painted"):
        painted_to_labels(np.zeros((2, 3, 4), np.uint8), "x.mrc")


@pytest.fixture
def tomogram(tmp_path: Path) -> Path:
    image = np.random.default_rng(0).standard_normal((8, 32, 32)).astype(np.float32)
    save_mrc(tmp_path / "tomo.mrc", image, voxel_size=10.0)
    return tmp_path / "tomo.mrc"


@pytest.mark.parametrize(
    "painted, pattern",
    [
        (np.zeros((8, 32, 30), np.uint8), r"bad\.mrc: painted grid \(8, 32, 30\) does not match tomo\.mrc"),
        (np.full((8, 32, 32), 12, np.uint8), r"bad\.mrc: painted values 12 are not classes"),
        (np.zeros((8, 32, 32), np.uint8), r"bad\.mrc: nothing is painted"),
    ],
)
def test_bad_painted_files_are_one_line_errors_and_write_nothing(
    tmp_path: Path, tomogram: Path, painted: np.ndarray, pattern: str, capsys: pytest.CaptureFixture
):
    save_mrc(tmp_path / "bad.mrc", painted, voxel_size=10.0)
    out = tmp_path / "model"
    code = main(["finetune", str(tomogram), "--labels", str(tmp_path / "bad.mrc"), "-o", str(out)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("error: ") and re.search(pattern, lines[0]), lines
    assert not out.exists()


def test_tiff_painting_as_napari_saves_it(tmp_path: Path):
    import tifffile

    from cryoet_monai.finetune import read_painted

    painted = np.zeros((4, 16, 16), np.uint8)
    painted[2, 3:5, :] = 4
    painted[2, 8:, :] = PAINTED_BACKGROUND
    tifffile.imwrite(tmp_path / "painted.tif", painted)
    labels = painted_to_labels(read_painted(tmp_path / "painted.tif"))
    assert (labels[2, 3:5] == 4).all() and (labels[2, 8:] == 0).all() and (labels[0] == 255).all()


def test_missing_painted_file_and_count_mismatch(tmp_path: Path, tomogram: Path):
    with pytest.raises(FinetuneError, match="not found"):
        finetune([tomogram], [tmp_path / "missing.mrc"], tmp_path / "m")
    with pytest.raises(FinetuneError, match="1 tomogram"):
        finetune([tomogram], [], tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_adapt_batch_norm_takes_the_statistics_of_the_tomogram():
    import torch

    from cryoet_monai import PaperUNet
    from cryoet_monai.finetune import FrozenBatchNorm, adapt_batch_norm

    torch.manual_seed(0)
    net = FrozenBatchNorm(PaperUNet(2, 3, 6, features=[4, 8, 16, 32, 64])).train()
    first = next(m for m in net.network.modules() if isinstance(m, torch.nn.BatchNorm2d))
    weights = {k: v.clone() for k, v in net.network.state_dict().items() if "running" not in k}
    # a tomogram with intensities far from the normalised ones: mean 5, std 3
    image = 5.0 + 3.0 * torch.randn(1, 10, 64, 64)
    conv = next(m for m in net.network.modules() if isinstance(m, torch.nn.Conv2d))  # feeds ``first``
    with torch.no_grad():
        features = conv(image[0, :3][None])
    adapt_batch_norm(net.network, [image], context=3, windows=16, size=64, batch_size=8)
    # the running mean of the first norm is now that of the first convolution's output on this data
    assert torch.allclose(first.running_mean, features.mean(dim=(0, 2, 3)), atol=0.1 * features.std())
    assert first.momentum == 0.1 and not first.training  # frozen norms stay frozen, momentum as before
    assert all(torch.equal(v, net.network.state_dict()[k]) for k, v in weights.items()
               if "num_batches" not in k)  # only the statistics changed


#: a rendering outside the shipped model's training ranges (configs/transfer.json): the fast
#: 3-D Fourier imaging, far below the training dose's SNR, strongly low-passed
SHIFTED_STYLE = {"mode": "fourier", "snr": 0.15, "lowpass": 45.0, "class_mix": {"carbon_edge": 0.0}}
PAINTED_SLICES = (8, 20, 32)


def _unpainted_f1(seg_path: Path, label: np.ndarray) -> float:
    pred, _ = read_mrc(seg_path, mmap=False)
    keep = np.setdiff1d(np.arange(label.shape[0]), PAINTED_SLICES)
    f1 = score_volume(pred[keep], label[keep], tolerance=2)["f1"]
    return float(np.mean(list(f1.values())))


@pytest.mark.slow
def test_finetuning_beats_the_shipped_model_on_a_shifted_style(tmp_path: Path):
    from cryoet_monai.data.synthetic import generate_tomogram

    image, label = generate_tomogram((40, 256, 256), 10.0, 4242, **SHIFTED_STYLE)
    save_mrc(tmp_path / "tomo.mrc", image, voxel_size=10.0)
    painted = np.zeros_like(label)
    for z in PAINTED_SLICES:
        painted[z] = np.where(label[z] == 0, PAINTED_BACKGROUND, label[z])
    save_mrc(tmp_path / "painted.mrc", painted, voxel_size=10.0)

    assert main(["segment", str(tmp_path / "tomo.mrc"), "-o", str(tmp_path / "before"), "--no-progress"]) == 0
    before = _unpainted_f1(tmp_path / "before" / "tomo_seg.mrc", label)
    code = main(["finetune", str(tmp_path / "tomo.mrc"), "--labels", str(tmp_path / "painted.mrc"),
                 "-o", str(tmp_path / "my_model"), "--minutes", "2", "--segment"])
    assert code == 0
    assert (tmp_path / "my_model" / "configs" / "inference.json").is_file()
    after = _unpainted_f1(tmp_path / "my_model" / "segmentations" / "tomo_seg.mrc", label)
    assert after > before + 0.05, (before, after)


def test_finetune_bundle_config_checks_before_training(tmp_path: Path, tomogram: Path, repo_root: Path):
    """`monai.bundle run finetune --config_file configs/finetune.json`: the same function, the same
    one-line errors (a painted file on another grid), nothing written."""
    import os
    import subprocess
    import sys

    save_mrc(tmp_path / "bad.mrc", np.zeros((8, 32, 30), np.uint8), voxel_size=10.0)
    cmd = [sys.executable, "-m", "monai.bundle", "run", "finetune", "--config_file", "configs/finetune.json",
           "--meta_file", "configs/metadata.json", "--tomograms", f"['{tomogram}']",
           "--painted", f"['{tmp_path / 'bad.mrc'}']", "--output_dir", str(tmp_path / "m")]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(repo_root))
    proc = subprocess.run(cmd, cwd=repo_root, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    last = proc.stderr.splitlines()[-1]
    assert re.search(r"^error: .*bad\.mrc: painted grid \(8, 32, 30\) does not match", last), last
    assert not (tmp_path / "m").exists()
