"""Label sinks: the output writer is a part the config chooses; in-memory segmentation matches files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cryoet_monai import PaperUNet
from cryoet_monai.data.synthetic import generate_tomogram
from cryoet_monai.inference import ArrayLabelSink, InferenceError, MRCLabelSink, TomogramSegmenter, label_sink
from cryoet_monai.io.mrc import read_mrc, save_mrc
from tests.conftest import FEATURES, SHIPPED_IN_CHANNELS


def _segmenter(**kwargs) -> TomogramSegmenter:
    torch.manual_seed(0)
    net = PaperUNet(2, SHIPPED_IN_CHANNELS, 6, features=FEATURES)
    return TomogramSegmenter(net, model_voxel_size=10.0, progress=False, invert="no", **kwargs)


def test_config_swaps_the_label_sink(tmp_path: Path, tiny_bundle: Path, repo_root: Path) -> None:
    """inference.json with ``label_sink`` overridden writes the other format: no code change."""
    pytest.importorskip("ome_zarr")
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    src = tmp_path / "in" / "t1.mrc"
    src.parent.mkdir()
    save_mrc(src, generate_tomogram((6, 32, 48), 10.0, 3, mode="fourier")[0], voxel_size=10.0)
    out = tmp_path / "out"
    cmd = [
        sys.executable, "-m", "monai.bundle", "run", "--config_file",
        str(tiny_bundle / "configs" / "inference.json"), "--bundle_root", str(tiny_bundle),
        "--input", str(src), "--output_dir", str(out), "--progress", "false",
        "--label_sink", "$cryoet_monai.inference.OmeZarrLabelSink(chunks=[4, 16, 16])",
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(repo_root))
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=repo_root, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [p.name for p in out.iterdir()] == ["t1_seg.zarr"]  # the config still says output_format mrc
    nodes = list(Reader(parse_url(str(out / "t1_seg.zarr" / "labels" / "segmentation")))())
    labels = np.asarray(nodes[0].data[0])
    assert labels.shape == (6, 32, 48) and labels.dtype == np.uint8
    # the same weights through the default (MRC) sink give the same labels
    config = json.loads((tiny_bundle / "configs" / "inference.json").read_text())
    assert config["output_format"] == "mrc"
    seg = _segmenter(model_path=tiny_bundle / "models" / "model.pt", double_membrane_max_gap=500.0)
    (ref,) = seg(src, tmp_path / "ref")
    assert np.array_equal(np.asarray(read_mrc(ref["seg"])[0]), labels)
    # and the zarr chunks are the ones the overriding config asked for
    assert nodes[0].data[0].chunksize == (4, 16, 16)


def test_segment_array_equals_segmenting_the_file(tmp_path: Path) -> None:
    volume = generate_tomogram((7, 40, 40), 10.0, 5, mode="fourier")[0]
    path = tmp_path / "t.mrc"
    save_mrc(path, volume, voxel_size=10.0)
    seg = _segmenter()
    (from_file,) = seg(path, tmp_path / "out")
    labels, result = seg.segment_array(volume, 10.0, name="layer")
    assert labels.shape == volume.shape and labels.dtype == np.uint8
    assert np.array_equal(labels, np.asarray(read_mrc(from_file["seg"])[0]))
    assert result["class_fractions"] == pytest.approx(from_file["class_fractions"])
    assert not (tmp_path / "layer_seg.mrc").exists()  # nothing on disk
    # the same input checks as for files: an unset voxel size is refused, naming the layer
    with pytest.raises(InferenceError, match="layer"):
        seg.segment_array(volume, 1.0, name="layer")


def test_array_sink_keeps_only_complete_volumes() -> None:
    sink = ArrayLabelSink()
    with pytest.raises(RuntimeError), sink.create("a", (2, 3, 4), (10.0,) * 3, (0.0,) * 3) as labels:
        labels[0] = 1
        raise RuntimeError("killed half way")
    assert not sink.exists("a")
    with sink.create("b", (2, 3, 4), (10.0,) * 3, (0.0,) * 3) as labels:
        labels[1] = 2
    assert sink.exists("b") and int(sink.read("b").sum()) == 2 * 12


def test_label_sink_by_format_name(tmp_path: Path) -> None:
    assert isinstance(label_sink("mrc"), MRCLabelSink)
    assert label_sink("zarr").output_path(tmp_path / "t") == tmp_path / "t_seg.zarr"
    with pytest.raises(ValueError, match="output_format"):
        label_sink("tiff")
