"""cryoet_monai.io.atomic: the one temporary-file-and-rename of the package."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cryoet_monai.io.atomic import atomic_path, temporary_path, write_json_atomic, write_text_atomic
from cryoet_monai.io.mrc import remove_stale_temporaries


def test_atomic_path_renames_on_success_and_cleans_up_on_error(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".out.json.") and tmp.suffix == ".tmp"
        tmp.write_text("new")
        assert not target.exists()  # nothing under the final name before the block ends
    assert target.read_text() == "new"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("writer failed")
    assert target.read_text() == "new" and sorted(tmp_path.iterdir()) == [target]


def test_json_and_text_writers(tmp_path: Path) -> None:
    assert write_json_atomic(tmp_path / "a.json", {"x": (1, 2)}, indent=1) == tmp_path / "a.json"
    assert (tmp_path / "a.json").read_text() == json.dumps({"x": [1, 2]}, indent=1) + "\n"
    write_json_atomic(tmp_path / "b.json", {"p": tmp_path}, default=str)
    assert json.loads((tmp_path / "b.json").read_text()) == {"p": str(tmp_path)}
    write_text_atomic(tmp_path / "t.md", "τ\n")
    assert (tmp_path / "t.md").read_text(encoding="utf-8") == "τ\n"


def test_temporaries_are_those_the_stale_cleanup_knows(tmp_path: Path) -> None:
    tmp = temporary_path(tmp_path / "x_summary.json")
    assert f".{os.getpid()}-" in tmp.name and tmp != temporary_path(tmp_path / "x_summary.json")
    dead = tmp.with_name(tmp.name.replace(f".{os.getpid()}-", ".999999999-"))  # no such process
    dead.write_text("left by a killed writer")
    tmp.write_text("ours, still being written")
    assert remove_stale_temporaries(tmp_path, min_age_s=0) == [dead]
    assert tmp.exists()
