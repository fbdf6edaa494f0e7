"""napari with a synthetic tomogram segmented by the ``Segment tomogram`` widget: docs/napari.png.

    xvfb-run -a -s "-screen 0 1600x1000x24" python scripts/napari_screenshot.py [-o docs/napari.png]

Needs napari with a Qt binding (``pip install "cryoet-monai[napari]"``) and an OpenGL-capable
display: a desktop, or Xvfb with Mesa (Debian: ``apt-get install xvfb libgl1-mesa-dri``). Qt's
``offscreen`` platform has no OpenGL context, so napari's canvas cannot draw there.

What it does, as a user would: generates a synthetic tomogram (``generate_tomogram``, 10 Å voxels), adds
it as an image layer with its voxel size as the scale, docks the plugin's widget (from the npe2 manifest;
registered from ``cryoet_monai/napari/napari.yaml`` when the package's entry point is not installed),
runs it with the shipped model (``models/model.pt``; 10-30 s on two CPU cores) and saves the
window (canvas, layer list and the widget) at the central slice.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "cryoet_monai" / "napari" / "napari.yaml"


def _plugin_widget(viewer):
    """Dock the plugin's widget the way napari's Plugins menu does."""
    from npe2 import PluginManager, PluginManifest

    pm = PluginManager.instance()
    if "cryoet-monai" not in pm:  # a checkout without the napari.manifest entry point installed
        pm.register(PluginManifest.from_file(MANIFEST))
    dock, gui = viewer.window.add_plugin_dock_widget("cryoet-monai", "Segment tomogram")
    return gui


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("-o", "--output", type=Path, default=ROOT / "docs" / "napari.png")
    p.add_argument("--shape", type=int, nargs=3, default=[48, 256, 256], metavar=("Z", "Y", "X"))
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--model", type=Path, help="model for the widget's field (default: the shipped one)")
    p.add_argument("--size", type=int, nargs=2, default=[1280, 800], metavar=("W", "H"), help="window size")
    args = p.parse_args()

    import napari
    from qtpy.QtWidgets import QApplication

    from cryoet_monai.data.synthetic import generate_tomogram

    t0 = time.perf_counter()
    image, _ = generate_tomogram(tuple(args.shape), 10.0, args.seed)
    print(f"synthetic tomogram {tuple(image.shape)} in {time.perf_counter() - t0:.1f} s", flush=True)

    viewer = napari.Viewer(title="cryoet-monai")
    viewer.window.resize(*args.size)
    layer = viewer.add_image(image, name="synthetic_tomo", scale=(10.0, 10.0, 10.0))
    gui = _plugin_widget(viewer)
    gui.image.value = layer
    gui.model.value = args.model

    t0 = time.perf_counter()
    worker = gui()  # what the "Segment" button does
    app = QApplication.instance()
    while worker.is_running or "synthetic_tomo_seg" not in viewer.layers:
        app.processEvents()
        time.sleep(0.02)
        if time.perf_counter() - t0 > 1800:
            raise SystemExit("segmentation did not finish in 30 minutes")
    labels = viewer.layers["synthetic_tomo_seg"]
    summary = labels.metadata["summary"]
    print(
        f"segmented in {time.perf_counter() - t0:.1f} s: "
        + ", ".join(f"{k} {v:.2%}" for k, v in summary["class_fractions"].items()),
        flush=True,
    )

    labels.opacity = 0.6
    viewer.dims.set_point(0, (image.shape[0] // 2) * 10.0)  # the central slice (world units: Å)
    viewer.layers.selection.active = labels
    viewer.reset_view()
    # let the canvas draw, then hide the "segmenting ..." / summary toasts (they cover the canvas)
    deadline = time.perf_counter() + 2
    while time.perf_counter() < deadline:
        app.processEvents()
        time.sleep(0.05)
    from napari._qt.dialogs.qt_notification import NapariQtNotification

    for toast in viewer.window._qt_window.findChildren(NapariQtNotification):
        toast.hide()
    app.processEvents()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(args.output), canvas_only=False)
    print(f"wrote {args.output}")
    viewer.close()


if __name__ == "__main__":
    main()
