"""Shared pytest fixtures. Tests are CPU-sized: tiny volumes, narrow networks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from cryoet_monai import PaperUNet

torch.set_num_threads(2)

REPO_ROOT = Path(__file__).resolve().parents[1]
# Real MRC files written by other software; never copied into the project.
MRC_CORPUS = REPO_ROOT.parent / "shared" / "mrc-corpus"
# tiny test networks take what the shipped network takes (slices as channels for a 2.5-D model)
SHIPPED_IN_CHANNELS = json.loads((REPO_ROOT / "configs" / "inference.json").read_text())["network_def"][
    "in_channels"
]
FEATURES = [4, 8, 16, 32, 64]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def mrc_corpus() -> Path:
    if not MRC_CORPUS.is_dir():
        pytest.skip(f"MRC corpus not found at {MRC_CORPUS}")
    return MRC_CORPUS


@pytest.fixture
def single_thread():
    """One intra-op thread for tests of many tiny forwards: on a shared, loaded CPU, OpenMP threads
    waiting for each other make small convolutions hundreds of times slower (1.2 s vs 3 ms measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_bundle(tmp_path: Path, repo_root: Path) -> Path:
    """A copy of the bundle's configs with a tiny network, plus its weights in models/model.pt."""
    root = tmp_path / "bundle"
    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    config = json.loads((repo_root / "configs" / "inference.json").read_text())
    config["network_def"]["features"] = FEATURES
    # the shipped model's tuned post-processing belongs to its weights, not to a random tiny network
    config["class_gains"], config["min_component_size"] = None, 0
    # eager torch: an OpenVINO conversion per test process would only add start-up time (the backends
    # have their own tests, tests/test_backends.py)
    config["backend"] = "torch"
    (root / "configs" / "inference.json").write_text(json.dumps(config))
    shutil.copy(repo_root / "configs" / "metadata.json", root / "configs" / "metadata.json")
    torch.manual_seed(0)
    net = PaperUNet(2, SHIPPED_IN_CHANNELS, 6, features=FEATURES)
    torch.save(net.state_dict(), root / "models" / "model.pt")
    return root


