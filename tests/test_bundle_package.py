"""Bundle packaging: zoo layout, zip contents, and every offline verification check on a tiny model."""

from __future__ import annotations

import hashlib
import json
import urllib.request
import zipfile
from pathlib import Path

import pytest
import torch
import yaml

from cryoet_monai.networks import PaperUNet
from scripts.bundle_tools import (
    VERIFY_CHECKS,
    BundleError,
    NetworkAccessError,
    build_bundle,
    no_network,
    package_bundle,
    verify_bundle,
)

SHIPPED_IN_CHANNELS = json.loads(
    (Path(__file__).resolve().parents[1] / "configs" / "inference.json").read_text()
)["network_def"]["in_channels"]
TINY = [4, 8, 16, 32, 64]


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "tiny.pt"
    torch.save(PaperUNet(spatial_dims=2, in_channels=SHIPPED_IN_CHANNELS, features=TINY).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def packaged(tmp_path_factory: pytest.TempPathFactory, tiny_weights: Path):
    out = tmp_path_factory.mktemp("dist")
    return package_bundle(out, weights=tiny_weights, network_overrides={"features": TINY})


def test_every_check_passes_on_unzipped_bundle(packaged):
    names = [c.name for c in packaged.checks]
    assert names == list(VERIFY_CHECKS)
    failed = {c.name: c.detail for c in packaged.checks if not c.passed}
    assert not failed, failed
    assert packaged.passed
    details = {c.name: c.detail for c in packaged.checks}
    assert "argmax agree 1.0000" in details["torchscript"] and "argmax agree 1.0000" in details["onnx"]
    assert "exported with torch.jit.script" in details["torchscript"]  # scripted, not traced
    assert "(12, 64, 64)" in details["inference"]  # the label volume has the input's shape


def test_zip_layout(packaged, tiny_weights: Path):
    with zipfile.ZipFile(packaged.zip_path) as zf:
        names = set(zf.namelist())
        large = yaml.safe_load(zf.read("cryoet_segmentation/large_files.yml"))
        inference = json.loads(zf.read("cryoet_segmentation/configs/inference.json"))
        weights = zf.read("cryoet_segmentation/models/model.pt")
    root = "cryoet_segmentation/"
    for required in (
        "configs/metadata.json",
        "configs/inference.json",
        "configs/train.json",
        "configs/evaluate.json",
        "configs/logging.conf",
        "models/model.pt",
        "docs/README.md",
        "docs/license.txt",
        "docs/meta_schema.json",
        "cryoet_monai/__init__.py",
        "cryoet_monai/inference/engine.py",
        "LICENSE",
    ):
        assert root + required in names, required
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert weights == tiny_weights.read_bytes()
    assert large["large_files"][0]["path"] == "models/model.pt"
    assert large["large_files"][0]["hash_val"] == hashlib.md5(weights).hexdigest()
    assert inference["network_def"]["features"] == TINY  # configs agree with the packaged weights


def test_verification_reports_failures(tmp_path: Path, tiny_weights: Path):
    bundle, zip_path = build_bundle(tmp_path, weights=tiny_weights, make_zip=False)
    assert zip_path is None
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    del meta["network_data_format"]["outputs"]["pred"]["num_channels"]
    (bundle / "configs" / "metadata.json").write_text(json.dumps(meta))
    (bundle / "models" / "model.pt").write_bytes(b"not the packaged weights")
    results = verify_bundle(bundle, checks=("verify_metadata", "large_files"))
    assert [r.passed for r in results] == [False, False]
    assert "num_channels" in results[0].detail
    assert "hash" in results[1].detail.lower()
    with pytest.raises(BundleError, match="exists already"):
        build_bundle(tmp_path, weights=tiny_weights)


def test_build_refuses_missing_weights(tmp_path: Path):
    with pytest.raises(BundleError, match="nothing.pt.*not found"):
        build_bundle(tmp_path / "out", weights=tmp_path / "nothing.pt")
    assert not (tmp_path / "out").exists()


def test_no_network_blocks_downloads():
    with no_network() as attempts:
        with pytest.raises(OSError):
            urllib.request.urlopen("http://example.com", timeout=5)
    assert attempts and "example.com" in attempts[0]
    assert issubclass(NetworkAccessError, OSError)
