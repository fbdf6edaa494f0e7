"""CPU inference backends: the same weights run by ONNX Runtime or OpenVINO instead of torch eager.

Each backend wraps a trained (eval-mode) network as a callable with the network's contract,
``(B, C_in, *S)`` float32 tensor -> ``(B, C, *S)`` float32 logits, so
:class:`~cryoet_monai.inference.predictor.WindowPredictor` (padding, TTA, softmax) and the slab
streaming stay as they are. Batch and spatial sizes are dynamic: one export serves every tomogram.

Both runtimes are optional (``pip install onnxruntime`` / ``openvino``); ``scripts/bench_backends.py``
measures them against torch eager on the shipped weights (time and label agreement) on this machine.
OpenVINO picks bf16 on CPUs with native bf16 (its ``INFERENCE_PRECISION_HINT``), fp32 elsewhere.
``openvino-int8`` runs the int8 model that :mod:`cryoet_monai.inference.quantize` made once from the
same weights (``models/model_int8.xml``, checked against the weights' hash).
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
    "BACKENDS", "BackendError", "OnnxRuntimeNetwork", "OpenVINOInt8Network", "OpenVINONetwork",
    "default_backend", "has_int8_model", "make_backend",
]  # fmt: skip

logger = logging.getLogger(__name__)

#: names accepted by ``backend=`` (configs, ``--backend``); "auto" = :func:`default_backend`
BACKENDS = ("auto", "torch", "onnxruntime", "openvino", "openvino-int8")


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


class _CompiledOpenVINO:
    """Runs ``self.compiled`` (an OpenVINO compiled model) with the network's tensor contract."""

    compiled: Any

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = self.compiled(np.ascontiguousarray(x.float().cpu().numpy()))[0]
        return torch.from_numpy(np.asarray(out, dtype=np.float32))


class OpenVINONetwork(_CompiledOpenVINO):
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



class OpenVINOInt8Network(_CompiledOpenVINO):
    """The int8 OpenVINO model of a weights file, compiled for the CPU; same contract as
    :class:`OpenVINONetwork` (made by :func:`~cryoet_monai.inference.quantize.quantize_openvino`).

    Args:
        model_path: the float weights (``models/model.pt``); the int8 IR beside it must record their hash.
        size_divisible: the network's down-sampling factor (windows are padded to it).
        threads: inference threads (``None``: OpenVINO's default).
    """

    def __init__(self, model_path: str | Path, size_divisible: int = 16, threads: int | None = None) -> None:
        from cryoet_monai.inference.quantize import int8_model_problem, int8_paths

        try:
            import openvino as ov
        except ImportError as err:
            raise BackendError("backend openvino-int8: openvino is not installed (pip install openvino)"
                               ) from err
        problem = int8_model_problem(model_path)
        if problem is not None:
            raise BackendError(f"backend openvino-int8: {problem}")
        self.size_divisible = int(size_divisible)
        config: dict[str, Any] = {"INFERENCE_NUM_THREADS": int(threads)} if threads else {}
        core = ov.Core()
        self.compiled = core.compile_model(core.read_model(str(int8_paths(model_path)[0])), "CPU", config)
        self.precision = "int8"



def has_int8_model(model_path: str | Path | None) -> bool:
    """Whether an int8 OpenVINO model made from exactly the weights ``model_path`` lies beside them."""
    from cryoet_monai.inference.quantize import int8_model_problem

    return model_path is not None and int8_model_problem(model_path) is None


def default_backend(device: torch.device, model_path: str | Path | None = None) -> str:
    """The fastest backend that keeps torch fp32's labels (>= 99.5 % of the voxels), as measured by
    ``scripts/bench_backends.py``: on the CPU with OpenVINO installed, its int8 model when one made
    from these weights lies beside them (typical tomogram 36.6 s, 99.91 % of the labels), else
    OpenVINO's float path (43.7 s, 99.96 %); torch elsewhere (59.2 s). Figures: docs/inference.md."""
    if device.type != "cpu":
        return "torch"
    import importlib.util

    if importlib.util.find_spec("openvino") is None:
        return "torch"
    return "openvino-int8" if has_int8_model(model_path) else "openvino"


def make_backend(
    name: str,
    network: nn.Module,
    threads: int | None = None,
    precision: str = "auto",
    model_path: str | Path | None = None,
) -> Any:
    """``network`` itself for ``"torch"``, else the wrapped network of that backend (CPU only);
    ``openvino-int8`` needs ``model_path``, the float weights its int8 model was made from."""
    if name not in BACKENDS or name == "auto":
        raise BackendError(f"backend must be one of {', '.join(BACKENDS[1:])}, got {name!r}")
    if name == "torch":
        return network
    threads = threads or int(os.environ.get("OMP_NUM_THREADS", "0") or 0) or None
    if name == "onnxruntime":
        return OnnxRuntimeNetwork(network, threads)
    if name == "openvino-int8":
        if model_path is None:
            raise BackendError("backend openvino-int8 needs the model's weights file (model_path)")
        return OpenVINOInt8Network(model_path, int(getattr(network, "size_divisible", 16)), threads)
    return OpenVINONetwork(network, precision, threads)
