"""Batches that survive faults: full disk, absurd headers, kills and reruns, duplicates, string
booleans. Each case runs the real CLI (in a subprocess where a process limit or a kill is
involved) on small volumes with a tiny network."""

from __future__ import annotations

import os
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cryoet_monai import PaperUNet
from cryoet_monai.inference import TomogramSegmenter, find_inputs
from cryoet_monai.inference.cli import main
from cryoet_monai.io.mrc import read_mrc, remove_stale_temporaries, save_mrc

pytestmark = pytest.mark.usefixtures("single_thread")


def _tomo(path: Path, shape=(6, 32, 32), voxel_size: float = 10.0, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    return save_mrc(path, image, voxel_size=voxel_size)


def _env(repo_root: Path) -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(repo_root))


def _run(repo_root: Path, bundle: Path, *args: str, **kwargs) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "cryoet_monai", "segment", *args, "--config", str(bundle), "--no-progress",
           "--invert", "no"]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=repo_root, env=_env(repo_root), **kwargs)


def _no_temporaries(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_full_disk_is_one_line_per_file_and_the_batch_goes_on(
    tmp_path: Path, tiny_bundle: Path, repo_root: Path
):
    """A file-size limit (RLIMIT_FSIZE) stands in for a full disk: outputs that do not fit fail with
    one line each, leave nothing behind, and the small tomogram after them is still segmented."""
    big = _tomo(tmp_path / "in" / "a_big.mrc", (24, 96, 96))
    _tomo(tmp_path / "in" / "b_big.mrc", (24, 96, 96), seed=1)
    _tomo(tmp_path / "in" / "c_small.mrc", (4, 32, 32), seed=2)
    out = tmp_path / "out"
    out.mkdir()
    limit = 64 * 1024  # the small tomogram's outputs fit, the big ones' probabilities do not

    def limit_file_size() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit is EFBIG, not a kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = _run(repo_root, tiny_bundle, str(big.parent), "-o", str(out), "--probs",
                preexec_fn=limit_file_size)
    errors = [line for line in proc.stdout.splitlines() + proc.stderr.splitlines() if "ERROR" in line]
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert len(errors) == 2 and all("not enough space" in e for e in errors), errors
    assert sorted(p.name for p in out.iterdir()) == ["c_small_probs.mrc", "c_small_seg.mrc"]
    assert _no_temporaries(out)


def test_absurd_voxel_sizes_are_refused_per_file(tmp_path: Path, tiny_bundle: Path, capsys):
    for name, vs in (("huge.mrc", 1e5), ("tiny.mrc", 1e-3)):
        _tomo(tmp_path / "in" / name, voxel_size=vs)
    _tomo(tmp_path / "in" / "ok.mrc")
    code = main([str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--config", str(tiny_bundle),
                 "--no-progress", "--invert", "no"])
    out = capsys.readouterr().out
    assert code == 1
    assert re.search(r"huge\.mrc: header voxel size 1e\+05 Å is outside the plausible 0\.5-100 Å", out), out
    assert re.search(r"tiny\.mrc: header voxel size 0\.001 Å is outside", out), out
    assert (tmp_path / "out" / "ok_seg.mrc").is_file()


def test_constant_volume_and_tiny_windows_are_refused(tmp_path: Path, tiny_bundle: Path, capsys):
    (tmp_path / "in").mkdir()
    save_mrc(tmp_path / "in" / "flat.mrc", np.zeros((4, 32, 32), np.float32), voxel_size=10.0)
    code = main([str(tmp_path / "in" / "flat.mrc"), "-o", str(tmp_path / "out"), "--config", str(tiny_bundle),
                 "--no-progress"])
    assert code == 1 and "flat.mrc" in capsys.readouterr().out
    code = main([str(tmp_path / "in" / "flat.mrc"), "-o", str(tmp_path / "out"), "--config", str(tiny_bundle),
                 "--roi-size", "8", "8"])
    assert code == 2 and "too small" in capsys.readouterr().err


def test_kill_then_rerun_with_skip_existing_cleans_up_and_resumes(
    tmp_path: Path, tiny_bundle: Path, repo_root: Path
):
    done = _tomo(tmp_path / "in" / "a.mrc")
    _tomo(tmp_path / "in" / "b.mrc", seed=1)
    out = tmp_path / "out"
    assert _run(repo_root, tiny_bundle, str(done), "-o", str(out)).returncode == 0
    first = (out / "a_seg.mrc").stat().st_mtime_ns
    # what a SIGKILLed writer leaves: a temporary named after a process that no longer exists
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True)
    stale = out / f".b_seg.mrc.{int(dead.stdout)}-0123abcd.tmp"
    stale.write_bytes(b"\0" * 4096)
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    live = out / f".x_seg.mrc.{os.getpid()}-0123abcd.tmp"  # a live writer's file is never touched
    live.write_bytes(b"\0")
    proc = _run(repo_root, tiny_bundle, str(tmp_path / "in"), "-o", str(out), "--skip-existing")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "a.mrc: output exists, skipped" in proc.stdout
    assert (out / "a_seg.mrc").stat().st_mtime_ns == first and (out / "b_seg.mrc").is_file()
    assert not stale.exists() and live.exists()
    assert remove_stale_temporaries(out, min_age_s=0) == []  # ours (this pid) stays
    live.unlink()


def test_sighup_and_sigint_unwind_with_one_line(tmp_path: Path, tiny_bundle: Path, repo_root: Path):
    src = _tomo(tmp_path / "big.mrc", (400, 64, 64))
    for sig in (signal.SIGHUP, signal.SIGINT):
        out = tmp_path / f"out_{sig.name}"
        cmd = [sys.executable, "-m", "cryoet_monai", "segment", str(src), "-o", str(out), "--config",
               str(tiny_bundle), "--slab-size", "2", "--batch-size", "1", "--no-progress", "--invert", "no"]
        proc = subprocess.Popen(cmd, cwd=repo_root, env=_env(repo_root), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (out.is_dir() and any(out.iterdir())):
            time.sleep(0.05)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 128 + sig, (proc.returncode, err[-2000:])
        assert err.strip().splitlines()[-1].startswith(f"interrupted by {sig.name}"), err[-2000:]
        assert "Traceback" not in err and list(out.iterdir()) == []


def test_duplicates_and_own_outputs_are_not_inputs(tmp_path: Path, tiny_bundle: Path, monkeypatch):
    folder = tmp_path / "d"
    folder.mkdir()
    a = _tomo(folder / "a.mrc")
    monkeypatch.chdir(tmp_path)
    same = find_inputs(["d/a.mrc", str(a), "d/../d/a.mrc", str(folder)])
    assert same == [Path("d/a.mrc")]
    # output folder = input folder: the second run does not segment the first run's outputs
    for _ in range(2):
        assert main([str(folder), "-o", str(folder), "--config", str(tiny_bundle), "--no-progress"]) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["a.mrc", "a_seg.mrc"]


@pytest.mark.parametrize("value, expected", [("false", False), ("True", True), ("0", False)])
def test_string_booleans_of_the_segmenter(value, expected):
    net = PaperUNet(2, 1, 6, features=[4, 8, 16, 32, 64])
    seg = TomogramSegmenter(net, save_probs=value, resample=value, progress=value)
    assert seg.save_probs is expected and seg.resample is expected and seg.progress is expected
    with pytest.raises(ValueError, match="save_probs: expected a boolean"):
        TomogramSegmenter(net, save_probs="nope")


def test_rerun_outputs_identical(tmp_path: Path, tiny_bundle: Path):
    _tomo(tmp_path / "t.mrc")
    for run in ("x", "y"):
        assert main([str(tmp_path / "t.mrc"), "-o", str(tmp_path / run), "--config", str(tiny_bundle),
                     "--no-progress"]) == 0
    x, y = (read_mrc(tmp_path / run / "t_seg.mrc")[0] for run in ("x", "y"))
    assert np.array_equal(x, y)


def test_bundle_run_errors_are_one_line(tmp_path: Path, repo_root: Path):
    """`monai.bundle run` prints our one-line error, not the config parser's traceback."""
    cmd = [sys.executable, "-m", "monai.bundle", "run", "inference", "--config_file",
           "configs/inference.json", "--meta_file", "configs/metadata.json",
           "--input", str(tmp_path / "missing.mrc"), "--output_dir", str(tmp_path / "out"),
           "--progress", "false"]
    proc = subprocess.run(cmd, cwd=repo_root, env=_env(repo_root), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr + proc.stdout
    assert proc.stderr.strip().splitlines()[-1] == "error: no tomogram could be segmented (1 failed)."


def test_output_folder_that_is_a_file(tmp_path: Path, tiny_bundle: Path, capsys):
    _tomo(tmp_path / "t.mrc")
    (tmp_path / "afile").write_text("x")
    code = main([str(tmp_path / "t.mrc"), "-o", str(tmp_path / "afile"), "--config", str(tiny_bundle),
                 "--no-progress"])
    expected = f"error: {tmp_path / 'afile'}: the output folder is a file."
    assert code == 1 and capsys.readouterr().err.strip() == expected


@pytest.mark.parametrize("voxel_size", [1.0, 0.0])
def test_unset_voxel_size_alone_is_a_usage_error(tmp_path: Path, tiny_bundle: Path, voxel_size, capsys):
    """A 1.0 Å (unset) or 0 Å header and no --voxel-size: exit 2, one line naming the file."""
    path = _tomo(tmp_path / "t.mrc", voxel_size=voxel_size)
    code = main([str(path), "-o", str(tmp_path / "out"), "--config", str(tiny_bundle), "--no-progress"])
    captured = capsys.readouterr()
    lines = [line for line in (captured.out + captured.err).strip().splitlines() if line]
    assert code == 2 and len(lines) == 1, lines
    assert "t.mrc" in lines[0] and "--voxel-size" in lines[0]
    assert main([str(path), "-o", str(tmp_path / "out"), "--config", str(tiny_bundle), "--no-progress",
                 "--voxel-size", "10"]) == 0


def test_read_only_output_folder_is_named_not_our_temporary(tmp_path: Path, monkeypatch):
    """Root ignores permission bits, so the refusal is injected where the file is created."""
    import mrcfile

    from cryoet_monai.io.mrc import MRCWriteError, create_mrc

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(mrcfile, "new_mmap", refuse)
    with pytest.raises(MRCWriteError) as err:
        with create_mrc(tmp_path / "t_seg.mrc", (2, 4, 4), np.uint8):
            pass
    assert str(err.value) == f"{tmp_path}: cannot write here (Permission denied)"


def test_all_background_result_is_warned(tmp_path: Path, caplog):
    net = PaperUNet(2, 1, 6, features=[4, 8, 16, 32, 64])
    with torch.no_grad():
        net.final_conv.bias.copy_(torch.tensor([50.0, 0, 0, 0, 0, 0]))  # always background
    _tomo(tmp_path / "t.mrc")
    seg = TomogramSegmenter(net, model_voxel_size=10.0, progress=False, invert="no")
    with caplog.at_level("WARNING"):
        seg.segment(tmp_path / "t.mrc", tmp_path / "out")
    assert "essentially all background" in caplog.text and "t.mrc" in caplog.text
