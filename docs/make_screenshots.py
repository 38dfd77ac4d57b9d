"""Screenshots for docs/user_guide.md and the README, taken from the real application the
way a user opens it (no demo shortcut):

1. a napari window of 1366 x 728 (a 768 px laptop screen less its task bar); the plugin
   from its Plugins menu entry "All widgets" (what ``napari -w napari-nrf`` docks), through
   napari's ``add_plugin_dock_widget``: the first launch, with the MNI152 template;
2. the window at 1920 x 1040 for the other pictures;
3. Encoding model: *Load the demo model*;
4. Response volume: two photographs dropped on the drop zone (a real Qt drop event),
   rendered where the model has data, with their contrast;
5. File > Open of a label atlas (the virtual subjects' visual areas with a ``.tsv`` table
   beside the NIfTI, written here), a folder of images as the Region explorer's library,
   a click on a region.

Saves in ``docs/images/``:

- ``first_launch_1366.png``: the first launch on 1366 x 768;
- ``response_2d.png``: the window, an axial slice (colorbar with units, mm axes, scale
  bar, orientation letters, MNI status bar);
- ``response_3d.png``: the same in 3D;
- ``atlas_region_explorer.png``: the window after a click on the atlas' right FFA, the
  legend of region names and the most / least activating images;
- ``region_explorer_widget.png``: the Region explorer tab alone;
- ``jobs_train_widget.png``: the Training jobs tab in its "Train a new NRF" mode.

Needs a display; on a headless machine::

    xvfb-run -a -s "-screen 0 1920x1080x24" .venv/bin/python docs/make_screenshots.py

It uses its own cache folder (``$NAPARI_NRF_CACHE``, default ``/tmp/napari-nrf-screenshots``)
and jobs folder, so the pictures do not depend on what this machine ran before.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent / "images"
PLUGIN = "napari-nrf"
# Where the region explorer clicks: the virtual subjects' right fusiform face area.
CLICK_MNI = (40.0, -55.0, -20.0)


def _process(seconds: float = 0.3):
    from qtpy.QtWidgets import QApplication

    t = time.perf_counter()
    while time.perf_counter() - t < seconds:
        QApplication.processEvents()
        time.sleep(0.01)


def _wait(cond, timeout: float = 900.0, what: str = "the viewer"):
    from qtpy.QtWidgets import QApplication

    t = time.perf_counter()
    while not cond():
        if time.perf_counter() - t > timeout:
            raise TimeoutError(f"timed out waiting for {what}")
        QApplication.processEvents()
        time.sleep(0.02)


def _drop(widget, paths):
    """A real drop of files on ``widget`` (what a file manager's drag and drop delivers)."""
    from qtpy.QtCore import QMimeData, QPointF, Qt, QUrl
    from qtpy.QtGui import QDropEvent

    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(p)) for p in paths])
    widget.dropEvent(QDropEvent(QPointF(5, 5), Qt.CopyAction, mime, Qt.LeftButton, Qt.NoModifier))


def _photos(folder: Path) -> list[Path]:
    """Two photographs as PNG files (scikit-image's astronaut and coffee)."""
    from PIL import Image
    from skimage import data

    out = []
    for name in ("astronaut", "coffee"):
        p = folder / f"{name}.png"
        Image.fromarray(getattr(data, name)()).save(p)
        out.append(p)
    return out


def _library_folder(folder: Path, n: int = 120) -> Path:
    """A folder of the virtual subjects' stimuli (faces, bodies, scenes, objects, text...)."""
    from PIL import Image

    from napari_nrf.simulate.stimuli import make_stimuli

    folder.mkdir(parents=True, exist_ok=True)
    images, cats = make_stimuli(n, 7, return_labels=True)
    for i, (img, c) in enumerate(zip(images, cats)):
        Image.fromarray(np.asarray(img)).save(folder / f"{c}_{i:03d}.png")
    return folder


def _area_atlas(path: Path) -> Path:
    """The simulator's visual areas as a label atlas (2 mm): NIfTI + ``.tsv`` table beside it."""
    from napari_nrf import space
    from napari_nrf.simulate.anatomy import blobs, roi_names

    g = space.Grid.mni(2.0)
    index = {name: k for k, name in roi_names().items()}
    lab = np.zeros(g.shape, np.uint8)
    for name, hemi, centroid, area in blobs():
        lab[space.sphere_mask(g, centroid, area.radius) & (lab == 0)] = index[f"{name}-{hemi}"]
    space.save_nifti(lab, g, path)
    rows = ["index\tname"] + [f"{k}\t{n}" for k, n in sorted(roi_names().items())]
    path.with_name(space.nifti_stem(path) + ".tsv").write_text("\n".join(rows) + "\n")
    return path


def main() -> int:
    os.environ.setdefault("NAPARI_NRF_CACHE", "/tmp/napari-nrf-screenshots")
    work = Path(tempfile.mkdtemp(prefix="nrf-shots-"))
    os.environ["NAPARI_NRF_JOBS"] = str(work / "jobs")
    import napari

    from napari_nrf import space
    from napari_nrf.demo import shipped_model_path
    from napari_nrf.library import ImageLibrary
    
    OUT.mkdir(parents=True, exist_ok=True)
    viewer = napari.Viewer(show=True)
    win = viewer.window._qt_window
    # Plugins > napari-nrf > All widgets (= napari -w napari-nrf), first on a 1366 x 768 laptop:
    # the first launch shows the MNI template, "Load the demo model" and the drop zone
    win.resize(1366, 768 - 40)
    _dock, plugin = viewer.window.add_plugin_dock_widget(PLUGIN, "All widgets")
    _process(2.0)
    viewer.window.screenshot(str(OUT / "first_launch_1366.png"), canvas_only=False, flash=False)
    print("saved first_launch_1366.png", win.width(), "x", win.height())
    win.resize(1920, 1080 - 40)
    _process(1.0)
    mw = plugin.widgets["Encoding model"]
    assert shipped_model_path().is_file(), "no shipped demo model"
    mw.demo_btn.click()                             # the user clicks "Load the demo model"
    _wait(lambda: mw.state.model is not None, timeout=300, what="the demo model")
    print("model loaded:", mw.state.model_path)

    vw = plugin.show_tab("Response volume")
    got = []
    vw.on_rendered(got.extend)
    _drop(vw, _photos(work))                        # drop two photographs on the drop zone
    _wait(lambda: bool(got), what="the render")
    astronaut = viewer.layers["astronaut"]
    viewer.layers.selection.active = astronaut
    viewer.layers["coffee"].visible = False
    viewer.layers["astronaut − coffee"].visible = False
    peak = np.unravel_index(np.nanargmax(np.asarray(astronaut.data)), astronaut.data.shape)
    peak_mni = space.world_to_mni(astronaut.data_to_world(peak))
    vw.goto.setText(", ".join(f"{v:.0f}" for v in peak_mni))
    vw.goto.returnPressed.emit()                    # go to MNI: the peak of the response
    viewer.dims.ndisplay = 2
    viewer.reset_view()
    _process(1.5)
    viewer.window.screenshot(str(OUT / "response_2d.png"), canvas_only=False, flash=False)
    print("saved response_2d.png; peak at MNI", np.round(peak_mni, 1))

    viewer.dims.ndisplay = 3
    viewer.camera.angles = space.NAPARI_CAMERA_ANGLES
    _process(3.0)
    viewer.window.screenshot(str(OUT / "response_3d.png"), canvas_only=False, flash=False)
    print("saved response_3d.png")
    viewer.dims.ndisplay = 2

    # File > Open of a label atlas (the plugin is napari's preferred NIfTI reader since its first use)
    atlas = _area_atlas(work / "visual_areas.nii.gz")
    viewer.open(str(atlas), plugin=None)
    astronaut.visible = False
    rx = plugin.show_tab("Region explorer")
    rx.set_library(ImageLibrary.from_folder(_library_folder(work / "library")))  # what Folder… does
    lib_worker = rx.prepare_library()
    if lib_worker is not None:
        _wait(lambda: not lib_worker.is_running, what="the library's features")
    rx.use_source("visual_areas")
    explored = []
    rx.explored.connect(explored.append)
    viewer.dims.set_point(0, CLICK_MNI[2])          # the axial slice through the click
    rx.pick(space.mni_to_world(np.array(CLICK_MNI)))
    _wait(lambda: bool(explored), what="the region's images")
    _process(1.5)
    viewer.window.screenshot(str(OUT / "atlas_region_explorer.png"), canvas_only=False, flash=False)
    rx.grab().save(str(OUT / "region_explorer_widget.png"))
    print("saved atlas_region_explorer.png, region_explorer_widget.png;", rx.info.text().splitlines()[0])

    jw = plugin.show_tab("Training jobs")
    jw.mode.setCurrentIndex(1)                      # "Train a new NRF"
    _process(0.5)
    jw.grab().save(str(OUT / "jobs_train_widget.png"))
    print("saved jobs_train_widget.png")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
