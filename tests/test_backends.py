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
    with pytest.raises(BackendError, match="must be one of torch, onnxruntime, openvino, openvino-int8"):
        make_backend("tensorrt", _net())


def test_auto_backend_is_openvino_on_cpu_when_installed() -> None:
    import importlib.util

    from cryoet_monai.inference.backends import default_backend

    expected = "openvino" if importlib.util.find_spec("openvino") else "torch"
    assert default_backend(torch.device("cpu")) == expected
    assert default_backend(torch.device("cuda")) == "torch"  # the CPU runtimes never take a GPU


def _int8_folder(tmp_path: Path) -> tuple[PaperUNet, Path]:
    """A 2.5-D net with its weights file and an int8 model quantised from them (tiny calibration)."""
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    from cryoet_monai.inference.quantize import calibration_windows, quantize_openvino

    net = _net()
    model_path = tmp_path / "models" / "model.pt"
    model_path.parent.mkdir()
    torch.save(net.state_dict(), model_path)
    windows = calibration_windows(SHIPPED_IN_CHANNELS, n_tomograms=1, windows_per_tomogram=4,
                                  shape=(8, 48, 48))
    quantize_openvino(net, windows, model_path)
    return net, model_path


def test_int8_model_runs_close_to_fp32_and_is_tied_to_its_weights(tmp_path: Path) -> None:
    from cryoet_monai.inference.backends import default_backend
    from cryoet_monai.inference.quantize import (
        int8_paths,
        read_int8_record,
        update_int8_record,
        weights_sha256,
    )

    net, model_path = _int8_folder(tmp_path)
    xml, record = int8_paths(model_path)
    assert xml == tmp_path / "models" / "model_int8.xml" and xml.with_suffix(".bin").is_file()
    assert read_int8_record(model_path)["weights_sha256"] == weights_sha256(model_path)
    assert not list(xml.parent.glob(".*"))  # no temporaries left
    wrapped = make_backend("openvino-int8", net, model_path=model_path)
    x = torch.randn(2, SHIPPED_IN_CHANNELS, 48, 32)
    with torch.inference_mode():
        ref = net(x)
    out = wrapped(x)
    assert out.shape == ref.shape and out.dtype == torch.float32
    # int8 weights and activations: close to the float logits, not equal
    assert 0 < float((out - ref).abs().mean()) < 0.1 * float(ref.abs().mean())
    assert default_backend(torch.device("cpu"), model_path) == "openvino-int8"
    # a measured agreement below the backend rule's 99.5 %: refused, auto takes the float path
    update_int8_record(model_path, labels_equal_to_torch_fp32=0.9889)
    assert default_backend(torch.device("cpu"), model_path) == "openvino"
    with pytest.raises(BackendError, match=r"keeps only 98\.89 % of torch fp32's labels"):
        make_backend("openvino-int8", net, model_path=model_path)
    update_int8_record(model_path, labels_equal_to_torch_fp32=0.9969)
    assert default_backend(torch.device("cpu"), model_path) == "openvino-int8"
    # other weights under the same name: the int8 model is refused, and auto falls back to the float path
    torch.save(_net().half().state_dict(), model_path)
    assert default_backend(torch.device("cpu"), model_path) == "openvino"
    with pytest.raises(BackendError, match="made from other weights"):
        make_backend("openvino-int8", net, model_path=model_path)
    xml.unlink()
    with pytest.raises(BackendError, match="model_int8.xml is missing"):
        make_backend("openvino-int8", net, model_path=model_path)


@pytest.mark.parametrize("head, tail", [(2, 1), (0, 0)])
def test_int8_model_keeps_the_chosen_convolutions_in_float(tmp_path: Path, head: int, tail: int) -> None:
    pytest.importorskip("nncf")
    ov = pytest.importorskip("openvino")
    from cryoet_monai.inference.quantize import (
        calibration_windows,
        int8_paths,
        quantize_openvino,
        read_int8_record,
    )

    net = _net()
    model_path = tmp_path / "model.pt"
    torch.save(net.state_dict(), model_path)
    windows = calibration_windows(SHIPPED_IN_CHANNELS, n_tomograms=1, windows_per_tomogram=2,
                                  shape=(6, 32, 32))
    quantize_openvino(net, windows, model_path, float_head=head, float_tail=tail)
    model = ov.Core().read_model(str(int8_paths(model_path)[0]))
    # an int8 convolution's weights come through a dequantising Multiply, a float one's from a Constant
    weights = [op.input(1).get_source_output().get_node().get_type_name()
               for op in model.get_ordered_ops() if op.get_type_name() == "Convolution"]
    n = len(weights)
    assert n > head + tail
    expected = ["Constant" if i < head or i >= n - tail else "Multiply" for i in range(n)]
    assert weights == expected
    assert read_int8_record(model_path)["float_convolutions"] == {"head": head, "tail": tail}


def test_segmenter_picks_the_int8_model_beside_the_weights(tmp_path: Path) -> None:
    _, model_path = _int8_folder(tmp_path)
    path = tmp_path / "t.mrc"
    save_mrc(path, generate_tomogram((6, 40, 56), 10.0, 2, mode="fourier")[0], voxel_size=10.0)
    kw = {"model_path": model_path, "model_voxel_size": 10.0, "progress": False, "invert": "no"}
    seg = TomogramSegmenter(_net(), backend="auto", **kw)
    assert seg.backend == "openvino-int8"
    (out,) = seg(path, tmp_path / "out")
    (ref,) = TomogramSegmenter(_net(), backend="torch", precision="fp32", **kw)(path, tmp_path / "ref")
    labels, ref_labels = (np.asarray(read_mrc(r["seg"])[0]) for r in (out, ref))
    assert labels.shape == ref_labels.shape and (labels == ref_labels).mean() > 0.8
