"""cryoet_monai.data.datalist: reading a split through MONAI's loader, and the split-by-tomogram counts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cryoet_monai.data.datalist import load_datalist, split_counts


class _Bad(ValueError):
    pass


def test_load_datalist_resolves_against_its_folder(tmp_path: Path) -> None:
    datalist = tmp_path / "d" / "datalist.json"
    datalist.parent.mkdir()
    entries = [{"image": "images/a.mrc", "label": "labels/a.mrc"}, {"image": "/x/b.mrc", "label": "/x/l.mrc"}]
    datalist.write_text(json.dumps({"training": entries, "validation": []}))
    folder = tmp_path / "d"
    assert load_datalist(datalist) == [
        {"image": str(folder / "images" / "a.mrc"), "label": str(folder / "labels" / "a.mrc")},
        {"image": "/x/b.mrc", "label": "/x/l.mrc"},
    ]
    assert load_datalist(datalist, "validation", required=False) == []
    assert load_datalist(datalist, "test", required=False) == []


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("{not json", "cannot read the datalist"),
        ('{"training": []}', "no non-empty 'training' list"),
        ('[{"image": "a", "label": "b"}]', "no non-empty 'training' list"),
        ('{"training": [{"image": "a"}]}', "every 'training' entry needs 'image' and 'label'"),
        ('{"training": ["a.mrc"]}', "every 'training' entry needs"),
    ],
)
def test_load_datalist_errors_name_the_file(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(_Bad, match=f"bad.json: .*{match}"):
        load_datalist(path, error=_Bad)
    with pytest.raises(_Bad, match="missing.json: cannot read"):
        load_datalist(tmp_path / "missing.json", error=_Bad)


@pytest.mark.parametrize("n", range(1, 12))
@pytest.mark.parametrize(("val", "test"), [(0.0, 0.0), (0.2, 0.1), (0.2, 0.2), (0.5, 0.4), (0.75, 0.0)])
def test_split_counts(n: int, val: float, test: float) -> None:
    n_train, n_val, n_test = split_counts(n, val, test)
    assert n_train + n_val + n_test == n and n_train >= 1 and min(n_val, n_test) >= 0
    assert n_val >= (1 if n >= 2 else 0)
