"""Screenshots for docs/user_guide.md, taken from the real application.

Runs the demo (the demo NRF model, the sample image, the virtual subjects' library) in a
shown napari window and saves:

- ``docs/images/demo_3d.png``: the whole window, the rendered volume in 3D;
- ``docs/images/region_explorer.png``: the whole window after a click on a region
  (axial 2D view), with the thumbnails of the most and least activating images;
- ``docs/images/region_explorer_widget.png``: the region explorer dock alone.

Needs a display; on a headless machine::

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python docs/make_screenshots.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent / "images"
# Where the region explorer clicks: near the right fusiform face area of the virtual subjects.
CLICK_MNI = (40.0, -56.0, -18.0)


def _process(seconds: float = 0.3):
    from qtpy.QtWidgets import QApplication

    t = time.perf_counter()
    while time.perf_counter() - t < seconds:
        QApplication.processEvents()
        time.sleep(0.01)


def _wait(cond, timeout: float = 300.0):
    from qtpy.QtWidgets import QApplication

    t = time.perf_counter()
    while not cond():
        if time.perf_counter() - t > timeout:
            raise TimeoutError("timed out waiting for the viewer")
        QApplication.processEvents()
        time.sleep(0.02)


def main() -> int:
    import napari

    from napari_nrf import space
    from napari_nrf.demo import load_demo_model
    from napari_nrf.widgets.demo_app import build_demo

    OUT.mkdir(parents=True, exist_ok=True)
    model, path = load_demo_model()
    viewer = napari.Viewer(title="napari-nrf demo", show=True)
    viewer.window.resize(1600, 1000)
    ready = []
    st = build_demo(viewer, model, path, on_ready=ready.append)
    _wait(lambda: bool(ready))
    _process(1.0)
    viewer.window.screenshot(str(OUT / "demo_3d.png"), canvas_only=False)
    print("saved", OUT / "demo_3d.png")

    rx = st["widgets"]["Region explorer"]
    if st.get("library_worker") is not None:
        _wait(lambda: not st["library_worker"].is_running)
    viewer.dims.ndisplay = 2
    viewer.dims.set_point(0, CLICK_MNI[2])  # axial slice through the click
    viewer.camera.zoom = 1.0
    viewer.reset_view()
    got = []
    rx.explored.connect(got.append)
    rx.radius.setValue(8.0)
    rx.pick(space.mni_to_world(np.array(CLICK_MNI)))
    _wait(lambda: bool(got))
    _process(1.0)
    viewer.window.screenshot(str(OUT / "region_explorer.png"), canvas_only=False)
    rx.grab().save(str(OUT / "region_explorer_widget.png"))
    print("saved", OUT / "region_explorer.png", OUT / "region_explorer_widget.png")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
