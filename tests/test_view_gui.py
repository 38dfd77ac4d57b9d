"""Pictures a neuroscientist trusts: the view's orientation letters match where a blob in
the right hemisphere really lands on screen (2D and 3D, no mirror image), axes are
labelled in mm, response layers carry a colorbar and units, "go to MNI" moves the view,
and the sample data share the plugin's template and orientation."""

import time

import numpy as np
import pytest

from napari_nrf import space

pytestmark = pytest.mark.gui


def _pump(n=15):
    from qtpy.QtWidgets import QApplication

    for _ in range(n):
        QApplication.processEvents()
        time.sleep(0.02)


def _blobs(viewer):
    """Labels: 1 anterior, 2 posterior, 3 right hemisphere, 4 superior (4 mm grid)."""
    g = space.Grid.mni(4.0)
    c = g.coords()
    lab = np.zeros(g.shape, np.uint8)
    for v, p in ((1, [0, 50, 18]), (2, [0, -70, 18]), (3, [60, -10, 18]), (4, [0, -10, 70])):
        lab[(((c - p) ** 2).sum(1) < 14 ** 2).reshape(g.shape)] = v
    data, kw = space.layer_data(lab, g)
    layer = viewer.add_labels(data, name="blobs", **kw)
    layer.colormap = {None: (0, 0, 0, 0), 0: (0, 0, 0, 0), 1: (1, 0, 0, 1), 2: (0, 1, 0, 1), 3: (0, 0, 1, 1),
                      4: (1, 1, 0, 1)}
    return layer


def _screen_of(viewer, layer, value):
    """(right, up) pixel offset from the canvas centre of label ``value`` (others hidden)."""
    layer.colormap = {None: (0, 0, 0, 0), 0: (0, 0, 0, 0), value: (1, 1, 1, 1)}
    overlays = (viewer.text_overlay, viewer.axes, viewer.scale_bar)
    shown = [o.visible for o in overlays]
    for o in overlays:  # white text and axes would read as the blob
        o.visible = False
    _pump()
    shot = viewer.screenshot(canvas_only=True).astype(float)[..., 0]
    for o, v in zip(overlays, shown):
        o.visible = v
    yy, xx = np.nonzero(shot > max(40.0, 0.5 * shot.max()))  # the lit blob (shaded in 3D)
    h, w = shot.shape
    return np.array([xx.mean() - w / 2, h / 2 - yy.mean()]) if xx.size else None


def test_orientation_letters_match_the_picture(make_napari_viewer):
    from napari_nrf.widgets._view import direction_letters, orientation_text, screen_directions, setup_mni_view

    viewer = make_napari_viewer(show=True)
    viewer.window.resize(900, 700)
    setup_mni_view(viewer)
    layer = _blobs(viewer)
    viewer.dims.set_point(0, 18.0)  # axial slice through the blobs
    viewer.reset_view()
    # 2D axial: neurological (right on the right, anterior up), as nilearn shows it
    right, up = screen_directions(viewer)
    assert direction_letters(right) == "R" and direction_letters(up) == "A"
    r = _screen_of(viewer, layer, 3)
    a = _screen_of(viewer, layer, 1)
    assert r[0] > 20 and a[1] > 20
    assert orientation_text(viewer).startswith("left L | right R | top A | bottom P")
    assert "axial z = 18.0 mm" in orientation_text(viewer)
    # 3D, seen from behind-left-above and from the front: letters follow the camera and
    # the rendering is a rotation, never a mirror (a right blob lands where 'right' says)
    viewer.dims.ndisplay = 3
    for angles in (space.NAPARI_CAMERA_ANGLES, (0.0, 0.0, 90.0), (0.0, 0.0, -90.0)):
        viewer.reset_view()
        viewer.camera.angles = angles
        _pump()
        right, up = screen_directions(viewer)
        centre = _screen_of(viewer, layer, 2) if angles[2] < 0 else None
        for value, mni in ((3, [1, 0, 0]), (4, [0, 0, 1])):
            pos = _screen_of(viewer, layer, value)
            # the blob's direction from the brain's middle, projected on the screen axes
            expect = np.array([np.dot(right, mni), np.dot(up, mni)])
            assert pos is not None and np.dot(pos, expect) > 0, (angles, value, pos, expect)
        del centre
    # No mirror image: seen along the y axis, measure where R and S land on the screen;
    # a proper rotation then looks along -(right x up), so the blob on that side's near
    # end must hide the other (anterior 1 red, posterior 2 green). The old orientation
    # ("away", "up", "right") showed the far blob: a mirrored brain.
    viewer.reset_view()
    viewer.camera.angles = (0.0, 0.0, 90.0)
    _pump()
    r_px, s_px = _screen_of(viewer, layer, 3), _screen_of(viewer, layer, 4)
    right_m = np.array([1.0, 0, 0]) * np.sign(r_px[0])  # +x is screen right (or left)
    up_m = np.array([0, 0, 1.0]) * np.sign(s_px[1])    # +z is screen up (or down)
    looking = -np.cross(right_m, up_m)                 # MNI direction into the screen
    assert abs(looking[1]) == 1
    layer.colormap = {None: (0, 0, 0, 0), 0: (0, 0, 0, 0), 1: (1, 0, 0, 1), 2: (0, 1, 0, 1)}
    for o in (viewer.text_overlay, viewer.axes, viewer.scale_bar):
        o.visible = False
    _pump()
    shot = viewer.screenshot(canvas_only=True).astype(float)
    red = ((shot[..., 0] > 60) & (shot[..., 1] < 30)).sum()
    green = ((shot[..., 1] > 60) & (shot[..., 0] < 30)).sum()
    # looking toward +y (from behind): the posterior blob is nearer and visible
    assert (green > 10 * max(red, 1)) if looking[1] > 0 else (red > 10 * max(green, 1)), (looking, red, green)
    viewer.text_overlay.visible = True
    assert viewer.text_overlay.visible and "left" in viewer.text_overlay.text


def test_response_layers_have_colorbar_units_and_mm_axes(make_napari_viewer, qtbot, tmp_path):
    from PIL import Image

    from _plugin import open_widgets
    from _standin_model import BlobModel, colour_image
    from napari_nrf.widgets._view import parse_mni

    viewer = make_napari_viewer()
    w = open_widgets(viewer, ["Encoding model", "Response volume"])
    w["Encoding model"].set_model(BlobModel())
    vw = w["Response volume"]
    vw.resolution.setValue(4.0)
    Image.fromarray(colour_image(0.9, 0.0, 32)).save(tmp_path / "red.png")
    got = []
    vw.on_rendered(got.extend)
    vw.add_images([str(tmp_path / "red.png")])
    qtbot.waitUntil(lambda: bool(got), timeout=30000)
    layer = got[0]
    assert layer.colorbar.visible
    assert viewer.dims.axis_labels[-3:] == ("z", "y", "x")
    assert all(str(u) == "millimeter" for u in layer.units)
    assert viewer.scale_bar.visible and viewer.axes.visible and viewer.axes.labels
    viewer.layers.selection.active = layer
    assert "red: z-scored beta (SD)" in viewer.text_overlay.text
    # go to MNI (x, y, z): the field of the Response volume widget
    vw.goto.setText("40, -20, 12")
    vw.goto.returnPressed.emit()
    assert np.allclose(space.world_to_mni(viewer.dims.point), [40, -20, 12], atol=2.1)
    assert "axial z = 12.0 mm" in viewer.text_overlay.text
    # the slider beside the canvas shows the slice in mm too (the dims model keeps "z")
    slider = viewer.window._qt_viewer.dims.slider_widgets[0]
    assert slider.axis_label.text() == "z 12.0 mm" and viewer.dims.axis_labels[0] == "z"
    viewer.dims.set_point(0, -30.0)
    assert slider.axis_label.text() == "z -30.0 mm"
    viewer.dims.order = (2, 0, 1)                     # a sagittal slice: the x slider in mm
    assert viewer.window._qt_viewer.dims.slider_widgets[2].axis_label.text().startswith("x ")
    with pytest.raises(ValueError):
        parse_mni("1, 2")
    # a second volume: one colour bar, the selected layer's, which the text overlay names
    Image.fromarray(colour_image(0.0, 0.9, 32)).save(tmp_path / "blue.png")
    got.clear()
    vw.add_images([str(tmp_path / "blue.png")])
    qtbot.waitUntil(lambda: bool(got), timeout=30000)
    viewer.layers.selection.active = layer
    assert layer.colorbar.visible and not got[0].colorbar.visible and viewer.text_overlay.text.count("red:") == 1
    viewer.layers.selection.active = got[0]
    assert got[0].colorbar.visible and not layer.colorbar.visible and "blue: " in viewer.text_overlay.text


def test_sample_data_share_the_template_and_orientation(make_napari_viewer, monkeypatch, tiny_model, tmp_path):
    from napari_nrf import demo
    from napari_nrf.widgets._render import ensure_template, layer_kind

    monkeypatch.setattr(demo, "load_demo_model", lambda device="cpu", progress=None: (tiny_model, tmp_path / "m"))
    viewer = make_napari_viewer()
    viewer.open_sample("napari-nrf", "mni152")
    assert tuple(str(getattr(o, "value", o)) for o in viewer.camera.orientation) == space.NAPARI_CAMERA_ORIENTATION
    tmpl = viewer.layers["MNI152"]
    assert ensure_template(viewer) is tmpl
    viewer.open_sample("napari-nrf", "demo_volume")
    assert sum(layer_kind(ly) == "template" for ly in viewer.layers) == 1
    assert viewer.layers["astronaut"].colorbar.visible
