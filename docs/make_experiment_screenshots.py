"""Screenshots for docs/experiments.md from the real application at 1366 x 768:
Plugins > napari-nrf > Virtual experiment docked at 380 px, the demo model, 40 new
simulator face stimuli against 40 of the other categories (folders added to the two
sets), Run, a click on the table's first row; then the localizer on a folder of five
categories.

    xvfb-run -a -s "-screen 0 1366x768x24" .venv/bin/python docs/make_experiment_screenshots.py

Saves ``docs/images/experiment_contrast.png``, ``experiment_localizer.png`` and
``experiment_widget.png`` (the dock alone).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent / "images"
N = int(os.environ.get("N_PER_SET", "40"))


def _process(seconds=0.3):
    from qtpy.QtWidgets import QApplication

    t = time.perf_counter()
    while time.perf_counter() - t < seconds:
        QApplication.processEvents()
        time.sleep(0.01)


def _wait(cond, timeout=600.0):
    t = time.perf_counter()
    while not cond():
        _process(0.1)
        if time.perf_counter() - t > timeout:
            raise TimeoutError("the experiment did not finish")


def write_sets(root: Path) -> None:
    from PIL import Image

    from napari_nrf.simulate.stimuli import make_stimulus_set

    st = make_stimulus_set(np.arange(60000, 60000 + 12 * N), seed=0)
    cats = ("face", "body", "scene", "text", "object")
    for c in cats:
        d = root / "categories" / c
        d.mkdir(parents=True)
        for i in np.flatnonzero(st.categories == c)[:N]:
            Image.fromarray(st.images[i]).save(d / f"{st.ids[i]}.png")
    others = root / "others"
    others.mkdir()
    for i in np.flatnonzero(st.categories != "face")[:N]:
        Image.fromarray(st.images[i]).save(others / f"{st.ids[i]}.png")


def main() -> int:
    os.environ.setdefault("NAPARI_NRF_CACHE", "/tmp/napari-nrf-screenshots")
    import napari
    from qtpy.QtCore import Qt

    from napari_nrf.demo import load_demo_model
    from napari_nrf.widgets._state import state_for

    root = Path(tempfile.mkdtemp(prefix="nrf-exp-"))
    write_sets(root)
    viewer = napari.Viewer(title="napari-nrf: virtual experiment")
    qtw = viewer.window._qt_window
    qtw.resize(1366, 768)
    dock, w = viewer.window.add_plugin_dock_widget("napari-nrf", "Virtual experiment")
    qtw.resizeDocks([dock], [380], Qt.Horizontal)
    model, path = load_demo_model()
    state_for(viewer).set_model(model, path)
    w.zone_a.add([root / "categories" / "face"])
    w.zone_b.add([root / "others"])
    w.run()
    _wait(lambda: w.result is not None or "failed" in w.status.text())
    if w.result is None:
        print(w.status.text(), file=sys.stderr)
        return 1
    viewer.dims.ndisplay = 2
    w.table.selectRow(0)
    w.goto_row(0)
    viewer.camera.zoom = 2.2
    _process(1.0)
    OUT.mkdir(exist_ok=True)
    qtw.grab().save(str(OUT / "experiment_contrast.png"))
    w.grab().save(str(OUT / "experiment_widget.png"))
    print("rows:", w.rows[:4])

    w.set_localizer_folder(root / "categories")
    w.result = None
    w.run()
    _wait(lambda: w.localizer_result is not None or "failed" in w.status.text())
    w.stat_layer.visible = False
    w.category.setCurrentText("face")
    w.stat_layer.visible = False
    w.goto_row(0)
    _process(1.0)
    qtw.grab().save(str(OUT / "experiment_localizer.png"))
    print("saved in", OUT)
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
