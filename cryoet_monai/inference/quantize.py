"""int8 post-training quantisation of a trained network for OpenVINO, calibrated on synthetic tomograms.

:func:`quantize_openvino` converts the eval-mode network with OpenVINO, lets NNCF (``pip install
nncf``, the ``int8`` extra) place int8 quantisers from activation statistics of a few calibration
windows, and saves the quantised model as an OpenVINO IR next to the weights
(``models/model_int8.xml`` + ``.bin``) with a JSON record: the SHA-256 of the float weights it was
made from, so a later run never pairs an int8 model with other weights. Calibration is minutes of
CPU time, so it is done once, when a model is shipped (``scripts/quantize_model.py``), not per run.

Calibration data are what the network sees at inference (:func:`calibration_windows`): synthetic
tomograms of the training style, normalised by :class:`~cryoet_monai.RobustNormalizeIntensity`, with
the neighbouring slices as channels for a 2.5-D network. Never a user's or a real tomogram.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from cryoet_monai.io.atomic import write_json_atomic

__all__ = [
    "INT8_SUFFIX", "calibration_windows", "int8_model_problem", "int8_paths", "quantize_openvino",
    "read_int8_record", "update_int8_record", "weights_sha256",
]  # fmt: skip

#: the int8 IR of ``models/model.pt`` is ``models/model_int8.xml`` (+ ``.bin`` and ``.json``)
INT8_SUFFIX = "_int8"


def weights_sha256(path: str | Path) -> str:
    """SHA-256 of a weights file (identifies the float weights an int8 model was made from)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def int8_paths(model_path: str | Path) -> tuple[Path, Path]:
    """``(IR .xml, record .json)`` of the int8 model belonging to the weights ``model_path``."""
    p = Path(model_path)
    stem = p.with_name(p.stem + INT8_SUFFIX)
    return stem.with_suffix(".xml"), stem.with_suffix(".json")


def calibration_windows(
    in_channels: int,
    n_tomograms: int = 4,
    windows_per_tomogram: int = 10,
    shape: Sequence[int] = (32, 256, 256),
    voxel_size: float = 10.0,
    seed: int = 90_000,
) -> list[np.ndarray]:
    """Whole-slice windows ``(1, in_channels, Y, X)`` float32 from synthetic tomograms, normalised as at
    inference; ``in_channels`` > 1 stacks that many neighbouring slices (2.5-D). 2-D networks only."""
    from cryoet_monai.data.synthetic import generate_tomogram
    from cryoet_monai.transforms.intensity import RobustNormalizeIntensity

    rng = np.random.default_rng(seed)
    half = in_channels // 2
    out: list[np.ndarray] = []
    for i in range(n_tomograms):
        image, _ = generate_tomogram(tuple(shape), voxel_size, seed + i)
        image = np.asarray(RobustNormalizeIntensity()(image), dtype=np.float32)
        for z in rng.choice(np.arange(half, len(image) - half), windows_per_tomogram, replace=False):
            out.append(np.ascontiguousarray(image[z - half : z + half + 1][None]))
    return out


def quantize_openvino(
    network: nn.Module,
    calibration: Sequence[np.ndarray],
    model_path: str | Path,
    float_head: int = 2,
    float_tail: int = 1,
) -> Path:
    """Quantise ``network`` (eval mode, the float weights stored at ``model_path``) to int8 and save it as
    the OpenVINO IR :func:`int8_paths` names; returns the ``.xml`` path.

    Args:
        network: eval-mode logits network ``(B, C_in, Y, X) -> (B, C, Y, X)`` with the weights of
            ``model_path`` loaded (batch norm folded or not: OpenVINO fuses it).
        calibration: input windows ``(1, C_in, Y, X)`` (see :func:`calibration_windows`).
        model_path: the float weights file; its hash goes into the record.
        float_head, float_tail: convolutions kept in float at the input end and at the output end.
    """
    try:
        import nncf
        import openvino as ov
    except ImportError as err:
        raise ImportError("int8 quantisation needs openvino and nncf (pip install 'cryoet-monai[int8]')"
                          ) from err
    example = torch.as_tensor(calibration[0])
    shape = ov.PartialShape([-1, example.shape[1], *([-1] * (example.ndim - 2))])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = ov.convert_model(network.eval(), example_input=example, input=[shape])
    # the first convolutions see raw intensities, the last one makes the logits the argmax decides on.
    # Labels of a held-out synthetic tomogram agreed with torch fp32 (v7 weights, asymmetric activation
    # ranges: MIXED) on 99.86 % keeping 3 + 5 convolutions in float, 99.76 % with 2 + 1 (the default),
    # 99.65 % with 1 + 1 and 99.54 % with none; 2 + 1 made a forward pass 1.2x faster with AMX and
    # 1.2-1.5x on an emulated AVX2-only CPU, where float convolutions run in fp32 (docs/inference.md, "int8")
    convolutions = [op.get_friendly_name() for op in model.get_ordered_ops()
                    if op.get_type_name() == "Convolution"]
    kept = convolutions[:float_head] + (convolutions[-float_tail:] if float_tail else [])
    quantized = nncf.quantize(model, nncf.Dataset(list(calibration)), subset_size=len(calibration),
                              preset=nncf.QuantizationPreset.MIXED,
                              ignored_scope=nncf.IgnoredScope(names=kept))
    xml, record = int8_paths(model_path)
    # OpenVINO writes the .xml and its .bin itself (no io.atomic for a pair): write both under
    # temporary names, rename them when both exist, remove them on any failure
    tmp_xml = xml.with_name(f".{xml.name}.tmp.xml")
    try:
        ov.save_model(quantized, str(tmp_xml), compress_to_fp16=False)
        tmp_xml.with_suffix(".bin").replace(xml.with_suffix(".bin"))
        tmp_xml.replace(xml)
    finally:
        tmp_xml.unlink(missing_ok=True)
        tmp_xml.with_suffix(".bin").unlink(missing_ok=True)
    write_json_atomic(record, {"weights": Path(model_path).name, "weights_sha256": weights_sha256(model_path),
                               "calibration_windows": len(calibration),
                               "float_convolutions": {"head": float_head, "tail": float_tail},
                               "window_shape": [int(s) for s in example.shape], "nncf": nncf.__version__,
                               "openvino": ov.__version__})
    return xml


def read_int8_record(model_path: str | Path) -> dict[str, Any] | None:
    """The JSON record of the int8 model of ``model_path``, or None when there is none."""
    _, record = int8_paths(model_path)
    return json.loads(record.read_text()) if record.is_file() else None


def update_int8_record(model_path: str | Path, **fields: Any) -> None:
    """Add ``fields`` (e.g. a measured label agreement) to the record of the int8 model of ``model_path``."""
    write_json_atomic(int8_paths(model_path)[1], {**(read_int8_record(model_path) or {}), **fields})


#: least fraction of labels equal to torch fp32's for an int8 model to be used (the backend rule)
MIN_LABEL_AGREEMENT = 0.995


def int8_model_problem(model_path: str | Path) -> str | None:
    """Why the int8 model beside the weights ``model_path`` cannot be used (missing, made from other
    weights: the record's SHA-256 differs, or its measured label agreement with torch fp32 is below
    :data:`MIN_LABEL_AGREEMENT`), or None when it can."""
    xml, _ = int8_paths(model_path)
    record = read_int8_record(model_path)
    if record is None or not xml.is_file():
        return (f"{xml} is missing; make it with python scripts/quantize_model.py "
                f"--model {Path(model_path).parent.parent}")
    if record.get("weights_sha256") != weights_sha256(model_path):
        return (f"{xml} was made from other weights than {model_path}; "
                "quantise again (scripts/quantize_model.py)")
    agreement = record.get("labels_equal_to_torch_fp32")
    if agreement is not None and agreement < MIN_LABEL_AGREEMENT:
        return (f"{xml} keeps only {100 * agreement:.2f} % of torch fp32's labels (< "
                f"{100 * MIN_LABEL_AGREEMENT:.1f} %); quantise with more convolutions in float")
    return None
