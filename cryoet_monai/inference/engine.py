"""Whole-tomogram segmentation with bounded memory.

:class:`TomogramSegmenter` is what both ``cryoet-monai segment`` and ``configs/inference.json`` run.
For each tomogram it

1. memory-maps the MRC file (:func:`cryoet_monai.io.mrc.read_mrc`) and computes the intensity
   normalisation statistics once, on a subsample of the whole volume;
2. walks over z-slabs (the next one read and normalised in a worker thread while the current one is
   predicted): optionally resamples a slab to the model's voxel
   size, runs the segmenter's inferer over it (:mod:`cryoet_monai.inference.inferers`: MONAI's
   ``SliceInferer`` over every slice for 2-D and 2.5-D models, ``SlidingWindowInferer`` for 3-D models;
   the inferer says how many halo planes a slab needs and whether they are blended between neighbouring
   slabs or only context), resamples the class probabilities back to the input grid;
3. writes labels (and on request float16 probabilities and an entropy map) slab by slab into
   memory-mapped temporary files (:func:`cryoet_monai.io.mrc.create_mrc`) that are renamed into place
   only when the whole tomogram is done, so an interrupted run never leaves a partial output.

Peak memory is therefore a few slabs plus the network, whatever the size of the tomogram.
"""

from __future__ import annotations

import glob
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from cryoet_monai import CLASS_NAMES
from cryoet_monai.classes import by_class_name
from cryoet_monai.data.datalist import read_datalist_json
from cryoet_monai.inference.backends import default_backend, make_backend
from cryoet_monai.inference.extent import SampleExtent
from cryoet_monai.inference.inferers import TomogramInferer, default_inferer, network_kind
from cryoet_monai.inference.polarity import DenseContrastSkewness, PolarityDecision
from cryoet_monai.inference.postprocess import relabel_unpaired_double_membranes, remove_small_components
from cryoet_monai.inference.predictor import WindowPredictor, fold_batch_norm, resolve_autocast_dtype
from cryoet_monai.inference.sinks import ArrayLabelSink, LabelSink, label_sink
from cryoet_monai.io.mrc import (
    MRC_SUFFIXES,
    MRCFormatError,
    create_mrc,
    is_mrc_path,
    mrc_stem,
    read_mrc,
    release_pages,
    release_planes,
    remove_stale_temporaries,
)
from cryoet_monai.io.omezarr import is_ome_zarr_path, read_ome_zarr
from cryoet_monai.io.tiff import is_tiff_path, read_tiff
from cryoet_monai.precision import parse_bool
from cryoet_monai.transforms.intensity import NonFiniteIntensityError, RobustNormalizeIntensity

__all__ = [
    "OUTPUT_SUFFIXES",
    "InferenceError",
    "VoxelSizeError",
    "TomogramSegmenter",
    "find_inputs",
    "is_output",
    "output_stem",
    "shard",
    "slab_ranges",
]

logger = logging.getLogger(__name__)

_GLOB_CHARS = "*?["


class InferenceError(ValueError):
    """An input that cannot be segmented; the message names the file and the problem.

    ``results`` holds the per-file results when the error ends a batch in which nothing could be
    segmented."""

    results: list[dict[str, Any]] = []


class VoxelSizeError(InferenceError):
    """The voxel size is missing, unset (1.0 Å) or implausible: the user must give it (--voxel-size)."""


def output_stem(path: str | os.PathLike) -> str:
    """``/data/tomo_01.rec.bz2`` -> ``tomo_01``: the file name without its MRC suffix(es)
    (:func:`cryoet_monai.io.mrc.mrc_stem`)."""
    return mrc_stem(path)


def _is_mrc(path: Path) -> bool:
    """A tomogram file this segmenter reads: MRC (any suffix of :data:`MRC_SUFFIXES`) or a TIFF stack."""
    return path.is_file() and (is_mrc_path(path) or is_tiff_path(path))


def _from_datalist(path: Path) -> list[Path]:
    # not load_datalist (MONAI's loader): inputs may be a bare list or image paths in any split, and
    # keep the spelling the datalist gives them (no normpath; find_inputs de-duplicates by realpath)
    content = read_datalist_json(path, InferenceError)
    if isinstance(content, dict):
        for key in ("test", "testing", "inference", "validation", "training"):
            if content.get(key):
                content = content[key]
                break
        else:
            raise InferenceError(f"{path}: datalist has no 'test'/'testing'/'validation'/'training' list.")
    if not isinstance(content, list):
        raise InferenceError(
            f"{path}: a datalist must be a list or a dict of lists, got {type(content).__name__}."
        )
    files = []
    for item in content:
        image = item.get("image") if isinstance(item, dict) else item
        if not isinstance(image, str):
            raise InferenceError(f"{path}: datalist entry {item!r} has no 'image' path.")
        files.append(Path(image) if os.path.isabs(image) else path.parent / image)
    return files


def find_inputs(inputs: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """Expand ``inputs`` into a list of tomogram files, in order, without duplicates.

    Each item may be an MRC file (:data:`cryoet_monai.io.mrc.MRC_SUFFIXES`, optionally
    ``.gz``/``.bz2``), a glob pattern, a folder (its MRC files, sorted) or a decathlon-style datalist
    ``.json`` (its ``"test"`` list, else ``"validation"``/``"training"``; paths relative to the
    datalist's folder).
    A path that matches nothing (a missing file, a folder without MRC files, a glob pattern without
    matches) is still returned, so that it is reported as unreadable later.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    found: list[Path] = []
    for item in inputs:
        text = os.fspath(item)
        path = Path(text).expanduser()
        if path.is_dir() and is_ome_zarr_path(path):
            found.append(path)
        elif path.is_dir():
            tomograms = (p for p in path.iterdir() if _is_mrc(p) or (p.is_dir() and is_ome_zarr_path(p)))
            found += sorted(p for p in tomograms if not is_output(p)) or [path]
        elif path.suffix.lower() == ".json":
            found += _from_datalist(path)
        elif any(ch in text for ch in _GLOB_CHARS) and not path.exists():
            matches = (Path(p) for p in glob.glob(os.path.expanduser(text), recursive=True))
            found += sorted(p for p in matches if not is_output(p)) or [path]
        else:
            found.append(path)
    # one entry per file, however it was named (a.mrc, $PWD/a.mrc, d/../a.mrc)
    unique: dict[str, Path] = {}
    for p in found:
        unique.setdefault(os.path.realpath(p), p)
    return list(unique.values())


#: name endings of the files ``segment`` writes (never taken as inputs from folders or globs)
OUTPUT_SUFFIXES = ("_seg", "_probs", "_uncertainty")


def is_output(path: str | os.PathLike) -> bool:
    """True for ``<name>_seg.mrc``, ``<name>_probs.mrc`` and ``<name>_uncertainty.mrc``: our outputs,
    so that a second run over a folder that holds them does not segment its own results."""
    return output_stem(path).endswith(OUTPUT_SUFFIXES)


def shard(files: Sequence[Path], rank: int | None = None, world_size: int | None = None) -> list[Path]:
    """The files of this rank when several processes share the list (torchrun's RANK/WORLD_SIZE)."""
    rank = int(os.environ.get("RANK", 0)) if rank is None else rank
    world_size = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else world_size
    return list(files[rank::world_size])


def _default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def slab_ranges(depth: int, slab: int, halo: int, z0: int = 0, z1: int | None = None, shared: bool = False
                ) -> Iterator[tuple[int, int, int, int]]:
    """``(core_start, core_stop, lo, hi)`` per slab of the planes ``[z0, z1)`` (default all): it
    predicts ``[lo, hi)`` and owns the core; the halo may reach outside ``[z0, z1)``, not the volume.
    ``shared``: each slab after the first starts on the last core plane of the one before (whose
    prediction it reuses), so the cores overlap by one plane and no slab is that plane alone."""
    z1 = depth if z1 is None else z1
    step = slab - 1 if shared and slab > 1 else slab
    # a shared slab starting on the last plane would hold only the plane the one before predicted
    last = z1 - 1 if step < slab and z1 - z0 > 1 else z1
    for start in range(z0, last, step):
        stop = min(start + slab, z1)
        yield start, stop, max(0, start - halo), min(depth, stop + halo)


def _prefetched(load: Callable[[int, int], np.ndarray], ranges: Sequence[tuple[int, int, int, int]]
                ) -> Iterator[np.ndarray]:
    """``load(lo, hi)`` of each slab of ``ranges``, the next one read and normalised in a worker thread
    while the caller predicts the current one (reading a cold file and normalising release the GIL).
    At most two slabs are held; an error in a read is raised where its slab is taken."""
    if not ranges:
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="slab-reader") as pool:
        pending = pool.submit(load, ranges[0][2], ranges[0][3])
        for _, _, lo, hi in ranges[1:]:
            block = pending.result()
            pending = pool.submit(load, lo, hi)
            yield block
        yield pending.result()


def _halo_weights(start: int, stop: int, lo: int, hi: int) -> torch.Tensor:
    """Blending weight of each plane of ``[lo, hi)``: 1 in the core, ramping down through the halos."""
    z = torch.arange(lo, hi, dtype=torch.float32)
    w = torch.ones(hi - lo)
    if start > lo:
        w = torch.where(z < start, (z - lo + 1) / (start - lo + 1), w)
    if hi > stop:
        w = torch.where(z >= stop, (hi - z) / (hi - stop + 1), w)
    return w


class TomogramSegmenter:
    """Segment whole tomograms (MRC files) slab by slab with a 2-D or 3-D network.

    Args:
        network: logits network, ``(B, 1, *S) -> (B, C, *S)`` (e.g. :class:`cryoet_monai.PaperUNet`);
            2-D or 3-D is read from its ``spatial_dims`` attribute (else from its first convolution).
        model_path: checkpoint with the network's plain ``state_dict`` (``models/model.pt``); ``None``
            uses the network's weights as they are.
        inferer: how a slab is predicted (a :class:`~cryoet_monai.inference.inferers.TomogramInferer`:
            ``SliceInferer2D``, ``SliceStackInferer``, ``WindowInferer3D``; configs: ``"inferer"``); it
            must fit the network's kind. ``None``: :func:`~cryoet_monai.inference.inferers.default_inferer`
            for the network with the five arguments below, which are ignored when an inferer is given.
        roi_size: window size, ``(Y, X)`` for 2-D or ``(Z, Y, X)`` for 3-D models; non-positive entries
            mean the whole extent (``[-1, -1]`` = whole slices). Windows are padded to multiples of the
            network's ``size_divisible``, so any tomogram size works.
        overlap: sliding-window overlap (only matters when the windows are smaller than the slice).
        sw_batch_size: windows (slices, for whole-slice 2-D inference) per forward pass; ``None``: as many
            as fit in ``batch_pixels`` voxels (at least one).
        batch_pixels: voxel budget of one forward pass when ``sw_batch_size`` is ``None``; default 2**20 on
            CPU (the paper-size U-Net needs about 1 GiB of activations per 1024x1024 slice in bf16) and
            2**22 on GPU.
        blend_mode: ``"gaussian"`` or ``"constant"`` weighting of overlapping windows.
        slab_size: z-slices per slab (the core; the inferer adds its halo each side: half the roi depth
            for 3-D models, ``k // 2`` context slices for 2.5-D ones).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or ``None``/``"auto"`` (the GPU of this rank if any).
        precision: ``"auto"`` (bf16 on CPUs/GPUs with native support, else fp16 on GPU, fp32 on CPU),
            ``"fp32"``, ``"bf16"`` or ``"fp16"``.
        channels_last: channels-last activations (faster convolutions).
        fold_bn: fold eval-mode batch norms into the convolutions (same function, less work).
        compile: wrap the network with ``torch.compile`` (opt-in; first call is slow).
        tta: test-time augmentation: ``False``/1 none, ``True`` all 8 in-plane flips/rotations, or a count.
        save_probs: also write ``<name>_probs.mrc`` (float16, one channel per class).
        save_uncertainty: also write ``<name>_uncertainty.mrc`` (normalised entropy, 0..1, float16).
        model_voxel_size: voxel size (Å) the model was trained at (bundle metadata).
        voxel_size: override the header voxel size of every input (Å, float or ``(z, y, x)``).
        resample: resample inputs whose voxel size differs from ``model_voxel_size`` by more than
            ``resample_tolerance`` (relative) to the model's voxel size, and the predictions back.
        resample_tolerance: relative tolerance of the voxel-size check.
        min_component_size: drop connected components smaller than this many voxels (an int for every
            foreground class, one value per class, or a mapping by class name, missing names 0); 0
            disables the clean-up.
        class_gains: one factor per class (or a mapping by class name, missing names 1) applied to the
            probabilities before the argmax (a prior correction, chosen on synthetic validation data by
            ``scripts/tune_postprocessing.py``); ``None`` = plain argmax. Written probabilities stay the
            network's.
        double_membrane_max_gap: two bilayers closer than this (Å) are a double membrane, as the labels
            define it: double-membrane voxels without a partner bilayer within it become single
            membrane (:func:`~cryoet_monai.inference.postprocess.relabel_unpaired_double_membranes`,
            in-plane, after the clean-up). ``None`` or 0 disables it; so does a model without both classes.
        normalizer: intensity normalisation (must match training); default ``RobustNormalizeIntensity()``.
        progress: show a progress bar with ETA.
        overwrite: replace existing outputs (else skip tomograms whose labels already exist).
        output_format: ``"mrc"`` (``<name>_seg.mrc``) or ``"zarr"`` (``<name>_seg.zarr``: an OME-Zarr
            store with the labels as NGFF ``labels/segmentation``, class names and colours, voxel size
            in Å; needs the zarr extra). Probabilities and uncertainty stay MRC files.
        backend: ``"torch"`` (eager, autocast per ``precision``), ``"onnxruntime"`` or ``"openvino"``
            (the same weights exported at start-up, CPU only; OpenVINO uses bf16 where the CPU has it
            natively), ``"openvino-int8"`` (the int8 model made once from these weights, beside them),
            or ``"auto"``: on the CPU with OpenVINO installed its int8 model when there is one, else
            OpenVINO, else torch (the configs' default). See :mod:`cryoet_monai.inference.backends`
            and ``scripts/bench_backends.py``.
        sink: where the labels go (a :class:`~cryoet_monai.inference.sinks.LabelSink`); given, it
            replaces the one ``output_format`` names (configs: ``"label_sink"``).
        preview: also write ``<name>_preview.png`` (central xy/xz/yz slices, raw and with the labels)
            and ``<name>_summary.json`` (class fractions, mean uncertainty, polarity, voxel size, model,
            timings) next to the labels.
        invert: contrast polarity of the inputs: ``"auto"`` (decided per tomogram, see
            :meth:`polarity`), ``True``/``"yes"`` (dense material bright: negate), ``False``/``"no"``
            (dense material dark, as the model expects).
        sample_extent: skip the planes above and below the sample (labelled background; the extent is
            in the summary): ``True`` with the default :class:`~cryoet_monai.inference.extent.SampleExtent`,
            a ``SampleExtent`` to tune it, ``False`` to segment every plane. Slice-wise (2-D, 2.5-D)
            inferers only; 3-D windows always cover the whole depth.
        contrast_skewness: the image cue of ``invert="auto"`` (see :meth:`polarity`); ``None``
            leaves the decision to the network's confidence alone.
    """

    def __init__(
        self,
        network: nn.Module,
        model_path: str | os.PathLike | None = None,
        roi_size: Sequence[int] | int = (-1, -1),
        overlap: float = 0.25,
        sw_batch_size: int | None = None,
        batch_pixels: int | None = None,
        blend_mode: str = "gaussian",
        slab_size: int = 8,
        device: str | torch.device | None = None,
        precision: str = "auto",
        channels_last: bool = True,
        fold_bn: bool = True,
        compile: bool = False,
        tta: bool | int = False,
        save_probs: bool = False,
        save_uncertainty: bool = False,
        model_voxel_size: float | None = None,
        voxel_size: float | Sequence[float] | None = None,
        resample: bool = True,
        resample_tolerance: float = 0.1,
        min_component_size: int | Sequence[int] | Mapping[str, int] = 0,
        normalizer: RobustNormalizeIntensity | None = None,
        num_classes: int = len(CLASS_NAMES),
        progress: bool = True,
        overwrite: bool = True,
        invert: str | bool = "auto",
        preview: bool | str = False,
        output_format: str = "mrc",
        class_gains: Sequence[float] | Mapping[str, float] | None = None,
        double_membrane_max_gap: float | None = None,
        sink: LabelSink | None = None,
        backend: str = "torch",
        inferer: TomogramInferer | None = None,
        sample_extent: SampleExtent | bool = True,
        contrast_skewness: DenseContrastSkewness | None = DenseContrastSkewness(),
    ) -> None:
        self.device = _default_device() if device in (None, "auto") else torch.device(device)
        if self.device.type == "cuda":
            if not torch.cuda.is_available():
                raise InferenceError(f"CUDA requested (device {device!r}) but torch has no CUDA device.")
            if self.device.index is not None and self.device.index >= torch.cuda.device_count():
                raise InferenceError(
                    f"device {device!r} requested but torch sees {torch.cuda.device_count()} CUDA device(s)."
                )
        channels_last = parse_bool(channels_last, "channels_last")
        compile = parse_bool(compile, "compile")
        fold_bn = parse_bool(fold_bn, "fold_bn")
        if isinstance(tta, str):
            tta = int(tta) if tta.strip().isdigit() else parse_bool(tta, "tta")
        n_tta = 8 if tta is True else (int(tta) if tta else 1)
        if not 1 <= n_tta <= 8:
            raise ValueError(f"tta must be a count of 1 to 8 flips/rotations, got {tta!r}.")
        # a 2-D network with k > 1 input channels is a 2.5-D model: k neighbouring slices as channels
        self.spatial_dims, self.context = network_kind(network)
        if self.context % 2 == 0:
            raise InferenceError(
                f"a 2.5-D network needs an odd number of slices as channels, got {self.context}."
            )
        if inferer is None:
            inferer = default_inferer(network, roi_size=roi_size, overlap=overlap,
                                      sw_batch_size=sw_batch_size, batch_pixels=batch_pixels, mode=blend_mode)
        # before loading weights and exporting to a backend: a wrong inferer fails at once
        inferer.check(self.spatial_dims, self.context, int(getattr(network, "size_divisible", 16)))
        self.inferer = inferer
        if model_path is not None:
            self.load_weights(network, Path(model_path))
        network = network.eval()
        if fold_bn:
            network = fold_batch_norm(network)
        network = network.to(self.device)
        if channels_last:
            fmt = torch.channels_last if self.spatial_dims == 2 else torch.channels_last_3d
            network = network.to(memory_format=fmt)
        self.network = network
        self.backend = default_backend(self.device, model_path) if backend == "auto" else backend
        backend = self.backend
        if backend != "torch":
            if self.device.type != "cpu":
                raise InferenceError(f"backend {backend!r} runs on the CPU; use 'torch' on {self.device}.")
            # exported from the eval-mode, BN-folded network; autocast and memory format are the runtime's
            model: Any = make_backend(backend, network.to(memory_format=torch.contiguous_format),
                                      model_path=model_path)
            self.autocast_dtype = None
            channels_last = False
        else:
            model = torch.compile(network) if compile else network
            # keep size_divisible visible through the compile wrapper
            model.size_divisible = int(getattr(network, "size_divisible", 16))
            self.autocast_dtype = resolve_autocast_dtype(precision, self.device)
        self.predictor = WindowPredictor(model, self.device, self.autocast_dtype, channels_last, n_tta)

        self.slab_size = max(1, int(slab_size))
        self.save_probs = parse_bool(save_probs, "save_probs")
        self.save_uncertainty = parse_bool(save_uncertainty, "save_uncertainty")
        self.model_voxel_size = None if model_voxel_size is None else float(model_voxel_size)
        self.voxel_size = None if voxel_size is None else self._as_zyx(voxel_size)
        self.resample = parse_bool(resample, "resample")
        self.resample_tolerance = float(resample_tolerance)
        names = CLASS_NAMES[: int(num_classes)]
        if isinstance(min_component_size, Mapping):  # by class name, as the configs give it
            sizes = by_class_name(min_component_size, names, 0, "min_component_size")
            min_component_size = [int(v) for v in sizes]
        self.min_component_size = min_component_size
        self.normalizer = normalizer if normalizer is not None else RobustNormalizeIntensity()
        self.num_classes = int(num_classes)
        self.progress = parse_bool(progress, "progress")
        self.preview = parse_bool(preview, "preview")
        self.sink = label_sink(output_format) if sink is None else sink
        self.output_format = output_format if sink is None else self.sink.suffix.lstrip(".")
        if isinstance(class_gains, Mapping):
            class_gains = by_class_name(class_gains, names, 1.0, "class_gains")
        if class_gains is not None:
            gains = [float(g) for g in class_gains]
            if len(gains) != int(num_classes) or not all(math.isfinite(g) and g > 0 for g in gains):
                raise ValueError(f"class_gains needs {num_classes} positive numbers, got {class_gains!r}.")
            self.class_gains: torch.Tensor | None = torch.tensor(gains)[:, None, None]
        else:
            self.class_gains = None
        self.membrane_labels: tuple[int, int] | None = None
        gap = 0.0 if double_membrane_max_gap is None else float(double_membrane_max_gap)
        if not (math.isfinite(gap) and gap >= 0):
            raise ValueError(f"double_membrane_max_gap must be a length in Å (0 or null: off), "
                             f"got {double_membrane_max_gap!r}.")
        self.double_membrane_max_gap = gap or None
        if self.double_membrane_max_gap is not None:
            if "double_membrane" in names and "single_membrane" in names:
                self.membrane_labels = (names.index("double_membrane"), names.index("single_membrane"))
        if not isinstance(sample_extent, SampleExtent):
            sample_extent = SampleExtent() if parse_bool(sample_extent, "sample_extent") else None
        self.sample_extent: SampleExtent | None = sample_extent
        self.contrast_skewness = contrast_skewness
        self.model_path = None if model_path is None else str(model_path)
        self.overwrite = parse_bool(overwrite, "overwrite")
        if isinstance(invert, str) and invert.lower() == "auto":
            self.invert: bool | None = None
        else:
            try:
                self.invert = parse_bool(invert, "invert")
            except ValueError as err:
                raise ValueError(f"invert must be 'auto', 'yes' or 'no', got {invert!r}.") from err

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
        """The state dict in ``path`` (also inside a CheckpointSaver-style dict), with one-line
        errors naming the file when it is missing, corrupt or not a state dict."""
        if not path.is_file():
            raise InferenceError(f"{path}: model checkpoint not found.")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises many types for a corrupt file
            detail = (str(err).strip().splitlines() or [""])[0]
            raise InferenceError(
                f"{path}: cannot load the model checkpoint; not a PyTorch file or corrupt "
                f"({type(err).__name__}: {detail})."
            ) from err
        for key in ("state_dict", "network", "model"):  # also accept CheckpointSaver-style dicts
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
        if not isinstance(state, dict):
            raise InferenceError(f"{path}: expected a state_dict, got {type(state).__name__}.")
        return state

    @classmethod
    def load_weights(
        cls, network: nn.Module, path: Path, state: dict[str, torch.Tensor] | None = None
    ) -> None:
        """Load the weights of ``path`` into ``network`` (``state``: already read from ``path``), with
        a one-line error naming the file when they do not fit."""
        try:
            network.load_state_dict(cls.read_state_dict(path) if state is None else state)
        except RuntimeError as err:  # missing/unexpected keys or shape mismatches
            detail = str(err).splitlines()
            raise InferenceError(
                f"{path}: the checkpoint does not fit the configured network ({type(network).__name__}); "
                "give the model folder it was trained with (segment --model FOLDER), or an inference "
                "config whose network_def matches it (--config; bundle runs: --network_def#features). "
                f"{' '.join(line.strip() for line in detail[1:3])}"
            ) from err

    @staticmethod
    def _as_zyx(value: float | Sequence[float]) -> tuple[float, float, float]:
        v = (float(value),) if isinstance(value, (int, float)) else tuple(float(x) for x in value)
        if len(v) == 1:
            v = v * 3
        if len(v) != 3:
            raise InferenceError(f"voxel size must be one value or (z, y, x), got {value!r}.")
        if not all(math.isfinite(x) and x > 0 for x in v):
            # a zero/negative size would resample the tomogram to nothing: an all-background output
            raise InferenceError(f"voxel size must be positive and finite (Å), got {value!r}.")
        return v  # type: ignore[return-value]

    def zoom_factors(self, voxel_size: tuple[float, float, float]) -> tuple[float, float, float]:
        """Zoom factors input grid -> model grid per (z, y, x); 1 where no resampling is done."""
        if not self.resample or self.model_voxel_size is None:
            return (1.0, 1.0, 1.0)
        # a 2-D model never mixes slices; 2.5-D and 3-D models see neighbours at the model's spacing
        axes = (1, 2) if self.inferer.planar else range(3)
        ratio = [1.0, 1.0, 1.0]
        for a in axes:
            ratio[a] = voxel_size[a] / self.model_voxel_size
        if all(abs(r - 1.0) <= self.resample_tolerance for r in ratio):
            return (1.0, 1.0, 1.0)
        return tuple(ratio)  # type: ignore[return-value]

    @property
    def roi_size(self) -> tuple[int, ...]:
        """The inferer's window size (non-positive entries: the whole extent)."""
        return self.inferer.roi_size

    @property
    def halo(self) -> int:
        """z-halo (model-grid slices) each side of a slab, the inferer's: half the roi depth for 3-D
        models, the neighbours a 2.5-D model sees (``k // 2``), 0 for 2-D."""
        return self.inferer.halo

    def slab_plan(
        self, depth: int, scale: Sequence[float] = (1.0, 1.0, 1.0), z0: int = 0, z1: int | None = None
    ) -> tuple[list[tuple[int, int, int, int]], bool]:
        """The slabs :meth:`segment_volume` predicts over the sample's planes ``[z0, z1)`` (default all)
        of a tomogram of ``depth`` planes zoomed by ``scale`` to the model's grid: their
        ``(core_start, core_stop, lo, hi)`` (:func:`slab_ranges`, input planes), and whether consecutive
        slabs share their end plane (strided slice-wise inference without resampling)."""
        z1 = depth if z1 is None else z1
        halo = min(depth, math.ceil(self.halo / scale[0]))  # in input slices
        slab = self.inferer.slab_depth(z1 - z0, self.slab_size)
        shared = (self.inferer.plane_stride > 1 and self.inferer.reuses_first_plane
                  and tuple(scale) == (1.0, 1.0, 1.0))
        return list(slab_ranges(depth, slab, halo, z0, z1, shared=shared)), shared

    def network_planes(self, depth: int, z0: int = 0, z1: int | None = None) -> int:
        """How many planes the network runs on, following :meth:`slab_plan`, for a tomogram of
        ``depth`` planes on the model's grid with sample in ``[z0, z1)``. The sample-extent probes are
        not counted. For a 3-D inferer: the planes of its slabs, halos included."""
        ranges, shared = self.slab_plan(depth, (1.0, 1.0, 1.0), z0, z1)
        if not self.inferer.slice_wise:
            return sum(hi - lo for _, _, lo, hi in ranges)
        runs = (self.inferer.run_planes(stop - start, reuse_first=shared and i > 0) or range(stop - start)
                for i, (start, stop, _, _) in enumerate(ranges))
        return sum(len(run) for run in runs)

    # ------------------------------------------------------------------ prediction
    @torch.inference_mode()
    def predict(
        self,
        block: np.ndarray | torch.Tensor,
        scale: Sequence[float] = (1.0, 1.0, 1.0),
        keep: tuple[int, int] | None = None,
        first: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Class probabilities of a normalised ``(Z, Y, X)`` block, in one inferer call.

        Args:
            block: normalised intensities ``(Z, Y, X)``.
            scale: zoom factors to the model's grid (z, y, x); the probabilities come back on the input grid.
            keep: ``(start, stop)`` planes of the block to return (default all). Slice-wise inferers (2-D,
                2.5-D) read the other planes only as context; without z-resampling they are not even
                predicted.
            first: probabilities ``(C, Y, X)`` of plane ``keep[0]``, already predicted (slice-wise
                inferers, no resampling: ``scale`` all 1); not predicted again.

        Returns:
            float32 probabilities ``(C, Z', Y, X)`` on the CPU, ``Z'`` the planes kept.
        """
        x = torch.as_tensor(np.ascontiguousarray(block), dtype=torch.float32)[None, None]
        shape = tuple(x.shape[2:])
        if any(s != 1.0 for s in scale):
            size = [max(1, round(n * s)) for n, s in zip(shape, scale)]
            mode = "area" if all(s <= 1.0 for s in scale) else "trilinear"
            x = F.interpolate(x, size=size, mode=mode, **({} if mode == "area" else {"align_corners": False}))
        if first is not None and (keep is None or any(s != 1.0 for s in scale)):
            raise ValueError("predict: a reused first plane needs keep and no resampling (scale all 1).")
        if keep is not None and scale[0] == 1.0:  # the inferer predicts only the planes kept
            reuse = {} if first is None else {"first": first[None]}  # custom inferers need not take it
            probs = self.inferer(x, self.predictor, planes=keep, **reuse)
            shape, keep = (keep[1] - keep[0], *shape[1:]), None
        else:
            probs = self.inferer(x, self.predictor)
        if tuple(probs.shape[2:]) != shape:
            # linear interpolation keeps the probabilities summing to one
            probs = F.interpolate(probs, size=shape, mode="trilinear", align_corners=False)
        probs = torch.as_tensor(probs)[0].float()
        return probs if keep is None else probs[:, keep[0] : keep[1]]

    def _normalizer_for(self, volume: np.ndarray, path: Path) -> RobustNormalizeIntensity:
        """The normaliser with statistics of the whole tomogram (a strided subsample) frozen in."""
        try:
            norm = self.normalizer.fit(volume, name=str(path))
        except ValueError as err:  # NaN/inf, constant or empty volume: the message names the file
            raise InferenceError(str(err)) from err
        if norm.stats is not None and not norm.stats.upper > norm.stats.lower:
            # a flat (blank, all-zero or saturated) volume has no structure: refuse it, do not
            # write a confident-looking segmentation of nothing
            raise InferenceError(
                f"{path}: the volume is flat (intensities {norm.stats.lower:.4g} to {norm.stats.upper:.4g} "
                "between the 0.5th and 99.5th percentiles); nothing to segment."
            )
        return norm

    def check_input(self, volume: np.ndarray, meta: dict, path: Path) -> tuple[float, float, float]:
        if volume.ndim != 3:
            raise InferenceError(
                f"{path}: is {volume.ndim}-D with shape {tuple(volume.shape)}; "
                "a tomogram must be 3-D (Z, Y, X)."
            )
        if min(volume.shape) < 1:
            raise InferenceError(f"{path}: empty volume of shape {tuple(volume.shape)}.")
        if volume.dtype.kind not in "uif":
            raise InferenceError(
                f"{path}: unsupported data type {volume.dtype}; expected real-valued voxels."
            )
        if self.voxel_size is not None:
            return self._plausible(self.voxel_size, path, "--voxel-size")
        vs = tuple(float(v) for v in meta.get("voxel_size", (0.0, 0.0, 0.0)))
        if len(vs) != 3 or not all(math.isfinite(v) and v > 0 for v in vs):
            raise VoxelSizeError(
                f"{path}: header voxel size {vs} Å is not positive; "
                "pass the voxel size explicitly (--voxel-size)."
            )
        if self.resample and self.model_voxel_size is not None and all(v == 1.0 for v in vs):
            # 1.0 Å is what many programs write when the pixel size was never set; resampling by it
            # would shrink the tomogram tenfold into an all-background result
            raise VoxelSizeError(
                f"{path}: header voxel size is 1.0 Å, which usually means 'not set'; "
                "pass the real voxel size with --voxel-size (Å)."
            )
        return self._plausible(vs, path, "header")  # type: ignore[arg-type]

    #: voxel sizes (Å) accepted when resampling to the model's grid: outside, a header is almost
    #: surely wrong, and resampling by it would allocate absurd amounts of memory or shrink the
    #: tomogram to nothing
    PLAUSIBLE_VOXEL_SIZE = (0.5, 100.0)

    def _plausible(
        self, vs: tuple[float, float, float], path: Path, source: str
    ) -> tuple[float, float, float]:
        lo, hi = self.PLAUSIBLE_VOXEL_SIZE
        if self.resample and self.model_voxel_size is not None and not all(lo <= v <= hi for v in vs):
            each = [f"{v:.4g}" for v in vs]
            shown = each[0] if len(set(each)) == 1 else "/".join(each)
            raise VoxelSizeError(
                f"{path}: {source} voxel size {shown} Å is outside the plausible {lo:g}-{hi:g} Å; "
                "fix it with --voxel-size, or segment on the file's own grid with --no-resample."
            )
        return vs

    #: how much more confident (mean max-probability) the inverted input must make the model
    POLARITY_MARGIN = 0.02

    def polarity(self, volume: np.ndarray, norm: RobustNormalizeIntensity, voxel_size: Sequence[float],
                 path: Path, size: int = 256) -> PolarityDecision:
        """Decide whether ``volume`` (``(Z, Y, X)``, ``voxel_size`` Å per axis) has dense material
        bright (``inverted``: it will be negated), and say which judge decided.

        Two judges, the cheaper first:

        1. the image: the skewness of the central slab's block means
           (:class:`~cryoet_monai.inference.polarity.DenseContrastSkewness`): dense material is a
           minority, so its side of the distribution has the long tail; a clear tail decides;
        2. otherwise the model: a central block (a few slices around the middle, the central
           ``size``² in-plane) is predicted as it is and negated, and the polarity with the higher
           mean confidence (maximum class probability) wins, inverting only by a margin of
           :attr:`POLARITY_MARGIN` (an undecided network keeps the data as it is). A network trained
           on dense-dark tomograms is markedly less sure of itself on inverted contrast.

        The model card reports how often this is right on synthetic tomograms of both polarities.
        """
        skewness = None
        if self.contrast_skewness is not None:
            skewness = self.contrast_skewness.measure(volume, voxel_size)
            release_planes(volume, *self.contrast_skewness.slab_planes(volume.shape[0], voxel_size))
            by_image = self.contrast_skewness.decide(skewness)
            if by_image is not None:
                logger.info("%s: polarity %s (skewness of %g-Å block means %.2f)", path,
                            "dense bright: inverting" if by_image else "dense dark",
                            self.contrast_skewness.block, skewness)
                return PolarityDecision(by_image, "image", skewness)
        depth, ny, nx = volume.shape
        half = max(1, self.inferer.probe_halo)
        z0, z1 = max(0, depth // 2 - half), min(depth, depth // 2 + half + 1)
        cy, cx = ny // 2, nx // 2
        sy = slice(max(0, cy - size // 2), min(ny, cy + size // 2))
        sx = slice(max(0, cx - size // 2), min(nx, cx + size // 2))
        block = norm(np.asarray(volume[z0:z1, sy, sx], dtype=np.float32), name=str(path))
        release_planes(volume, z0, z1)
        scale = self.zoom_factors(tuple(float(v) for v in voxel_size))
        as_is, negated = (float(self.predict(sign * block, scale).amax(0).mean()) for sign in (1.0, -1.0))
        inverted = negated > as_is + self.POLARITY_MARGIN
        undecided = "" if skewness is None else f"; skewness {skewness:.2f} undecided"
        logger.info("%s: polarity %s (mean confidence %.3f as is, %.3f inverted%s)", path,
                    "dense bright: inverting" if inverted else "dense dark", as_is, negated, undecided)
        return PolarityDecision(inverted, "model", skewness, (as_is, negated))

    def find_sample_extent(self, volume: np.ndarray, norm: RobustNormalizeIntensity, sign: np.float32,
                           scale: Sequence[float], path: Path) -> tuple[int, int, int]:
        """``(z0, z1, probes)``: the planes ``[z0, z1)`` that hold the sample (:mod:`.extent`), or the
        whole depth when skipping is off or the inferer is not slice-wise."""
        depth = volume.shape[0]
        if self.sample_extent is None or not self.inferer.slice_wise:
            return 0, depth, 0
        context = min(depth, math.ceil(self.halo / scale[0]))

        def foreground(z: int) -> float:
            lo, hi = max(0, z - context), min(depth, z + context + 1)
            block = sign * norm(np.asarray(volume[lo:hi], dtype=np.float32), name=str(path))
            release_planes(volume, lo, hi)
            labels = self._labels(self.predict(block, scale, keep=(z - lo, z - lo + 1))[:, 0])
            return float((labels != 0).float().mean())

        return self.sample_extent.find(depth, foreground, scale[0])

    def output_paths(self, path: str | os.PathLike, output_dir: str | os.PathLike) -> dict[str, Path]:
        """``{"seg": ..., ["probs": ..., "uncertainty": ...]}`` for one input."""
        stem = Path(output_dir) / output_stem(path)
        out = {"seg": self.sink.output_path(stem)}
        if self.save_probs:
            out["probs"] = Path(f"{stem}_probs.mrc")
        if self.save_uncertainty:
            out["uncertainty"] = Path(f"{stem}_uncertainty.mrc")
        if self.preview:
            out["preview"] = Path(f"{stem}_preview.png")
            out["summary"] = Path(f"{stem}_summary.json")
        return out

    def segment(self, path: str | os.PathLike, output_dir: str | os.PathLike) -> dict[str, Any]:
        """Segment one tomogram; returns a summary dict (paths, seconds, per-class voxel fractions).

        Raises :class:`InferenceError` (or the reader's ``MRCFormatError``) naming the file for bad input;
        no output file exists under its final name unless the whole tomogram was written.
        """
        path = Path(path)
        t0 = time.perf_counter()
        if path.is_dir() and not is_ome_zarr_path(path):
            raise InferenceError(
                f"{path}: folder contains no MRC tomograms (*.{{{','.join(MRC_SUFFIXES)}}}[.gz|.bz2])."
            )
        if not path.exists() and any(ch in str(path) for ch in _GLOB_CHARS):
            raise InferenceError(f"{path}: no file matches this pattern.")
        if is_ome_zarr_path(path):  # the multiscale level nearest the model's voxel size
            volume, meta = read_ome_zarr(path, voxel_size=self.model_voxel_size)
        elif is_tiff_path(path):
            volume, meta = read_tiff(path)
        else:
            volume, meta = read_mrc(path, mmap=True)
        return self.segment_volume(volume, meta, path, output_dir, t0=t0)

    def segment_array(
        self, volume: np.ndarray, voxel_size: float | Sequence[float], name: str = "array",
        origin: Sequence[float] = (0.0, 0.0, 0.0),
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Segment an in-memory ``(Z, Y, X)`` volume (a napari layer, a copick tomogram): returns the
        ``(Z, Y, X)`` uint8 labels and the summary. ``name`` stands for the file in messages; the same
        checks apply as to files. Probabilities, uncertainty and previews need files: use :meth:`segment`."""
        if self.save_probs or self.save_uncertainty or self.preview:
            raise InferenceError(f"{name}: save_probs, save_uncertainty and preview need file outputs.")
        sink = ArrayLabelSink()
        meta = {"voxel_size": self._as_zyx(voxel_size), "origin": tuple(float(v) for v in origin)}
        result = self.segment_volume(volume, meta, Path(name), Path("."), sink=sink, overwrite=True)
        return sink.read(result["seg"]), result

    def segment_volume(
        self, volume: Any, meta: dict[str, Any], path: Path, output_dir: str | os.PathLike,
        sink: LabelSink | None = None, overwrite: bool | None = None, t0: float | None = None,
    ) -> dict[str, Any]:
        """Segment an opened ``(Z, Y, X)`` volume (array-like, read slab by slab) with the reader's
        ``meta`` (``voxel_size``, ``origin``); ``path`` names it in messages and outputs. ``sink`` and
        ``overwrite`` replace the segmenter's for this call. Returns the summary dict."""
        t0 = time.perf_counter() if t0 is None else t0
        sink = self.sink if sink is None else sink
        overwrite = self.overwrite if overwrite is None else overwrite
        voxel_size = self.check_input(volume, meta, path)
        origin = tuple(float(v) for v in meta.get("origin", (0.0, 0.0, 0.0)))
        outputs = self.output_paths(path, output_dir)
        outputs["seg"] = sink.output_path(Path(output_dir) / output_stem(path))
        if not overwrite and sink.exists(outputs["seg"]):
            logger.info("%s: %s exists, skipped", path, outputs["seg"])
            return {"input": str(path), "skipped": True, **{k: str(v) for k, v in outputs.items()}}
        if sink.writes_files or self.save_probs or self.save_uncertainty or self.preview:
            Path(output_dir).mkdir(parents=True, exist_ok=True)
        norm = self._normalizer_for(volume, path)
        release_pages(volume)  # the statistics' subsample touched every few planes
        scale = self.zoom_factors(voxel_size)
        polarity = (PolarityDecision(bool(self.invert), "given") if self.invert is not None
                    else self.polarity(volume, norm, voxel_size, path))
        invert = polarity.inverted
        sign = np.float32(-1.0 if invert else 1.0)
        depth, ny, nx = volume.shape
        c = self.num_classes
        z0, z1, probes = self.find_sample_extent(volume, norm, sign, scale, path)
        if (z0, z1) != (0, depth):
            logger.info("%s: sample in planes %d-%d of %d (%d probed); the other %d labelled background",
                        path, z0, z1 - 1, depth, probes, depth - (z1 - z0))
        ranges, shared = self.slab_plan(depth, scale, z0, z1)
        counts = np.zeros(c, dtype=np.int64)
        entropy = np.zeros(1, dtype=np.float64)  # running sum of the normalised entropy

        with ExitStack() as stack:
            bar = None
            if self.progress:
                from tqdm.auto import tqdm

                bar = tqdm(total=depth, unit="slice", desc=output_stem(path), leave=False, dynamic_ncols=True)
                stack.callback(bar.close)
            seg_mm = stack.enter_context(sink.create(outputs["seg"], (depth, ny, nx), voxel_size, origin,
                                                     CLASS_NAMES[:c]))
            probs_mm = unc_mm = None
            if self.save_probs:
                probs_mm = stack.enter_context(
                    create_mrc(
                        outputs["probs"], (c, depth, ny, nx), np.float16, voxel_size, origin, fill=None
                    )
                )
            if self.save_uncertainty:
                unc_mm = stack.enter_context(
                    create_mrc(
                        outputs["uncertainty"], (depth, ny, nx), np.float16, voxel_size, origin, fill=None
                    )
                )
            # running blend of overlapping slab predictions: planes [acc_start, acc_start + len)
            acc_num = torch.zeros((c, 0, ny, nx))
            acc_den = torch.zeros(0)
            acc_start = z0
            self._write_background([*range(z0), *range(z1, depth)], seg_mm, probs_mm, unc_mm, counts)
            if bar is not None:
                bar.update(depth - (z1 - z0))
            last_plane = None  # probabilities of the previous slab's last plane, when shared

            def load(lo: int, hi: int) -> np.ndarray:
                block = sign * norm(np.asarray(volume[lo:hi], dtype=np.float32), name=str(path))
                release_planes(volume, lo, hi)
                return block

            for i, ((start, stop, lo, hi), block) in enumerate(zip(ranges, _prefetched(load, ranges))):
                if self.inferer.slice_wise:
                    # 2-D/2.5-D: the halo is context only, every core plane sees all its neighbours
                    first = last_plane if shared and i > 0 else None
                    probs = self.predict(block, scale, keep=(start - lo, stop - lo), first=first)
                    if first is not None:  # written with the previous slab
                        probs, start = probs[:, 1:], start + 1
                    last_plane = probs[:, -1].clone() if shared else None
                    lo, hi = start, stop
                else:
                    probs = self.predict(block, scale)
                if lo == start == acc_start and hi == stop and not acc_num.shape[1]:
                    # no halo (2-D models): nothing to blend, write directly
                    self._write(probs, start, seg_mm, probs_mm, unc_mm, counts, entropy)
                    acc_start = stop
                    if bar is not None:
                        bar.update(stop - start)
                    continue
                w = _halo_weights(start, stop, lo, hi)
                grow = hi - (acc_start + acc_num.shape[1])
                if grow > 0:
                    acc_num = torch.cat([acc_num, torch.zeros((c, grow, ny, nx))], dim=1)
                    acc_den = torch.cat([acc_den, torch.zeros(grow)])
                acc_num[:, lo - acc_start : hi - acc_start] += probs * w[None, :, None, None]
                acc_den[lo - acc_start : hi - acc_start] += w
                done = ranges[i + 1][2] if i + 1 < len(ranges) else z1  # next slab starts predicting here
                n = done - acc_start
                if n > 0:
                    final = acc_num[:, :n] / acc_den[:n, None, None]
                    self._write(final, acc_start, seg_mm, probs_mm, unc_mm, counts, entropy)
                    acc_num, acc_den, acc_start = acc_num[:, n:].clone(), acc_den[n:].clone(), done
                if bar is not None:
                    bar.update(stop - start)
            if bar is not None and (self.min_component_size or self.membrane_labels is not None):
                bar.set_postfix_str("post-processing")  # whole-volume passes after the last slab
            removed = moved = 0
            if self.min_component_size:
                before = int(counts[1:].sum())
                counts = remove_small_components(seg_mm, self.min_component_size, num_classes=c)
                removed = before - int(counts[1:].sum())
            if self.membrane_labels is not None:  # set only when the rule is on
                double, single = self.membrane_labels
                moved = relabel_unpaired_double_membranes(
                    seg_mm, min(voxel_size[1:]), double, single, max_gap=self.double_membrane_max_gap)
                counts[double] -= moved
                counts[single] += moved
        seconds = time.perf_counter() - t0
        total = max(1, int(counts.sum()))
        fractions = {name: float(counts[k]) / total for k, name in enumerate(CLASS_NAMES[:c])}
        if fractions[CLASS_NAMES[0]] > 0.999:
            logger.warning(
                "%s: the result is essentially all background (%.3f %%); check the voxel size "
                "(%s Å) and the contrast polarity (dense material dark, or --invert yes).",
                path, 100 * (1 - fractions[CLASS_NAMES[0]]), "/".join(f"{v:.4g}" for v in voxel_size),
            )
        result = {
            "input": str(path),
            **{k: str(v) for k, v in outputs.items()},
            "shape": (depth, ny, nx),
            "voxel_size": voxel_size,
            "resampled": scale != (1.0, 1.0, 1.0),
            "inverted": bool(invert),
            "polarity": polarity.as_dict(),
            "seconds": seconds,
            "sample_extent": [z0, z1],
            "skipped_planes": depth - (z1 - z0),
            "class_fractions": fractions,
            "mean_uncertainty": float(entropy[0]) / total,
            # voxels changed after the argmax: set to background / double -> single membrane
            "small_component_voxels_removed": removed,
            "unpaired_double_membrane_voxels_relabelled": moved,
        }
        if self.preview:
            result.update(self._write_preview(volume, sink.read(outputs["seg"]), outputs, result))
        return result

    def _write_preview(self, volume: np.ndarray, labels: Any, outputs: dict[str, Path],
                       result: dict[str, Any]) -> dict:
        """The preview PNG and the JSON summary of a finished tomogram (see :mod:`.preview`)."""
        from cryoet_monai.inference.preview import write_preview, write_summary

        write_preview(volume, labels, outputs["preview"], title=f"{Path(result['input']).name} -> "
                      f"{outputs['seg'].name}" + (" (contrast inverted)" if result["inverted"] else ""))
        write_summary({**result, "model": self.model_path, "model_voxel_size": self.model_voxel_size,
                       "precision": str(self.autocast_dtype or "float32"), "backend": self.backend},
                      outputs["summary"])
        return {"preview": str(outputs["preview"]), "summary": str(outputs["summary"])}

    def _write(
        self,
        probs: torch.Tensor,
        z0: int,
        seg_mm: np.ndarray,
        probs_mm: np.ndarray | None,
        unc_mm: np.ndarray | None,
        counts: np.ndarray,
        entropy_sum: np.ndarray,
    ) -> None:
        """Write final probabilities ``(C, n, Y, X)`` of planes ``z0..z0+n`` to the open outputs;
        adds the label counts to ``counts`` and the normalised entropy to ``entropy_sum[0]``."""
        for j in range(probs.shape[1]):  # plane by plane: temporaries stay small
            z, p = z0 + j, probs[:, j]
            seg = self._labels(p).to(torch.uint8).numpy()
            seg_mm[z] = seg
            release_pages(seg_mm[z])
            counts += np.bincount(seg.ravel(), minlength=self.num_classes)[: self.num_classes]
            if probs_mm is not None:
                probs_mm[:, z] = p.to(torch.float16).numpy()
                for c in range(probs_mm.shape[0]):
                    release_pages(probs_mm[c, z])
            entropy = (torch.special.entr(p).sum(0) / math.log(self.num_classes)).clamp_(0.0, 1.0)
            entropy_sum[0] += float(entropy.sum())
            if unc_mm is not None:  # -p log p, 0 at p=0
                unc_mm[z] = entropy.to(torch.float16).numpy()
                release_pages(unc_mm[z])

    def _labels(self, probs: torch.Tensor) -> torch.Tensor:
        """Labels ``(Y, X)`` of one plane's probabilities ``(C, Y, X)``: argmax after the class gains."""
        # max(0).indices, not argmax(0): on a plane view of a (C, n, Y, X) slab (channel stride
        # n*Y*X) argmax takes 10x longer (42 against 4 ms per 630² plane); same first-maximum ties
        return (probs if self.class_gains is None else probs * self.class_gains).max(0).indices

    def _write_background(self, planes: Sequence[int], seg_mm: np.ndarray, probs_mm: np.ndarray | None,
                          unc_mm: np.ndarray | None, counts: np.ndarray) -> None:
        """Label ``planes`` (outside the sample) background: probability 1, uncertainty 0."""
        for z in planes:
            seg_mm[z] = 0
            release_pages(seg_mm[z])
            counts[0] += seg_mm[z].size
            if probs_mm is not None:
                probs_mm[:, z] = 0
                probs_mm[0, z] = 1
                for c in range(probs_mm.shape[0]):
                    release_pages(probs_mm[c, z])
            if unc_mm is not None:
                unc_mm[z] = 0
                release_pages(unc_mm[z])

    # ------------------------------------------------------------------ many files
    def __call__(
        self, inputs: str | os.PathLike | Sequence[str | os.PathLike], output_dir: str | os.PathLike
    ) -> list[dict[str, Any]]:
        """Segment every tomogram of ``inputs`` (see :func:`find_inputs`; sharded over ``torchrun`` ranks).

        A file that fails is reported (logged, and ``"error"`` in its result) and skipped; the others are
        still segmented. Raises :class:`InferenceError` before starting when there is no input or two inputs
        would write the same output file, and at the end when no input could be segmented.
        """
        every = find_inputs(inputs)
        if not every:
            raise InferenceError(f"no input tomograms given ({inputs!r}).")
        out = Path(output_dir)
        if out.exists() and not out.is_dir():
            raise InferenceError(f"{out}: the output folder is a file.")
        for stale in remove_stale_temporaries(output_dir):  # left by a killed run
            logger.warning("removed %s, a temporary output of an earlier run that was killed", stale)
        self.check_output_names(every, output_dir)
        files = shard(every)
        results: list[dict[str, Any]] = []
        for path in files:
            try:
                result = self.segment(path, output_dir)
            except (InferenceError, MRCFormatError, NonFiniteIntensityError, OSError, RuntimeError,
                    MemoryError, ValueError) as err:
                # whatever goes wrong inside one tomogram is that tomogram's error: the batch goes on
                message = str(err) if str(path) in str(err) else f"{path}: {err}"
                logger.debug("skipped %s", message, exc_info=True)  # the terminal gets the line below
                print(f"ERROR  skipped {message}", flush=True)
                results.append({"input": str(path), "error": message,
                                "needs_voxel_size": isinstance(err, VoxelSizeError)})
                continue
            results.append(result)
            print(self.summary(result), flush=True)
        if files and all("error" in r for r in results):
            err = InferenceError(f"no tomogram could be segmented ({len(files)} failed).")
            err.results = results
            raise err
        return results

    def check_output_names(self, files: Sequence[str | os.PathLike], output_dir: str | os.PathLike) -> None:
        """Raise :class:`InferenceError` when two different inputs would write the same output file
        (``a/tomo.mrc`` and ``b/tomo.mrc``, or ``tomo.mrc`` and ``tomo.rec``), before anything is written."""
        owners: dict[Path, list[Path]] = {}
        for f in files:
            owners.setdefault(self.output_paths(f, output_dir)["seg"], []).append(Path(f))
        clashes = []
        for out, sources in owners.items():
            if len({os.path.realpath(s) for s in sources}) > 1:
                clashes.append(f"{out.name} <- {', '.join(str(s) for s in sources)}")
        if clashes:
            raise InferenceError(
                f"inputs with the same name would overwrite each other's outputs in {output_dir}: "
                f"{'; '.join(clashes)}. Segment them into different output folders (-o)."
            )

    @staticmethod
    def summary(result: dict[str, Any]) -> str:
        """One line per tomogram: time, size, where the labels went and the fraction of each class."""
        if result.get("skipped"):
            return f"{result['input']}: output exists, skipped"
        z, y, x = result["shape"]
        fractions = ", ".join(f"{k} {v:.2%}" for k, v in result["class_fractions"].items())
        skipped = result.get("skipped_planes", 0)
        z0, z1 = result.get("sample_extent", (0, z))
        extent = f", sample in planes {z0}-{z1 - 1}" if skipped else ""
        return (
            f"{Path(result['input']).name}: {z}x{y}x{x} in {result['seconds']:.1f} s "
            f"({z / max(result['seconds'], 1e-9):.2f} slices/s{extent}) -> {result['seg']} | {fractions}"
        )
