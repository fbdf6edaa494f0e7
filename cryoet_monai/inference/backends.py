"""CPU inference backends: the same weights run by ONNX Runtime or OpenVINO instead of torch eager.

Each backend wraps a trained (eval-mode) network as a callable with the network's contract,
``(B, C_in, *S)`` float32 tensor -> ``(B, C, *S)`` float32 logits, so
:class:`~cryoet_monai.inference.predictor.WindowPredictor` (padding, TTA, softmax) and the slab
streaming stay as they are. Batch and spatial sizes are dynamic: one export serves every tomogram.

Both runtimes are optional (``pip install onnxruntime`` / ``openvino``); ``scripts/bench_backends.py``
measures them against torch eager on the shipped weights (time and label agreement) on this machine.
OpenVINO picks bf16 on CPUs with native bf16 (its ``INFERENCE_PRECISION_HINT``), fp32 elsewhere.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

__all__ = [
    "BACKENDS", "BackendError", "OnnxRuntimeNetwork", "OpenVINONetwork", "default_backend", "make_backend",
]  # fmt: skip

logger = logging.getLogger(__name__)

#: names accepted by ``backend=`` (configs, ``--backend``); "auto" = :func:`default_backend`
BACKENDS = ("auto", "torch", "onnxruntime", "openvino")


class BackendError(RuntimeError):
    """A backend that is not installed or cannot run this network (the message says which and why)."""


def _example(network: nn.Module) -> torch.Tensor:
    spatial_dims = int(getattr(network, "spatial_dims", 2))
    k = int(getattr(network, "size_divisible", 16))
    return torch.zeros((1, int(getattr(network, "in_channels", 1)), *([2 * k] * spatial_dims)))


def _dynamic_axes(spatial_dims: int) -> dict[int, str]:
    return {0: "batch", **{2 + i: f"s{i}" for i in range(spatial_dims)}}


class OnnxRuntimeNetwork:
    """A network exported to ONNX (dynamic batch and spatial sizes) and run by ONNX Runtime on the CPU.

    Args:
        network: eval-mode logits network, ``(B, C_in, *S) -> (B, C, *S)``.
        threads: intra-op threads (``None``: ONNX Runtime's default, one per core).
    """

    def __init__(self, network: nn.Module, threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as err:
            raise BackendError("backend onnxruntime: not installed (pip install onnxruntime)") from err
        self.size_divisible = int(getattr(network, "size_divisible", 16))
        axes = _dynamic_axes(int(getattr(network, "spatial_dims", 2)))
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.onnx"
            with warnings.catch_warnings():  # the TorchScript-based exporter: dynamic axes without onnxscript
                warnings.simplefilter("ignore")
                torch.onnx.export(network, (_example(network),), str(path), input_names=["image"],
                                  output_names=["logits"], dynamic_axes={"image": axes, "logits": axes},
                                  dynamo=False)
            options = ort.SessionOptions()
            if threads:
                options.intra_op_num_threads = int(threads)
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {"image": np.ascontiguousarray(x.float().cpu().numpy())})[0]
        return torch.from_numpy(out)


class OpenVINONetwork:
    """A network converted by OpenVINO (dynamic batch and spatial sizes) and compiled for the CPU.

    Args:
        network: eval-mode logits network, ``(B, C_in, *S) -> (B, C, *S)``.
        precision: ``"auto"`` (OpenVINO's choice: bf16 where the CPU has it natively), ``"fp32"``
            or ``"bf16"``.
        threads: inference threads (``None``: OpenVINO's default).
    """

    def __init__(self, network: nn.Module, precision: str = "auto", threads: int | None = None) -> None:
        try:
            import openvino as ov
        except ImportError as err:
            raise BackendError("backend openvino: not installed (pip install openvino)") from err
        if precision not in ("auto", "fp32", "bf16"):
            raise BackendError(f"backend openvino: precision must be auto, fp32 or bf16, got {precision!r}")
        self.size_divisible = int(getattr(network, "size_divisible", 16))
        example = _example(network)
        shape = ov.PartialShape([-1, example.shape[1], *([-1] * (example.ndim - 2))])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = ov.convert_model(network, example_input=example, input=[shape])
        config: dict[str, Any] = {}
        if precision != "auto":
            config["INFERENCE_PRECISION_HINT"] = {"fp32": "f32", "bf16": "bf16"}[precision]
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        self.compiled = ov.Core().compile_model(model, "CPU", config)
        self.precision = str(self.compiled.get_property("INFERENCE_PRECISION_HINT"))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = self.compiled(np.ascontiguousarray(x.float().cpu().numpy()))[0]
        return torch.from_numpy(np.asarray(out, dtype=np.float32))


def default_backend(device: torch.device) -> str:
    """The fastest backend that keeps torch fp32's labels, as measured by ``scripts/bench_backends.py``:
    OpenVINO on the CPU when it is installed (a typical tomogram 64.9 s vs 87.6 s for torch eager on
    2 Zen 5 cores, labels 99.91 % equal to torch fp32), torch elsewhere."""
    if device.type != "cpu":
        return "torch"
    import importlib.util

    return "openvino" if importlib.util.find_spec("openvino") is not None else "torch"


def make_backend(name: str, network: nn.Module, threads: int | None = None, precision: str = "auto") -> Any:
    """``network`` itself for ``"torch"``, else the wrapped network of that backend (CPU only)."""
    if name not in BACKENDS or name == "auto":
        raise BackendError(f"backend must be one of {', '.join(BACKENDS[1:])}, got {name!r}")
    if name == "torch":
        return network
    threads = threads or int(os.environ.get("OMP_NUM_THREADS", "0") or 0) or None
    if name == "onnxruntime":
        return OnnxRuntimeNetwork(network, threads)
    return OpenVINONetwork(network, precision, threads)
