"""A plain install (a wheel, no checkout on the path) segments from an empty folder with the
model and configs that travel inside the package."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from cryoet_monai.io.mrc import read_mrc, save_mrc


@pytest.mark.slow
def test_wheel_installs_and_segments_from_an_empty_folder(tmp_path: Path, repo_root: Path):
    wheels = tmp_path / "wheels"
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
             "-w", str(wheels), str(repo_root)]
    proc = subprocess.run(build, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = wheels.glob("cryoet_monai-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for shipped in ("configs/inference.json", "configs/metadata.json", "models/model.pt",
                    "models/model_int8.xml", "models/model_int8.bin", "models/model_int8.json"):
        assert f"cryoet_monai/shipped/{shipped}" in names, shipped
    site = tmp_path / "site"
    install = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)]
    proc = subprocess.run(install, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]

    work = tmp_path / "empty"
    work.mkdir()
    image = np.random.default_rng(0).standard_normal((8, 64, 64)).astype(np.float32)
    save_mrc(work / "tomo.mrc", image, voxel_size=10.0)
    env = dict(os.environ, PYTHONPATH=str(site), OMP_NUM_THREADS="1")
    where = subprocess.run([sys.executable, "-c", "import cryoet_monai; print(cryoet_monai.__file__)"],
                           cwd=work, env=env, capture_output=True, text=True)
    # the installed copy is imported, not the checkout
    assert Path(where.stdout.strip()).is_relative_to(site), where.stdout
    segment = [sys.executable, "-m", "cryoet_monai", "segment", "tomo.mrc", "-o", "out", "--no-progress"]
    proc = subprocess.run(segment, cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    labels, meta = read_mrc(work / "out" / "tomo_seg.mrc")
    assert labels.shape == image.shape and meta["voxel_size"] == (10.0, 10.0, 10.0)
