"""``copick inference cryoet-monai`` (:mod:`cryoet_monai.integrations.copick`) on a local copick project.

copick pins zarr < 3, so it has an environment of its own: ``scripts/copick_env.sh`` makes one
(``/tmp/copick-env``) that borrows torch and MONAI from ``.venv``; then
``/tmp/copick-env/bin/python -m pytest tests/test_copick.py``. In an interpreter without copick the
project tests skip; the missing-copick message is tested wherever click is.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

pytest.importorskip("click", reason="click (a dependency of copick) is not installed")
from click.testing import CliRunner  # noqa: E402

from cryoet_monai import CLASS_NAMES  # noqa: E402
from cryoet_monai.integrations import copick as integration  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")

SHAPE = (16, 64, 64)
GOOD_RUNS = ("TS_001", "TS_002")
#: what the command writes by default: voxel spacing, user, session, name
SEG = {"voxel_size": 10.0, "user_id": "cryoet-monai", "session_id": "0", "name": "cryoet-monai"}


@pytest.fixture(scope="module")
def copick() -> ModuleType:
    return pytest.importorskip(
        "copick", reason="copick is not installed here; it needs its own environment (it pins zarr<3): "
        "run scripts/copick_env.sh and use /tmp/copick-env/bin/python"
    )


@pytest.fixture
def project(tmp_path: Path, copick: ModuleType) -> Path:
    """A filesystem copick project: two runs with a synthetic ``wbp`` tomogram at 10 Å, one with a flat
    (all-zero) one the segmenter refuses, and a pickable object whose label 2 is not our ribosome."""
    from cryoet_monai.data.synthetic import generate_tomogram

    config = tmp_path / "copick.json"
    config.write_text(json.dumps({
        "config_type": "filesystem",
        "name": "cryoet-monai test",
        "version": copick.__version__,
        "pickable_objects": [{"name": "apoferritin", "is_particle": True, "label": 2, "radius": 60.0}],
        "overlay_root": f"local://{tmp_path / 'overlay'}",
        "overlay_fs_args": {"auto_mkdir": True},
    }))
    root = copick.from_file(str(config))
    for seed, name in enumerate(GOOD_RUNS):
        tomogram = root.new_run(name).new_voxel_spacing(10.0).new_tomogram("wbp")
        tomogram.from_numpy(generate_tomogram(SHAPE, 10.0, seed, mode="fourier")[0])
    flat = root.new_run("TS_flat").new_voxel_spacing(10.0).new_tomogram("wbp")
    flat.from_numpy(np.zeros(SHAPE, np.float32))
    return config


def _segmentations(copick: ModuleType, config: Path, run: str) -> list:
    """The run's segmentations as a fresh project sees them on disk."""
    return copick.from_file(str(config)).get_run(run).segmentations


def test_segments_every_run_through_copicks_cli(copick: ModuleType, project: Path, tiny_bundle: Path) -> None:
    import zarr
    from copick.cli.cli import cli

    options = {"device": "cpu", "precision": "fp32"}
    args = ["-c", str(project), "--model", str(tiny_bundle), *(f"--{k}={v}" for k, v in options.items())]
    result = CliRunner().invoke(cli, ["inference", "cryoet-monai", *args])
    # the flat tomogram fails, alone, as one line; the others are segmented
    assert result.exit_code == 1, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1 and errors[0].startswith("ERROR  TS_flat") and "flat" in errors[0], result.stderr
    assert "label 2 is 'apoferritin'" in result.stderr  # the project's labels mean something else
    assert "1 of 3 runs failed" in result.stderr
    assert _segmentations(copick, project, "TS_flat") == []  # nothing half-written

    # the labels as the engine makes them from the whole tomogram in memory
    segmenter = integration.build_segmenter(tiny_bundle, {**options, "progress": False})
    root = copick.from_file(str(project))
    for name in GOOD_RUNS:
        lines = result.stdout.splitlines()
        assert any(line.startswith(f"{name}: wbp 16x64x64") for line in lines), result.stdout
        run = root.get_run(name)
        segs = run.get_segmentations(is_multilabel=True, **SEG)
        assert len(segs) == 1 and segs == run.segmentations
        seg = segs[0]
        assert seg.voxel_size == 10.0 and seg.is_multilabel
        labels = seg.numpy()
        tomogram = run.get_voxel_spacing(10.0).get_tomograms("wbp")[0].numpy()
        assert labels.shape == tomogram.shape == SHAPE and labels.dtype == np.uint8
        assert set(np.unique(labels).tolist()) <= set(range(len(CLASS_NAMES)))
        expected, _ = segmenter.segment_array(tomogram, 10.0, name=name)
        np.testing.assert_array_equal(labels, expected)
        attrs = zarr.open_group(seg.zarr(), mode="r").attrs.asdict()
        assert attrs["cryoet_monai"]["class_names"] == list(CLASS_NAMES)
        assert [p["class"] for p in attrs["image-label"]["properties"]] == list(CLASS_NAMES)
        assert "multiscales" in attrs  # copick's own metadata is still there


def test_existing_segmentation_is_kept_unless_overwrite(copick: ModuleType, project: Path,
                                                       tiny_bundle: Path) -> None:
    args = ["-c", str(project), "-r", "TS_001", "--model", str(tiny_bundle), "--device", "cpu"]
    first = CliRunner().invoke(integration.segment, args)
    assert first.exit_code == 0, first.output
    assert "TS_002" not in first.output and _segmentations(copick, project, "TS_002") == []

    again = CliRunner().invoke(integration.segment, args)
    assert again.exit_code == 0, again.output
    assert "TS_001: cryoet-monai/0/cryoet-monai at 10 Å exists, kept" in again.stdout

    replaced = CliRunner().invoke(integration.segment, [*args, "--overwrite", "--name", "other-name"])
    assert replaced.exit_code == 0 and "TS_001: wbp" in replaced.stdout, replaced.output
    replaced = CliRunner().invoke(integration.segment, [*args, "--overwrite"])
    assert replaced.exit_code == 0 and "TS_001: wbp" in replaced.stdout, replaced.output
    assert sorted(s.name for s in _segmentations(copick, project, "TS_001")) == ["cryoet-monai", "other-name"]


def test_runs_without_the_tomogram(copick: ModuleType, project: Path, tiny_bundle: Path) -> None:
    common = ["-c", str(project), "--model", str(tiny_bundle), "--device", "cpu", "--tomo-type", "denoised"]
    # all runs: each is one line, and that none has it is the error
    result = CliRunner().invoke(integration.segment, common)
    assert result.exit_code == 1, result.output
    assert "TS_001: no 'denoised' tomogram at 10 Å (there: wbp)" in result.stdout
    assert "error: no run has a 'denoised' tomogram at 10 Å" in result.stderr
    # named runs must be there: a missing one is a failure even when another one is segmented
    result = CliRunner().invoke(integration.segment, [*common[:-2], "-r", "nope", "-r", "TS_002"])
    assert result.exit_code == 1, result.output
    assert "ERROR  nope: no such run in the project" in result.stderr
    assert result.stdout.startswith("TS_002: wbp")
    result = CliRunner().invoke(integration.segment, [*common[:-2], "--voxel-spacing", "7.5", "-r", "TS_001"])
    assert result.exit_code == 1 and "TS_001: no voxel spacing 7.5 Å (the run has: 10)" in result.stderr
    assert _segmentations(copick, project, "TS_001") == []


def test_bad_names_and_model_are_one_line(copick: ModuleType, project: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(integration.segment, ["-c", str(project), "--name", "my_labels"])
    assert result.exit_code == 2 and "--name 'my_labels' is not a valid copick name" in result.output
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    result = CliRunner().invoke(integration.segment, ["-c", str(project), "--model", str(broken)])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert "broken.pt" in result.output


def test_without_copick_one_line_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "copick", None)  # `import copick` raises ImportError
    config = tmp_path / "copick.json"
    config.write_text("{}")
    result = CliRunner().invoke(integration.segment, ["-c", str(config)])
    assert result.exit_code == 2
    assert result.output.strip() == f"Error: {integration.MISSING_COPICK}"
    assert "pip install 'cryoet-monai[copick]'" in integration.MISSING_COPICK


def test_failed_write_leaves_no_segmentation(copick: ModuleType, project: Path, tiny_bundle: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from copick.models import CopickSegmentation

    def disk_full(self: CopickSegmentation, *args: object, **kwargs: object) -> None:
        self.zarr()["0/.zarray"] = b"{}"  # something written before it fails
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(CopickSegmentation, "from_numpy", disk_full)
    result = CliRunner().invoke(integration.segment, ["-c", str(project), "-r", "TS_001", "-r", "TS_002",
                                                      "--model", str(tiny_bundle), "--device", "cpu"])
    assert result.exit_code == 1, result.output
    assert result.stderr.count("No space left on device") == 2
    assert _segmentations(copick, project, "TS_001") == _segmentations(copick, project, "TS_002") == []


def test_big_tomogram_is_read_slab_by_slab(copick: ModuleType, project: Path, tiny_bundle: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from cryoet_monai.io.omezarr import ZarrVolume

    root = copick.from_file(str(project))
    tomogram = root.get_run("TS_001").get_voxel_spacing(10.0).get_tomograms("wbp")[0]
    assert isinstance(integration.open_tomogram(tomogram), np.ndarray)  # small: read once, whole
    monkeypatch.setattr(integration, "IN_MEMORY_SHARE", 0.0)
    volume = integration.open_tomogram(tomogram)
    assert isinstance(volume, ZarrVolume)
    segmenter = integration.build_segmenter(tiny_bundle, {"device": "cpu", "progress": False, "slab_size": 4})
    streamed, _ = segmenter.segment_array(volume, 10.0, name="TS_001")
    whole, _ = segmenter.segment_array(tomogram.numpy(), 10.0, name="TS_001")
    np.testing.assert_array_equal(streamed, whole)


@pytest.mark.skipif(
    bool(importlib.util.find_spec("copick")),
    reason="copick is importable here: the tests above ran in this interpreter",
)
def test_copick_tests_in_their_own_environment(tmp_path: Path) -> None:
    """Where copick is not installed (the main environment, CI), build its environment with
    ``scripts/copick_env.sh`` (pip, from the package index) and run this file there, so the README's
    one test command covers the copick plugin too. ``CRYOET_MONAI_SKIP_COPICK_ENV=1`` opts out."""
    import os
    import subprocess

    if os.environ.get("CRYOET_MONAI_SKIP_COPICK_ENV") == "1":
        pytest.skip("CRYOET_MONAI_SKIP_COPICK_ENV=1")
    repo = Path(__file__).resolve().parents[1]
    env_dir = tmp_path / "copick-env"
    base = Path(sys.prefix)
    setup = subprocess.run(["bash", str(repo / "scripts" / "copick_env.sh"), str(env_dir), str(base)],
                           capture_output=True, text=True, cwd=repo, timeout=900)
    assert setup.returncode == 0, (setup.stdout + setup.stderr)[-3000:]
    env = dict(os.environ, OMP_NUM_THREADS="1", CRYOET_MONAI_SKIP_COPICK_ENV="1")
    proc = subprocess.run([str(env_dir / "bin" / "python"), "-m", "pytest", "-q", "-p", "no:zarr",
                           "-p", "no:cacheprovider", str(Path(__file__))],
                          capture_output=True, text=True, cwd=repo, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:]
    summary = proc.stdout.strip().splitlines()[-1]
    import re

    passed = re.search(r"(\d+) passed", summary)
    assert passed and int(passed.group(1)) >= 7, summary
    assert "failed" not in summary and "error" not in summary, summary
