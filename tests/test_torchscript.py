"""PaperUNet under ``torch.jit.script``, and ``monai.bundle ckpt_export`` without ``--use_trace``."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import FEATURES, SHIPPED_IN_CHANNELS

from cryoet_monai import PaperUNet

pytestmark = pytest.mark.usefixtures("single_thread")


def _net_with_statistics(**kwargs) -> PaperUNet:
    """A tiny PaperUNet in eval mode whose batch norms hold running statistics other than (0, 1)."""
    torch.manual_seed(0)
    net = PaperUNet(features=FEATURES, **kwargs)
    shape = (2, net.in_channels, *([16] * net.spatial_dims))
    with torch.no_grad():
        for _ in range(2):
            net(3.0 * torch.randn(shape) + 1.0)
    return net.eval()


def _script(net: torch.nn.Module) -> torch.jit.ScriptModule:
    """``torch.jit.script(net)``, saved and loaded again (what a TorchScript file gives a user)."""
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(net), buffer)
    buffer.seek(0)
    return torch.jit.load(buffer)


@pytest.mark.parametrize(
    "spatial_dims, in_channels, shape",
    [
        (2, 1, (2, 1, 32, 48)),
        (3, 1, (1, 1, 16, 32, 16)),
        (2, SHIPPED_IN_CHANNELS, (2, SHIPPED_IN_CHANNELS, 32, 32)),  # 2.5-D: neighbouring slices
    ],
    ids=["2d", "3d", "2.5d"],
)
def test_scripted_equals_eager(spatial_dims, in_channels, shape):
    net = _net_with_statistics(spatial_dims=spatial_dims, in_channels=in_channels)
    scripted = _script(net)
    assert not scripted.training
    assert list(scripted.state_dict()) == list(net.state_dict())
    x = torch.randn(shape)
    with torch.no_grad():
        ref = net(x)
        # the profiling executor optimises the graph after the first runs: check those too
        outs = [scripted(x) for _ in range(3)]
    assert ref.shape == (shape[0], 6, *shape[2:])
    for out in outs:
        torch.testing.assert_close(out, ref)
    # the graph is not tied to the size it first ran at
    x2 = torch.randn(1, in_channels, *[s + 16 for s in shape[2:]])
    with torch.no_grad():
        torch.testing.assert_close(scripted(x2), net(x2))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"upsample": "deconv"},
        {"upsample": "nearest"},
        {"norm": ("group", {"num_groups": 2}), "act": ("leakyrelu", {"negative_slope": 0.1})},
        {"norm": None, "dropout": 0.0, "dropout_levels": ()},
    ],
    ids=["deconv", "nearest", "group-norm", "no-norm"],
)
def test_scripted_variants_equal_eager(kwargs):
    net = _net_with_statistics(**kwargs)
    scripted = torch.jit.script(net)
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x))


def test_shipped_weights_load_strictly_and_script_identically(repo_root: Path):
    """The shipped fp16 state dict still fits the network exactly; the scripted network agrees."""
    config = json.loads((repo_root / "configs" / "inference.json").read_text())["network_def"]
    kwargs = {k: v for k, v in config.items() if k not in ("_target_", "out_channels")}
    net = PaperUNet(out_channels=6, **kwargs)
    state = torch.load(repo_root / "models" / "model.pt", map_location="cpu", weights_only=True)
    net.load_state_dict(state, strict=True)
    net.eval()
    scripted = torch.jit.script(net)
    torch.manual_seed(0)
    x = torch.randn(1, net.in_channels, 32, 48)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x))


def _eager_from_bundle(config_file: Path, ckpt_file: Path) -> torch.nn.Module:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(config_file))
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(ckpt_file, map_location="cpu", weights_only=True), strict=True)
    return net.eval()


@pytest.mark.parametrize("which", ["tiny", "shipped"])
def test_ckpt_export_scripts_without_use_trace(which, tiny_bundle: Path, repo_root: Path, tmp_path: Path):
    """``python -m monai.bundle ckpt_export network_def`` (torch.jit.script: no ``--use_trace``) on the
    tiny test bundle and on the shipped configs/inference.json + models/model.pt; the file it writes
    loads with ``torch.jit.load`` and gives the eager network's logits."""
    bundle = tiny_bundle if which == "tiny" else repo_root
    config_file = bundle / "configs" / "inference.json"
    ckpt_file = bundle / "models" / "model.pt"
    target = tmp_path / "m.ts"
    cmd = [
        sys.executable, "-m", "monai.bundle", "ckpt_export", "network_def",
        "--filepath", str(target),
        "--ckpt_file", str(ckpt_file),
        "--meta_file", str(bundle / "configs" / "metadata.json"),
        "--config_file", str(config_file),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, cwd=repo_root, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert target.is_file()

    ts = torch.jit.load(str(target), map_location="cpu")
    assert isinstance(ts, torch.jit.ScriptModule)
    eager = _eager_from_bundle(config_file, ckpt_file)
    torch.manual_seed(0)
    for shape in [(1, SHIPPED_IN_CHANNELS, 64, 96), (2, SHIPPED_IN_CHANNELS, 32, 48)]:
        x = torch.randn(shape)
        with torch.no_grad():
            out, ref = ts(x), eager(x)
        assert out.shape == (shape[0], 6, *shape[2:])
        torch.testing.assert_close(out, ref)
