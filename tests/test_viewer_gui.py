"""Qt and full-viewer tiers for the foundation: the plugin's widgets dock in a real napari
viewer under Xvfb, the sample data land in MNI world coordinates, and a world position
reads back as MNI (x, y, z)."""

import numpy as np
import pytest

from napari_nrf import space

pytestmark = pytest.mark.gui


def test_widgets_dock_and_sample_in_mni(make_napari_viewer):
    from _plugin import open_widgets
    from napari_nrf.widgets import widget_commands

    viewer = make_napari_viewer()
    docked = open_widgets(viewer)
    assert set(docked) == {name for name, _ in widget_commands()} and docked
    viewer.open_sample("napari-nrf", "mni152")
    layer = viewer.layers["MNI152"]
    # The template spans the MNI box: its world extent (z, y, x) covers x from -90 to 90 mm.
    lo, hi = np.asarray(layer.extent.world)
    assert lo[2] < -80 and hi[2] > 80 and lo[1] < -120 and hi[1] > 80

    # A blob at x = -40 shows on the left: its world position reads back as MNI x < 0.
    g = space.Grid.mni(2.0)
    vol = np.exp(-((g.coords() - [-40, -20, 10]) ** 2).sum(1) / 32).reshape(g.shape)
    data, kw = space.layer_data(vol, g)
    blob = viewer.add_image(data, name="blob", **kw)
    peak = np.unravel_index(np.argmax(blob.data), blob.data.shape)
    world = blob.data_to_world(peak)
    assert space.world_to_mni(world)[0] == pytest.approx(-40, abs=1)
    viewer.dims.ndisplay = 3
    viewer.camera.orientation = space.NAPARI_CAMERA_ORIENTATION
    shot = viewer.screenshot(canvas_only=True)
    assert shot.ndim == 3 and shot.std() > 0  # something was really rendered



def test_napari_plugin_manager_opens_every_widget(make_napari_viewer):
    """What `napari -w napari-nrf` does: napari's own plugin machinery docks each widget."""
    from napari_nrf.widgets import widget_commands

    viewer = make_napari_viewer()
    for name, _ in widget_commands():
        dock, widget = viewer.window.add_plugin_dock_widget("napari-nrf", name)
        assert widget is not None, name
