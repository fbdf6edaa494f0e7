"""Fine-tune a model on a user's tomogram from a few painted slices (CPU, minutes).

Painting convention (what a napari Labels layer saved as-is gives):

======  =====================================================
value   meaning
======  =====================================================
0       not painted (ignored: napari's "no label")
1 - 5   that class (microtubule ... carbon edge, as in the output)
6       background, painted ("this is nothing")
255     not painted (our ignore label), accepted too
======  =====================================================

:func:`finetune` checks every painted volume against its tomogram (same grid, values from the
table, something painted) before anything is trained or written, then starts from a model folder
(the shipped bundle by default), samples class-balanced crops centred on painted voxels (the
unpainted neighbourhood is input context, its labels are ignored), keeps some painted slices back
for validation, trains with MONAI's ``SupervisedTrainer`` until the validation F1 stops improving
or the time budget is spent, and writes a new self-describing model folder (a bundle:
``configs/inference.json``, ``configs/metadata.json``, ``models/model.pt``) that
``cryoet-monai segment --model FOLDER`` uses as it is. The source model is never modified.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cryoet_monai import CLASS_NAMES, IGNORE_LABEL

__all__ = [
    "PAINTED_BACKGROUND",
    "FinetuneError",
    "FrozenBatchNorm",
    "painted_to_labels",
    "read_painted",
    "finetune",
]

logger = logging.getLogger(__name__)

#: the painted value that means "background" (0 is "not painted", as in napari)
PAINTED_BACKGROUND = len(CLASS_NAMES)


class FinetuneError(ValueError):
    """A painted file or option that cannot be used; the message names the file and the problem."""


def read_painted(path: str | os.PathLike) -> np.ndarray:
    """A painted label volume ``(Z, Y, X)`` from MRC (any mode), TIFF or OME-Zarr (the zarr extra)."""
    path = Path(path)
    if not path.exists():
        raise FinetuneError(f"{path}: painted label file not found")
    suffix = "".join(path.suffixes[-2:]).lower()
    if path.suffix.lower() in (".tif", ".tiff"):
        try:
            import tifffile
        except ImportError as err:
            raise FinetuneError(f"{path}: reading TIFF needs tifffile (pip install tifffile)") from err
        data = np.asarray(tifffile.imread(path))
    elif path.is_dir() or suffix.endswith(".zarr"):
        from cryoet_monai.io.omezarr import OmeZarrFormatError, read_ome_zarr

        try:
            volume, _ = read_ome_zarr(path)  # the finest level: the tomogram's own grid
        except OmeZarrFormatError as err:
            raise FinetuneError(str(err)) from err
        data = np.asarray(volume)
    else:
        from cryoet_monai.io.mrc import read_mrc

        data, _ = read_mrc(path, mmap=False)
    return np.asarray(data)


def painted_to_labels(painted: np.ndarray, name: str = "painted labels") -> np.ndarray:
    """Painted values (table in the module docstring) -> training labels: classes 0-5, 255 ignored.

    Raises :class:`FinetuneError` for values outside the table or when nothing is painted.
    """
    values = np.unique(painted)
    allowed = set(range(PAINTED_BACKGROUND + 1)) | {IGNORE_LABEL}
    bad = [v for v in values.tolist() if v not in allowed]
    if bad:
        shown = ", ".join(str(v) for v in bad[:5])
        raise FinetuneError(
            f"{name}: painted values {shown} are not classes; paint 1-{PAINTED_BACKGROUND - 1} for the "
            f"classes ({', '.join(CLASS_NAMES[1:])}), {PAINTED_BACKGROUND} for background, 0 for not painted"
        )
    labels = np.full(painted.shape, IGNORE_LABEL, np.uint8)
    for c in range(1, PAINTED_BACKGROUND):
        labels[painted == c] = c
    labels[painted == PAINTED_BACKGROUND] = 0
    if not (labels != IGNORE_LABEL).any():
        raise FinetuneError(f"{name}: nothing is painted (every voxel is 0 or 255)")
    return labels


def _split_validation(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
    """``(train_labels, val_labels, rule)``: painted slices held back (1 in 4, when >= 4 are painted),
    else the last fifth (along x) of the painted area of every slice."""
    painted_z = np.flatnonzero((labels != IGNORE_LABEL).any(axis=(1, 2)))
    train, val = labels.copy(), np.full_like(labels, IGNORE_LABEL)
    if len(painted_z) >= 4:
        held = painted_z[1::4]
        val[held], train[held] = labels[held], IGNORE_LABEL
        return train, val, f"slices {held.tolist()} held back"
    for z in painted_z:
        xs = np.flatnonzero((labels[z] != IGNORE_LABEL).any(axis=0))
        cut = xs[0] + int(0.8 * (xs[-1] - xs[0] + 1))
        val[z, :, cut:], train[z, :, cut:] = labels[z, :, cut:], IGNORE_LABEL
    return train, val, "the last fifth (x) of each painted slice held back"


def _load_bundle(model: str | os.PathLike | None) -> tuple[Any, Path, Path]:
    """``(parser, inference config file, bundle root)`` of a model folder (default: the shipped one)."""
    from cryoet_monai.inference.cli import build_segmenter, find_bundle_config

    try:
        file, root = find_bundle_config(model)
    except FileNotFoundError as err:
        raise FinetuneError(f"{model}: not a model folder ({err})") from err
    return build_segmenter(model), file, root


def finetune(
    tomograms: Sequence[str | os.PathLike],
    painted: Sequence[str | os.PathLike],
    output_dir: str | os.PathLike,
    model: str | os.PathLike | None = None,
    minutes: float = 8.0,
    voxel_size: float | None = None,
    invert: str | bool = "auto",
    patch_size: int = 128,
    batch_size: int = 8,
    learning_rate: float = 3e-4,
    epoch_length: int = 25,
    patience: int = 6,
    max_epochs: int = 1000,
    adapt_norms: bool = True,
    overwrite: bool = False,
    progress: bool = True,
    seed: int = 0,
) -> Path:
    """Fine-tune ``model`` (a model folder; default the shipped one) on painted slices.

    Args:
        tomograms: MRC tomograms ``(Z, Y, X)``.
        painted: one painted label volume per tomogram, same grid (MRC or TIFF); see the module
            docstring for the values.
        output_dir: the new model folder (must not exist unless ``overwrite``).
        minutes: wall-time budget of the training loop.
        voxel_size: voxel size (Å) of every tomogram if its header is wrong or unset.
        invert: contrast polarity, as for ``segment`` (``"auto"`` asks the source model).
        patience: epochs (of ``epoch_length`` iterations) without a better validation F1 before stopping.
        adapt_norms: first re-estimate the batch-norm statistics on the tomograms
            (:func:`adapt_batch_norm`), kept when that alone scores better on the held-back voxels.

    Returns:
        the model folder. Nothing is written when a check fails (:class:`FinetuneError`).
    """
    from ignite.engine import Events
    from ignite.handlers import TimeLimit
    from monai.data import DataLoader, Dataset
    from monai.engines import SupervisedEvaluator, SupervisedTrainer
    from monai.handlers import EarlyStopHandler, IgniteMetricHandler, ValidationHandler
    from monai.inferers import SimpleInferer, SliceInferer
    from monai.transforms import (
        ClassesToIndicesd,
        Compose,
        RandCropByLabelClassesd,
        RandFlipd,
        RandGaussianNoised,
        RandRotate90d,
        RandScaleIntensityd,
        RandShiftIntensityd,
        SpatialPadd,
        SqueezeDimd,
    )

    from cryoet_monai.engines.inferers import AutocastInferer
    from cryoet_monai.inference.engine import InferenceError
    from cryoet_monai.io.mrc import read_mrc
    from cryoet_monai.losses import MaskedDiceCELoss
    from cryoet_monai.metrics import SegmentationConfusionMetric
    from cryoet_monai.model_folder import write_model_configs
    from cryoet_monai.precision import resolve_autocast_dtype
    from cryoet_monai.transforms.sampling import SlicesToChannelsd, StackSlices

    if len(tomograms) != len(painted) or not tomograms:
        raise FinetuneError(
            f"finetune: {len(tomograms)} tomogram(s) but {len(painted)} painted file(s); "
            "give one per tomogram"
        )
    out = Path(output_dir)
    if out.exists() and not overwrite and (not out.is_dir() or any(out.iterdir())):
        raise FinetuneError(f"{out}: exists and is not empty (choose another folder, or overwrite)")
    if not minutes > 0:
        raise FinetuneError(f"finetune: minutes must be > 0, got {minutes}")

    # ---- the source model, as segment would build it
    parser, config_file, root = _load_bundle(model)
    if voxel_size is not None:
        parser["voxel_size"] = float(voxel_size)
    parser["invert"] = invert
    parser["progress"] = False
    try:
        segmenter = parser.get_parsed_content("segmenter")
    except (RuntimeError, ValueError, OSError) as err:
        raise FinetuneError(f"{config_file}: cannot build the source model ({err})") from err
    network = parser.get_parsed_content("network_def")  # unfused copy with the trained weights
    segmenter.load_weights(network, Path(parser.get_parsed_content("model_path")))
    context, spatial_dims = segmenter.context, segmenter.spatial_dims
    if spatial_dims != 2:
        raise FinetuneError(f"{config_file}: fine-tuning supports 2-D and 2.5-D models, this one is 3-D")

    # ---- every check before any training or writing
    items = []
    for tomo, paint in zip(tomograms, painted):
        tomo, paint = Path(tomo), Path(paint)
        volume, meta = read_mrc(tomo, mmap=False)
        try:
            vs = segmenter.check_input(volume, meta, tomo)
        except InferenceError as err:
            raise FinetuneError(str(err)) from err
        drawn = read_painted(paint)
        if drawn.shape != volume.shape:
            raise FinetuneError(
                f"{paint}: painted grid {tuple(drawn.shape)} does not match "
                f"{tomo.name} {tuple(volume.shape)}"
            )
        labels = painted_to_labels(drawn, str(paint))
        if segmenter.zoom_factors(vs) != (1.0, 1.0, 1.0):
            raise FinetuneError(
                f"{tomo}: voxel size {vs[0]:.4g} Å differs from the model's "
                f"{segmenter.model_voxel_size:.4g} Å; bin or resample the tomogram and its painting to the "
                "model's voxel size first"
            )
        norm = segmenter.normalizer.fit(volume, name=str(tomo))
        image = norm(np.asarray(volume, np.float32), name=str(tomo))
        inverted = segmenter.invert if segmenter.invert is not None else segmenter.polarity(
            volume, norm, vs, tomo).inverted
        if inverted:
            image = -image
        train_lab, val_lab, rule = _split_validation(labels)
        painted_mask = labels != IGNORE_LABEL
        logger.info("%s: %d painted voxels in %d slices; validation: %s", tomo.name,
                    int(painted_mask.sum()), int(painted_mask.any(axis=(1, 2)).sum()), rule)
        items.append({"image": torch.as_tensor(image)[None], "label": torch.as_tensor(train_lab)[None],
                      "val_label": torch.as_tensor(val_lab)[None], "name": tomo.name})

    # ---- data: crops centred on painted voxels, class-balanced over the painted classes
    counts = np.zeros(len(CLASS_NAMES))
    for it in items:
        counts += np.bincount(it["label"].reshape(-1).numpy(), minlength=256)[: len(CLASS_NAMES)]
    ratios = (counts > 0).astype(float).tolist()
    weights = np.where(counts > 0, 1.0 / np.sqrt(np.maximum(counts, 1) / max(counts.sum(), 1)), 0.0)
    weights = (weights / weights[counts > 0].mean()).tolist()
    crop = [context, patch_size, patch_size]
    train_tf = Compose([
        # small tomograms: pad to one crop (image with its mean, labels with "not painted")
        SpatialPadd("image", spatial_size=crop, value=0.0),
        SpatialPadd("label", spatial_size=crop, value=IGNORE_LABEL),
        ClassesToIndicesd("label", num_classes=len(CLASS_NAMES), max_samples_per_class=200_000),
        RandCropByLabelClassesd(["image", "label"], "label", crop, ratios=ratios,
                                num_classes=len(CLASS_NAMES), num_samples=batch_size,
                                indices_key="label_cls_indices", warn=False),
        SlicesToChannelsd("image", label_keys="label") if context > 1
        else SqueezeDimd(["image", "label"], dim=1),
        RandFlipd(["image", "label"], prob=0.5, spatial_axis=0),
        RandFlipd(["image", "label"], prob=0.5, spatial_axis=1),
        RandRotate90d(["image", "label"], prob=0.5, max_k=3),
        RandScaleIntensityd("image", factors=0.1, prob=0.5),
        RandShiftIntensityd("image", offsets=0.1, prob=0.5),
        RandGaussianNoised("image", std=0.1, prob=0.2),
    ])
    train_tf.set_random_state(seed)
    # every epoch draws epoch_length batches from the (few) tomograms, round robin
    train_items = [{"image": it["image"], "label": it["label"]} for it in items] * epoch_length
    train_loader = DataLoader(Dataset(train_items, train_tf), batch_size=1, shuffle=True, num_workers=0,
                              collate_fn=_concat_samples)

    stack = StackSlices(context)
    val_items = []
    for it in items:
        zs = np.flatnonzero((it["val_label"][0] != IGNORE_LABEL).any(axis=(1, 2)).numpy())
        if len(zs):  # only the held-back slices, each with its neighbours as channels
            val_items.append({"image": stack(it["image"])[:, zs], "label": it["val_label"][:, zs]})
    val_loader = DataLoader(Dataset(val_items), batch_size=1, num_workers=0)

    device = segmenter.device
    network = FrozenBatchNorm(network.to(device)).train()
    dtype = resolve_autocast_dtype("auto", device)
    train_inferer = AutocastInferer(SimpleInferer(), device_type=device.type, dtype=dtype,
                                    enabled=dtype is not None)
    val_inferer = AutocastInferer(
        SliceInferer(spatial_dim=0, roi_size=(-1, -1), sw_batch_size=4, progress=False),
        device_type=device.type, dtype=dtype, enabled=dtype is not None,
    )
    metric = IgniteMetricHandler(
        SegmentationConfusionMetric(num_classes=len(CLASS_NAMES), ignore_index=IGNORE_LABEL),
        output_transform=lambda o: (o["pred"], o["label"]),
    )
    evaluator = SupervisedEvaluator(device, val_loader, network, inferer=val_inferer,
                                    key_val_metric={"val_f1": metric}, decollate=False)
    optimizer = torch.optim.Adam(network.parameters(), lr=learning_rate)
    trainer = SupervisedTrainer(
        device, max_epochs, train_loader, network, optimizer,
        loss_function=MaskedDiceCELoss(weight=weights, ignore_index=IGNORE_LABEL, batch=True),
        inferer=train_inferer, epoch_length=epoch_length, decollate=False,
        train_handlers=[ValidationHandler(1, evaluator, epoch_level=True)],
    )
    best = {"f1": -1.0, "state": copy.deepcopy(network.network.state_dict()), "epoch": 0}
    t0 = time.perf_counter()

    @evaluator.on(Events.COMPLETED)
    def _keep_best(engine: Any) -> None:
        f1 = float(engine.state.metrics["val_f1"])
        if f1 > best["f1"]:
            best.update(f1=f1, state=copy.deepcopy(network.network.state_dict()), epoch=trainer.state.epoch)

    @trainer.on(Events.EPOCH_COMPLETED)
    def _report(engine: Any) -> None:
        elapsed = time.perf_counter() - t0
        left = max(0.0, minutes * 60 - elapsed)
        msg = (f"epoch {engine.state.epoch}: loss {float(engine.state.output['loss'].detach()):.3f}, "
               f"held-back F1 {evaluator.state.metrics['val_f1']:.3f} (best {best['f1']:.3f}), "
               f"{elapsed / 60:.1f} min, at most {left / 60:.1f} min left")
        if progress:
            print(msg, flush=True)
        else:
            logger.info(msg)

    EarlyStopHandler(patience, lambda engine: float(engine.state.metrics["val_f1"]), trainer=trainer,
                     min_delta=1e-4).attach(evaluator)
    trainer.add_event_handler(Events.ITERATION_COMPLETED, TimeLimit(max(1, round(minutes * 60))))
    # the baseline: the source model's F1 on the held-back voxels (_keep_best records it as epoch 0)
    evaluator.run()
    baseline = best["f1"]
    if adapt_norms:
        # the batch-norm statistics of the user's tomogram instead of the training set's; kept only if
        # they score better on the held-back voxels than the source's
        adapt_batch_norm(network.network, [it["image"] for it in items], context, seed=seed)
        evaluator.run()
        network.network.load_state_dict(best["state"])
        logger.info("batch-norm statistics of the tomograms: held-back F1 %.3f -> %.3f (%s)", baseline,
                    float(evaluator.state.metrics["val_f1"]),
                    "kept" if best["f1"] > baseline else "the source's kept")
    trainer.run()
    # ---- the new model folder: written under a temporary name, renamed when complete
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "configs").mkdir(parents=True)
    (tmp / "models").mkdir()
    torch.save(best["state"], tmp / "models" / "model.pt")
    write_model_configs(
        tmp, parser.get("network_def"), config_file,  # the architecture as resolved, widths included
        changelog=f"fine-tuned from {root} on {', '.join(str(t) for t in tomograms)}: held-back F1 "
        f"{baseline:.3f} -> {best['f1']:.3f} (epoch {best['epoch']}, "
        f"{(time.perf_counter() - t0) / 60:.1f} min)",
        # the source's class gains and size limits were tuned to its calibration, which fine-tuning changes
        keep_postprocessing=False,
        extra_metadata={"finetune": {
            "source": str(root), "tomograms": [str(t) for t in tomograms],
            "painted": [str(p) for p in painted], "held_back_f1_before": baseline,
            "held_back_f1_after": best["f1"], "best_epoch": best["epoch"], "minutes": minutes}},
    )  # fmt: skip
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    logger.info("fine-tuned model written to %s (held-back F1 %.3f -> %.3f)", out, baseline, best["f1"])
    return out


def adapt_batch_norm(
    network: torch.nn.Module,
    images: Sequence[torch.Tensor],
    context: int = 1,
    windows: int = 64,
    size: int = 256,
    batch_size: int = 8,
    seed: int = 0,
) -> None:
    """Re-estimate the running mean and variance of every batch norm of ``network`` from random windows
    of ``images`` (AdaBN: Li et al., 2016), in place; the weights stay as trained.

    A tomogram from another microscope or reconstruction shifts every layer's feature statistics;
    the network's own statistics of the user's tomogram (all of it, painted or not) correct the part
    of the domain gap that is a shift and scale of features, for the cost of a few forward passes.

    Args:
        network: a 2-D network taking ``context`` slices as channels, ``(B, context, Y, X)``.
        images: normalised tomograms ``(1, Z, Y, X)``.
        windows: number of ``(context, size, size)`` windows (fewer when the tomograms are small).
    """
    rng = np.random.default_rng(seed)
    norms = [m for m in network.modules() if isinstance(m, FrozenBatchNorm._NORMS)]
    if not norms:
        return
    crops = []
    for i in range(windows):
        image = images[i % len(images)][0]
        z = int(rng.integers(0, max(1, image.shape[0] - context + 1)))
        y = int(rng.integers(0, max(1, image.shape[1] - size + 1)))
        x = int(rng.integers(0, max(1, image.shape[2] - size + 1)))
        crop = image[z : z + context, y : y + size, x : x + size]
        if crop.shape[0] == context:
            crops.append(crop)
    shapes = {tuple(c.shape) for c in crops}
    if not crops or len(shapes) != 1:  # tomograms smaller than a window: keep the trained statistics
        return
    device = next(network.parameters()).device
    modes = [(m, m.training) for m in network.modules()]  # restored exactly (frozen norms stay frozen)
    momenta = [m.momentum for m in norms]
    network.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over all batches
        m.train()
    with torch.no_grad():
        for b in range(0, len(crops), batch_size):
            network(torch.stack(crops[b : b + batch_size]).to(device))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    for m, mode in modes:
        m.training = mode


def _concat_samples(batch: list[Any]) -> dict[str, torch.Tensor]:
    """One loader item is a list of ``num_samples`` crops of one tomogram: stack them into a batch."""
    samples = batch[0] if isinstance(batch[0], list) else batch
    return {k: torch.stack([torch.as_tensor(s[k]) for s in samples]) for k in ("image", "label")}


class FrozenBatchNorm(torch.nn.Module):
    """``network`` with its batch norms always in eval mode (running statistics as trained on the
    large synthetic set): a few painted slices would otherwise pull them towards one tomogram, and
    a batch of 8 crops is a noisy estimate. Trainers call ``train()`` every iteration, so the rule
    lives in :meth:`train`. ``(B, C, *S) -> (B, C_out, *S)``, as ``network``."""

    _NORMS = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)

    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)

    def train(self, mode: bool = True) -> FrozenBatchNorm:
        super().train(mode)
        for module in self.network.modules():
            if isinstance(module, self._NORMS):
                module.eval()
        return self
