"""configs/multi_gpu_train.json under torchrun: two CPU processes (gloo), one short epoch."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cryoet_monai import PaperUNet

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


@pytest.mark.slow
def test_multi_gpu_config_two_gloo_processes(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [
        sys.executable, "-m", "torch.distributed.run",
        "--standalone", "--nproc_per_node", "2",
        "-m", "monai.bundle", "run", "training",
        "--config_file", json.dumps([str(CONFIGS / "train.json"), str(CONFIGS / "multi_gpu_train.json")]),
        "--bundle_root", str(tmp_path),
        "--network_def#features", "[4,8,16,32,64]",
        "--network_def#dropout", "0.0",
        "--patch_size", "[32,32]",
        "--synthetic#n_tomograms", "4",
        "--synthetic#shape", "[12,48,48]",
        "--train#trainer#max_epochs", "1",
        "--train#epoch_length", "3",
        "--train#batch_size", "1",
        "--validate#slice_stride", "3",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    # the synthetic dataset was generated once (rank 0) while rank 1 waited at the barrier
    assert log.count("generating 4 synthetic tomograms") == 1
    # only rank 0 logs per-iteration stats: exactly epoch_length loss lines
    assert len(re.findall(r"Epoch: 1/1, Iter: \d/3 -- train_loss", log)) == 3
    state = torch.load(tmp_path / "runs" / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert not any(k.startswith("module.") for k in state)  # DDP wrapper stripped
    PaperUNet(spatial_dims=2, features=[4, 8, 16, 32, 64], dropout=0.0).load_state_dict(state)
    last = torch.load(
        tmp_path / "runs" / "models" / "checkpoint_last.pt", map_location="cpu", weights_only=False
    )
    assert last["trainer"]["iteration"] == 3 and last["trainer"]["epoch_length"] == 3
