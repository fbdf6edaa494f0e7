"""Decathlon-style datalists: reading one split, and splitting tomograms into training / validation / test.

:func:`load_datalist` is how the package reads a split of a datalist: it checks the file first, so that
a bad one fails with one line naming it, then returns MONAI's :func:`monai.data.load_decathlon_datalist`
(paths relative to the datalist's folder). :func:`split_counts` is the one rule for how many whole
tomograms go to each split (the synthetic dataset and :func:`cryoet_monai.engines.write_datalist`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["load_datalist", "read_datalist_json", "split_counts"]


def read_datalist_json(path: str | os.PathLike, error: type[Exception] = ValueError) -> Any:
    """The parsed JSON of the datalist ``path``; ``error("<path>: cannot read the datalist (...).")``
    when it is missing, unreadable or not JSON."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:  # ValueError: bad JSON or bad UTF-8
        raise error(f"{path}: cannot read the datalist ({err}).") from err


def load_datalist(
    path: str | os.PathLike,
    key: str = "training",
    fields: Sequence[str] = ("image", "label"),
    required: bool = True,
    error: type[Exception] = ValueError,
) -> list[dict[str, Any]]:
    """The ``key`` entries of a decathlon-style datalist, paths resolved against its folder.

    Args:
        path: the datalist ``.json``.
        key: the split, e.g. ``"training"``, ``"validation"`` or ``"test"``.
        fields: keys every entry must have.
        required: the split must exist and be non-empty; otherwise a missing or empty one gives ``[]``.
        error: exception type raised, with a one-line message naming the file, for an unreadable
            datalist, a missing or empty required split, or an entry that lacks a field.
    """
    path = Path(path)
    content = read_datalist_json(path, error)
    items = content.get(key) if isinstance(content, Mapping) else None
    if not required and not items:
        return []
    if not isinstance(items, list) or not items:
        raise error(f"{path}: datalist has no non-empty {key!r} list.")
    for item in items:
        if not isinstance(item, Mapping) or any(f not in item for f in fields):
            needs = " and ".join(repr(f) for f in fields)
            raise error(f"{path}: every {key!r} entry needs {needs}, got {item!r}.")
    from monai.data import load_decathlon_datalist  # lazy: MONAI is only needed once the file is good

    return load_decathlon_datalist(path, is_segmentation=True, data_list_key=key)


def split_counts(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int, int]:
    """``(n_train, n_val, n_test)`` whole tomograms out of ``n``: the fractions rounded, at least one
    training tomogram, and at least one validation tomogram when ``n >= 2`` (so that neighbouring
    slices of one tomogram never end up on both sides of a split)."""
    n_test = int(round(n * test_fraction))
    n_val = int(round(n * val_fraction))
    if n >= 2:
        n_val = max(n_val, 1)
    if n - n_val - n_test < 1:
        n_test = max(0, n - n_val - 1)
        n_val = min(n_val, n - n_test - 1)
    return n - n_val - n_test, n_val, n_test
