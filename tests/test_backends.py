"""CPU backends: ONNX Runtime and OpenVINO run the same weights and give torch fp32's labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cryoet_monai import PaperUNet
from cryoet_monai.data.synthetic import generate_tomogram
from cryoet_monai.inference import TomogramSegmenter
from cryoet_monai.inference.backends import BackendError, make_backend
from cryoet_monai.io.mrc import read_mrc, save_mrc
from tests.conftest import FEATURES, SHIPPED_IN_CHANNELS

pytestmark = pytest.mark.usefixtures("single_thread")


def _net() -> PaperUNet:
    torch.manual_seed(0)
    net = PaperUNet(2, SHIPPED_IN_CHANNELS, 6, features=FEATURES)
    # non-trivial batch-norm statistics, so folding and export are exercised
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return net.eval()


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_backend_logits_match_eager_at_any_size(backend: str) -> None:
    pytest.importorskip(backend)
    net = _net()
    wrapped = make_backend(backend, net, precision="fp32")  # fp32 for OpenVINO; ONNX Runtime is fp32
    for shape in [(1, SHIPPED_IN_CHANNELS, 32, 48), (3, SHIPPED_IN_CHANNELS, 64, 16)]:
        x = torch.randn(shape)
        with torch.inference_mode():
            ref = net(x)
        out = wrapped(x)
        assert out.shape == ref.shape and out.dtype == torch.float32
        torch.testing.assert_close(out, ref, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_backend_segments_like_torch_fp32(tmp_path: Path, backend: str) -> None:
    pytest.importorskip(backend)
    path = tmp_path / "t.mrc"
    save_mrc(path, generate_tomogram((6, 40, 56), 10.0, 2, mode="fourier")[0], voxel_size=10.0)
    kw = {"model_voxel_size": 10.0, "progress": False, "invert": "no", "save_probs": True}
    (ref,) = TomogramSegmenter(_net(), precision="fp32", **kw)(path, tmp_path / "ref")
    seg = TomogramSegmenter(_net(), backend=backend, **kw)
    assert seg.backend == backend and seg.autocast_dtype is None
    (out,) = seg(path, tmp_path / backend)
    labels, ref_labels = (np.asarray(read_mrc(r["seg"])[0]) for r in (out, ref))
    assert (labels == ref_labels).mean() >= 0.995  # the bar a backend must clear to be offered
    probs, ref_probs = (np.asarray(read_mrc(r["probs"])[0], np.float32) for r in (out, ref))
    # OpenVINO may compute in bf16 on CPUs with native bf16: probabilities agree to bf16 precision
    assert np.abs(probs - ref_probs).max() < (0.05 if backend == "openvino" else 2e-3)


def test_unknown_backend_is_one_line() -> None:
    with pytest.raises(BackendError, match="backend must be one of torch, onnxruntime, openvino"):
        make_backend("tensorrt", _net())


def test_auto_backend_is_openvino_on_cpu_when_installed() -> None:
    import importlib.util

    from cryoet_monai.inference.backends import default_backend

    expected = "openvino" if importlib.util.find_spec("openvino") else "torch"
    assert default_backend(torch.device("cpu")) == expected
    assert default_backend(torch.device("cuda")) == "torch"  # the CPU runtimes never take a GPU
