"""Dataset preparation for the training bundle.

``prepare_datalist`` is what ``configs/train.json`` calls: it returns the user's decathlon-style
datalist when it exists, and otherwise generates the embedded synthetic dataset once into a cache
folder (keyed by the generation parameters) and returns that datalist, saying so in the log.
``write_datalist`` builds a datalist for a folder of user tomograms, split *by tomogram*.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch.distributed as dist

from cryoet_monai.data.datalist import load_datalist, split_counts
from cryoet_monai.distributed import is_distributed, is_rank0
from cryoet_monai.io.atomic import write_json_atomic
from cryoet_monai.io.mrc import is_mrc_path, mrc_stem

__all__ = ["DatalistError", "prepare_datalist", "write_datalist", "synthetic_cache_dir"]

logger = logging.getLogger(__name__)


class DatalistError(ValueError):
    """A datalist or dataset folder that cannot be used for training (message names the file)."""


def synthetic_cache_dir(root: str | os.PathLike, **params: Any) -> Path:
    """``<root>/synthetic-<hash>``: one folder per set of generation parameters, so changing the
    shape or the number of tomograms never silently reuses a stale dataset."""
    key = json.dumps(params, sort_keys=True, default=str)
    return Path(root) / f"synthetic-{hashlib.sha1(key.encode()).hexdigest()[:10]}"


def _check_datalist(path: Path) -> None:
    """A non-empty 'training' list and an optional 'validation' list of ``{"image", "label"}`` entries."""
    load_datalist(path, "training", error=DatalistError)
    load_datalist(path, "validation", required=False, error=DatalistError)


def _generate(
    out_dir: Path, n: int, shape: Sequence[int], voxel_size: float, seed: int, **options: Any
) -> Path:
    from cryoet_monai.data.synthetic import write_synthetic_dataset

    # write_synthetic_dataset reuses the folder only while its recorded parameters and generator
    # version match, and logs when it generates
    logger.info("no datalist given: using the embedded synthetic dataset in %s", out_dir)
    return Path(
        write_synthetic_dataset(out_dir, n=n, shape=tuple(shape), voxel_size=voxel_size, seed=seed, **options)
    )


def prepare_datalist(
    data_list_file_path: str | os.PathLike | None,
    synthetic_root: str | os.PathLike,
    n_tomograms: int = 8,
    shape: Sequence[int] = (64, 256, 256),
    voxel_size: float = 10.0,
    seed: int = 0,
    **synthetic_options: Any,
) -> str:
    """Path of the datalist to train on.

    Args:
        data_list_file_path: the user's decathlon-style datalist (``{"training": [{"image", "label"}],
            "validation": [...]}``, paths relative to its folder). Used as-is when it exists.
        synthetic_root: cache folder for the embedded synthetic dataset, generated with
            ``write_synthetic_dataset(n=n_tomograms, shape, voxel_size, seed, **synthetic_options)``
            when the datalist is absent; reused on later runs with the same parameters.

    Under ``torch.distributed`` only rank 0 generates; the other ranks wait at a barrier.
    """
    if data_list_file_path and Path(data_list_file_path).is_file():
        path = Path(data_list_file_path)
        _check_datalist(path)
        logger.info("training on datalist %s", path)
        return str(path)
    if data_list_file_path:
        logger.warning("datalist %s not found", data_list_file_path)
    params = dict(
        n=int(n_tomograms), shape=[int(s) for s in shape], voxel_size=float(voxel_size), seed=int(seed)
    )
    out_dir = synthetic_cache_dir(synthetic_root, **params, **synthetic_options)
    distributed = is_distributed()
    if not is_rank0():
        dist.barrier()  # wait for rank 0 to write the dataset
        path = out_dir / "datalist.json"
    else:
        path = _generate(
            out_dir, params["n"], params["shape"], params["voxel_size"], params["seed"], **synthetic_options
        )
        if distributed:
            dist.barrier()
    _check_datalist(path)
    return str(path)


def write_datalist(
    dataset_dir: str | os.PathLike,
    output_file: str | os.PathLike | None = None,
    val_fraction: float = 0.2,
    test_fraction: float = 0.0,
    seed: int = 0,
    image_folder: str = "images",
    label_folder: str = "labels",
) -> Path:
    """Write a decathlon-style datalist for ``<dataset_dir>/images/*.mrc`` + ``<dataset_dir>/labels/*.mrc``
    (paired by file name), split *by tomogram* into training / validation / test.

    The counts follow :func:`cryoet_monai.data.datalist.split_counts`, as for the synthetic dataset:
    at least one tomogram goes to training and, when there are two or more, at least one to
    validation, so neighbouring slices of one tomogram never end up on both sides of the split.
    Returns the datalist path (default ``<dataset_dir>/datalist.json``).
    """
    root = Path(dataset_dir)
    images = sorted(p for p in (root / image_folder).glob("*") if p.is_file() and is_mrc_path(p))
    if not images:
        raise DatalistError(f"{root / image_folder}: no MRC tomograms found")
    labels = {mrc_stem(p): p for p in (root / label_folder).glob("*") if p.is_file() and is_mrc_path(p)}
    pairs = []
    for img in images:
        lab = labels.get(mrc_stem(img))
        if lab is None:
            raise DatalistError(f"{img}: no label volume with the same name in {root / label_folder}")
        pairs.append({"image": str(img.relative_to(root)), "label": str(lab.relative_to(root))})
    random.Random(seed).shuffle(pairs)
    n_train, n_val, n_test = split_counts(len(pairs), val_fraction, test_fraction)
    content = {
        "test": pairs[:n_test],
        "validation": pairs[n_test : n_test + n_val],
        "training": pairs[n_test + n_val :],
    }
    out = Path(output_file) if output_file is not None else root / "datalist.json"
    write_json_atomic(out, content)
    logger.info(
        "wrote %s: %d training, %d validation, %d test tomograms", out, n_train, n_val, n_test
    )
    return out
