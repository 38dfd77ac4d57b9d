"""Full-viewer tests of the plugin's dock widgets under Xvfb, with an analytic stand-in
model (a Gaussian blob at MNI (-40, -20, 10), see _standin_model.py) so they stay fast."""

import threading

import numpy as np
import pytest

from napari_nrf import space

from _plugin import open_widgets
from _standin_model import BLOB, BlobModel, colour_image

pytestmark = pytest.mark.gui


@pytest.fixture
def docked(make_napari_viewer):
    viewer = make_napari_viewer()
    widgets = open_widgets(viewer)  # Plugins > napari-nrf > each widget
    model = BlobModel()
    widgets["Encoding model"].set_model(model)
    vw = widgets["Response volume"]
    vw.resolution.setValue(4.0)  # coarse grid: fast tests
    return viewer, widgets, model


def _png(path, red, blue=0.0):
    from PIL import Image

    Image.fromarray(colour_image(red, blue, 48)).save(path)
    return str(path)


def _drop(widget, paths):
    from qtpy.QtCore import QMimeData, QPointF, Qt, QUrl
    from qtpy.QtGui import QDropEvent

    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(p)) for p in paths])
    ev = QDropEvent(QPointF(5, 5), Qt.CopyAction, mime, Qt.LeftButton, Qt.NoModifier)
    widget.dropEvent(ev)
    return ev


def _peak_mni(layer):
    d = np.asarray(layer.data)
    idx = np.unravel_index(np.argmax(d), d.shape)
    return space.world_to_mni(layer.data_to_world(idx))


def test_drop_renders_mni_volumes_contrast_and_export(docked, qtbot, tmp_path):
    from napari_nrf.widgets._render import layer_kind, mni_status

    viewer, widgets, _ = docked
    vw = widgets["Response volume"]
    rendered = []
    vw.on_rendered(rendered.extend)
    a, b = _png(tmp_path / "reddish.png", 0.9), _png(tmp_path / "bluish.png", 0.1, 0.8)
    _drop(vw, [a, b])
    qtbot.waitUntil(lambda: len(rendered) == 3, timeout=30000)
    names = [ly.name for ly in viewer.layers]
    assert names[0] == "MNI152" and "reddish" in names and "bluish" in names
    assert sum(layer_kind(ly) == "template" for ly in viewer.layers) == 1
    red = viewer.layers["reddish"]
    # the blob is in the left hemisphere: its peak reads back as MNI x < 0, at the blob
    peak = _peak_mni(red)
    assert peak[0] < 0 and np.allclose(peak, BLOB, atol=4.1)
    lo, hi = red.contrast_limits
    assert lo == -hi > -np.inf and hi > 0
    # the contrast volume red - blue is positive at the blob
    con = rendered[2]
    assert layer_kind(con) == "contrast" and _peak_mni(con)[0] < 0
    assert "MNI (x, y, z) = (-40.0, -20.0, 10.0) mm" in mni_status(viewer, space.mni_to_world(BLOB))
    # threshold / opacity controls act on every response layer
    vw.set_opacity(0.5)
    assert red.opacity == 0.5
    vw.set_threshold(0.5)
    assert red.colormap.map(np.array([0.6]))[0, 3] == 0
    # a second render adds layers but not a second template
    vw.contrast_check.setChecked(False)
    _drop(vw, [a])
    qtbot.waitUntil(lambda: len(rendered) == 4, timeout=30000)
    assert sum(layer_kind(ly) == "template" for ly in viewer.layers) == 1
    # export: an MNI NIfTI whose peak is at the blob, NaN outside the brain
    from napari_nrf.errors import OutputError

    loaded = tmp_path / "model.safetensors"  # issue 21: an export never replaces the loaded model
    loaded.write_bytes(b"the user's model")
    vw.state.model_path = loaded
    with pytest.raises(OutputError, match="also an input"):
        vw.export(red, loaded)
    assert loaded.read_bytes() == b"the user's model"
    out = vw.export(red, tmp_path / "reddish.nii.gz")
    vol, grid = space.load_nifti(out)
    i = np.unravel_index(np.nanargmax(vol), vol.shape)
    assert np.allclose(grid.index_to_world(i), BLOB, atol=4.1) and np.isnan(vol).any()


def test_cancel_mid_render_leaves_no_layer(docked, qtbot, tmp_path):
    viewer, widgets, model = docked
    vw = widgets["Response volume"]
    model.gate = threading.Event()
    n0 = len(viewer.layers)
    worker = vw.add_images([_png(tmp_path / "img.png", 0.8)])
    assert worker is not None
    qtbot.waitUntil(model.started.is_set, timeout=10000)
    with qtbot.waitSignal(worker.finished, timeout=20000):
        vw.cancel()
        model.gate.set()
    qtbot.wait(50)
    assert len(viewer.layers) == n0 and vw.status.text() == "render cancelled"


def test_corrupt_image_gives_a_notification(docked, tmp_path, monkeypatch):
    import napari.utils.notifications as nt

    viewer, widgets, _ = docked
    shown = []
    monkeypatch.setattr(nt, "show_error", lambda msg: shown.append(msg))
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    n0 = len(viewer.layers)
    assert widgets["Response volume"].add_images([str(bad)]) is None
    assert len(viewer.layers) == n0
    assert shown and "broken.png" in shown[0]


def test_click_on_labels_picks_label_and_fills_thumbnails(docked, qtbot):
    from napari_nrf.library import ImageLibrary

    viewer, widgets, model = docked
    rx = widgets["Region explorer"]
    g = space.Grid.mni(2.0)
    lab = np.zeros(g.shape, np.int32)
    lab[space.sphere_mask(g, BLOB, 6)] = 3
    lab[space.sphere_mask(g, [40, -20, 10], 6)] = 5
    data, kw = space.layer_data(lab, g)
    viewer.add_labels(data, name="atlas", **kw)
    rx.source.setCurrentText("atlas")
    reds = np.linspace(0, 1, 10)
    rx.set_library(ImageLibrary(np.stack([colour_image(r, 1 - r) for r in reds]), label="colours"))
    rx.k.setValue(3)
    # a click (press + release without moving) through the viewer's mouse callback
    viewer.dims.set_point(0, BLOB[2])

    class Ev:
        button, modifiers, type = 1, (), "mouse_press"
        position = space.mni_to_world(BLOB + [1, 1, 0])
        view_direction = None
        dims_displayed = (1, 2)

    ev = Ev()
    gen = rx._on_mouse(viewer, ev)
    next(gen)
    ev.type = "mouse_release"
    with qtbot.waitSignal(rx.explored, timeout=20000):
        with pytest.raises(StopIteration):
            next(gen)
    assert rx.region.kind == "label" and rx.region.value == 3
    assert np.allclose(rx.region.centre, BLOB, atol=1.0)
    assert rx.n_thumbnails() == 6 and list(rx.result.top) == [9, 8, 7]
    assert "MNI" in rx.info.text() and "label 3" in rx.info.text()
    assert any(ly.name == "selected region" for ly in viewer.layers)
    # the other label: the right-hemisphere region, 3D pick along the ray (x direction)
    viewer.dims.ndisplay = 3
    with qtbot.waitSignal(rx.explored, timeout=20000):
        region = rx.pick(space.mni_to_world([-80, -20, 10]) * 0 + space.mni_to_world([80, -20, 10]),
                         view_direction=[0, 0, -1], dims_displayed=[0, 1, 2])
    assert region.value == 5 and region.centre[0] > 0
    # a sphere anywhere
    rx.source.setCurrentText("sphere around the click")
    viewer.dims.ndisplay = 2
    with qtbot.waitSignal(rx.explored, timeout=20000):
        region = rx.pick(space.mni_to_world(BLOB))
    assert region.kind == "sphere" and np.allclose(region.click, BLOB)
    assert region.n_voxels > 100 and list(rx.result.top[:1]) == [9]


def test_model_widget_notifies_corrupt_file_and_missing_cuda(docked, qtbot, tmp_path, monkeypatch):
    import napari.utils.notifications as nt
    import torch

    viewer, widgets, model = docked
    mw = widgets["Encoding model"]
    shown = []
    monkeypatch.setattr(nt, "show_error", lambda msg: shown.append(msg))
    bad = tmp_path / "corrupt.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    mw.load(bad)  # (waiting on worker.finished races with a fast worker: wait for the message)
    qtbot.waitUntil(lambda: len(shown) == 1, timeout=20000)
    assert "corrupt.safetensors not loaded" in shown[-1] and "\n" not in shown[-1]
    assert "test-blob" in mw.card.text()  # the model in use stays
    if not torch.cuda.is_available():
        good = tmp_path / "m.safetensors"
        good.write_bytes(b"")  # never read: the device check comes first
        mw.device.addItem("cuda:0")
        mw.device.setCurrentText("cuda:0")
        mw.load(good)
        qtbot.waitUntil(lambda: len(shown) == 2, timeout=20000)
        assert "CUDA is not available" in shown[-1]


def test_status_bar_shows_mni_and_value(docked):
    from napari_nrf.widgets._render import ensure_template

    viewer, _, _ = docked
    ensure_template(viewer)
    viewer.cursor.position = tuple(space.mni_to_world([-40.0, -20.0, 10.0]))
    # what napari writes on a mouse move: the layer's status in world (z, y, x) order
    viewer.status = viewer.layers["MNI152"].get_status(viewer.cursor.position, world=True)
    st = viewer.status
    assert "MNI (x, y, z) = (-40.0, -20.0, 10.0) mm" in st["coordinates"] and "MNI152 = " in st["coordinates"]


def test_progress_bar_never_busy_and_throttled(qtbot):
    """The widgets' progress bar has no busy animation (it repainted the whole window on
    software OpenGL) and repaints at most every 10 % / min_interval, but always at 100 %."""
    from napari_nrf.widgets._progress import STEPS, ProgressBar

    bar = ProgressBar(min_interval=3600.0)
    qtbot.addWidget(bar)
    bar.start()
    assert bar.maximum() == STEPS and bar.value() == 0  # determinate: no animation
    bar.report(50, 100)  # within min_interval of start(): not repainted
    assert bar.value() == 0
    bar.report(100, 100)  # the end is always shown
    assert bar.value() == STEPS
    fast = ProgressBar(min_interval=0.0)
    qtbot.addWidget(fast)
    fast.start()
    fast.report(1, 1000)  # under 1 %: same decile, no repaint
    assert fast.value() == 0
    fast.report(370, 1000)
    assert fast.value() == 370
    fast.report(5, 0)  # unknown total: ignored
    assert fast.value() == 370
    fast.reset_idle()
    assert fast.value() == 0 and fast.maximum() == STEPS


def test_progress_shows_in_napari_activity_and_idle_bar_is_blank(qtbot):
    """Long work also appears in napari's activity dock (napari.utils.progress); an idle
    bar shows no "0%"."""
    from napari_nrf.widgets._progress import STEPS, ProgressBar

    bar = ProgressBar(min_interval=0.0)
    qtbot.addWidget(bar)
    assert not bar.isTextVisible() and bar.activity is None
    bar.start("napari-nrf: rendering x")
    assert bar.isTextVisible() and bar.activity is not None
    assert bar.activity.desc.startswith("napari-nrf: rendering x") and bar.activity.total == STEPS
    bar.report(500, 1000)
    assert bar.activity.n == 500
    act = bar.activity
    bar.reset_idle()
    assert not bar.isTextVisible() and bar.activity is None and act.n == 500


def test_clicks_pick_nothing_until_model_and_library(make_napari_viewer):
    """Before a model and an image library exist a click in the view adds no layer and no
    notification."""
    viewer = make_napari_viewer()
    rx = open_widgets(viewer, ["Region explorer"])["Region explorer"]
    n0 = len(viewer.layers)

    class Ev:
        button, modifiers, type = 1, (), "mouse_press"
        position = space.mni_to_world(BLOB)
        view_direction = None
        dims_displayed = (1, 2)

    for _ in range(2):
        gen = rx._on_mouse(viewer, Ev())
        with pytest.raises(StopIteration):
            next(gen)
        assert len(viewer.layers) == n0 and rx.region is None
        open_widgets(viewer, ["Encoding model"])["Encoding model"].set_model(BlobModel())  # still no library
