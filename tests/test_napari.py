"""napari plugin: the manifest (reader + widget) and the widget's segmentation, headless.

:func:`cryoet_monai.napari.widget.segment_layer` is a plain function, tested here without napari
(a stand-in layer object); only the magicgui form itself needs napari + Qt and is skipped without them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from cryoet_monai import CLASS_NAMES

MANIFEST = Path(__file__).resolve().parents[1] / "cryoet_monai" / "napari" / "napari.yaml"


@pytest.fixture(scope="module")
def tomogram() -> np.ndarray:
    from cryoet_monai.data.synthetic import generate_tomogram

    return generate_tomogram((8, 48, 48), 10.0, 0, mode="fourier")[0]


def _layer(data: np.ndarray, scale=(10.0, 10.0, 10.0), translate=(0.0, 0.0, 0.0), name="tomo"):
    """What segment_layer reads of a ``napari.layers.Image``."""
    return SimpleNamespace(
        data=data,
        scale=np.asarray(scale),
        translate=np.asarray(translate),
        name=name,
        rgb=False,
        multiscale=False,
    )


def test_manifest_validates_with_reader_and_widget():
    npe2 = pytest.importorskip("npe2")
    # the command line check, with imports: every python_name must resolve
    run = subprocess.run(
        [sys.executable, "-m", "npe2", "validate", "--imports", str(MANIFEST)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0 and "valid" in run.stdout, run.stdout + run.stderr
    manifest = npe2.PluginManifest.from_file(MANIFEST)
    manifest.validate_imports()
    commands = {c.id: c.python_name for c in manifest.contributions.commands}
    (widget,) = manifest.contributions.widgets
    assert widget.display_name == "Segment tomogram"
    assert commands[widget.command] == "cryoet_monai.napari.widget:segment_widget"
    (reader,) = manifest.contributions.readers
    assert commands[reader.command] == "cryoet_monai.napari:get_reader"


def test_segment_layer_gives_a_labels_layer(tiny_bundle: Path, tomogram: np.ndarray, single_thread):
    from cryoet_monai.napari.widget import segment_layer

    data, meta, kind = segment_layer(_layer(tomogram, translate=(0.0, 50.0, -20.0)), tiny_bundle, invert="no")
    assert kind == "labels" and data.shape == tomogram.shape and data.dtype == np.uint8
    assert data.max() < len(CLASS_NAMES)
    assert meta["name"] == "tomo_seg"
    assert meta["scale"] == (10.0, 10.0, 10.0) and meta["translate"] == (0.0, 50.0, -20.0)
    assert (
        meta["features"]["class"] == list(CLASS_NAMES) and meta["metadata"]["class_names"][1] == "microtubule"
    )
    assert meta["colormap"][0][3] == 0.0 and meta["colormap"][2][3] == 1.0  # background transparent
    assert meta["metadata"]["voxel_size"] == (10.0, 10.0, 10.0)
    summary = meta["metadata"]["summary"]
    assert summary["shape"] == tomogram.shape and not summary["inverted"]
    assert abs(sum(summary["class_fractions"].values()) - 1.0) < 1e-6
    assert meta["metadata"]["model"] == str(tiny_bundle / "models" / "model.pt")
    # the same labels as the engine gives for the same volume
    from cryoet_monai.napari.widget import SegmenterCache

    expected, _ = SegmenterCache().get(tiny_bundle, "no").segment_array(tomogram, 10.0, name="again")
    np.testing.assert_array_equal(data, expected)


def test_segment_layer_voxel_size_field_overrides_an_unset_scale(tiny_bundle: Path, tomogram, single_thread):
    from cryoet_monai.napari.widget import segment_layer

    unset = _layer(tomogram, scale=(1.0, 1.0, 1.0), name="no scale")
    with pytest.raises(ValueError, match="no scale: the layer has no voxel size"):
        segment_layer(unset, tiny_bundle)
    data, meta, _ = segment_layer(unset, tiny_bundle, voxel_size=10.0, invert="no")
    assert data.shape == tomogram.shape
    # the labels stay on the image's grid; the voxel size used is recorded
    assert meta["scale"] == (1.0, 1.0, 1.0) and meta["metadata"]["voxel_size"] == (10.0, 10.0, 10.0)


def test_segment_layer_errors_are_one_line_naming_the_layer(tiny_bundle: Path, tomogram, tmp_path: Path):
    from cryoet_monai.inference.engine import InferenceError, VoxelSizeError
    from cryoet_monai.napari.widget import segment_layer

    with pytest.raises(ValueError, match="no image layer selected"):
        segment_layer(None, tiny_bundle)
    with pytest.raises(ValueError, match=r"slice: the layer is 2-D with shape \(48, 48\)"):
        segment_layer(_layer(tomogram[0], scale=(10.0, 10.0), name="slice"), tiny_bundle)
    outside = r"voxel size 500 Å \(the voxel size field\) is outside the plausible 0.5-100 Å; enter"
    with pytest.raises(VoxelSizeError, match=f"far: {outside}"):
        segment_layer(_layer(tomogram, name="far"), tiny_bundle, voxel_size=500.0)
    with pytest.raises(VoxelSizeError, match=r"nm: voxel size 0.136 Å \(the layer's scale\) is outside"):
        segment_layer(_layer(tomogram, scale=(0.136,) * 3, name="nm"), tiny_bundle)
    with pytest.raises(
        VoxelSizeError, match=r"neg: voxel size -10 Å \(the voxel size field\) is not positive"
    ):
        segment_layer(_layer(tomogram, name="neg"), tiny_bundle, voxel_size=-10.0)
    with pytest.raises(InferenceError, match="flat: the volume is flat"):
        segment_layer(_layer(np.zeros((8, 48, 48), np.float32), name="flat"), tiny_bundle, invert="no")
    with pytest.raises(ValueError, match="invert must be one of auto, yes, no"):
        segment_layer(_layer(tomogram), tiny_bundle, invert="maybe")
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        segment_layer(_layer(tomogram), tmp_path / "missing")
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(InferenceError, match=r"^model .*broken\.pt: ") as info:
        segment_layer(_layer(tomogram), broken)
    assert "\n" not in str(info.value)


def test_resolve_model_means_what_model_means_on_the_command_line(tiny_bundle: Path, tmp_path: Path):
    from cryoet_monai.napari.widget import resolve_model

    assert (
        resolve_model(None) == (None, {})
        and resolve_model("") == (None, {})
        and resolve_model(Path("")) == (None, {})
    )
    assert resolve_model(tiny_bundle) == (tiny_bundle, {})  # a model folder: its configs and weights
    config = tiny_bundle / "configs" / "inference.json"
    assert resolve_model(config) == (config, {})
    weights = tiny_bundle / "models" / "model.pt"  # picked in the file dialog: its folder
    assert resolve_model(weights) == (tiny_bundle, {"model_path": str(weights)})
    loose = tmp_path / "ckpt.pt"
    loose.write_bytes(weights.read_bytes())
    assert resolve_model(loose) == (None, {"model_path": str(loose)})  # for the shipped network
    json.loads(config.read_text())  # untouched


def test_package_and_widget_module_import_without_napari():
    code = (
        "import sys, cryoet_monai.napari, cryoet_monai.napari.widget as w; "
        "assert callable(w.segment_widget); "
        "bad = [m for m in ('napari', 'magicgui', 'qtpy', 'torch') if m in sys.modules]; "
        "assert not bad, bad"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr


def test_widget_form_adds_the_labels_layer(tiny_bundle: Path, tomogram, monkeypatch, single_thread):
    """The magicgui form (napari + Qt, offscreen, no OpenGL needed: a viewer model, no canvas) segments
    in a worker thread and adds the labels layer to the viewer."""
    import time

    pytest.importorskip("magicgui")
    pytest.importorskip("qtpy")
    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")
    napari = pytest.importorskip("napari")
    from napari.components import ViewerModel
    from qtpy.QtWidgets import QApplication

    from cryoet_monai.napari.widget import segment_widget

    app = QApplication.instance() or QApplication([])
    viewer = ViewerModel()
    image = viewer.add_image(tomogram, scale=(10.0, 10.0, 10.0), name="tomo")
    gui = segment_widget()
    assert [w.name for w in gui if w.name != "viewer"] == [
        "image",
        "model",
        "voxel_size",
        "invert",
        "call_button",
    ]
    assert gui.invert.choices == ("auto", "yes", "no") and gui.invert.value == "auto"
    assert gui.model.value is None and gui.voxel_size.value == 0.0  # empty: the shipped model, layer scale
    worker = gui(viewer=viewer, image=image, model=tiny_bundle, voxel_size=0.0, invert="no")
    deadline = time.monotonic() + 120
    while (worker.is_running or "tomo_seg" not in viewer.layers) and time.monotonic() < deadline:
        app.processEvents()
        time.sleep(0.01)
    labels = viewer.layers["tomo_seg"]
    assert isinstance(labels, napari.layers.Labels)
    assert labels.data.shape == tomogram.shape and labels.data.dtype == np.uint8
    assert tuple(labels.scale) == (10.0, 10.0, 10.0)
    assert list(labels.features["class"]) == list(CLASS_NAMES)
    assert labels.colormap.map(np.array([0]))[0][3] == 0.0  # background transparent
    assert gui.call_button.enabled  # enabled again when the worker finished
    # an error in the worker: one notification naming the layer, the button back, no layer added
    from napari.utils.notifications import notification_manager

    flat = viewer.add_image(np.zeros((8, 48, 48), np.float32), scale=(10.0, 10.0, 10.0), name="flat")
    worker = gui(viewer=viewer, image=flat, model=tiny_bundle, voxel_size=0.0, invert="no")
    deadline = time.monotonic() + 120
    while (worker.is_running or not gui.call_button.enabled) and time.monotonic() < deadline:
        app.processEvents()
        time.sleep(0.01)
    app.processEvents()
    last = notification_manager.records[-1]
    assert last.severity == "error" and last.message.startswith("flat: the volume is flat")
    assert gui.call_button.enabled and "flat_seg" not in viewer.layers
    with pytest.raises(ValueError, match="plain: the layer has no voxel size"):  # checked before the thread
        gui(viewer=viewer, image=viewer.add_image(tomogram, name="plain"), model=tiny_bundle)
