"""The plugin's entries in napari's own menus (npe2 ``menus:``): Layers > Visualize >
Predict response, Layers > Data and File > IO Utilities > Export as MNI NIfTI…, Layers >
Segment > Voxel clusters, triggered the way a menu click does (napari's app-model runs
the command with the current viewer)."""

import numpy as np
import pytest

from _standin_model import BlobModel, colour_image

pytestmark = pytest.mark.gui


def _menu_commands(menu_id):
    from napari._app_model import get_app_model

    return {getattr(item, "command", None) and item.command.id for item in get_app_model().menus.get_menu(menu_id)}


def test_layer_menus_predict_export_and_segment(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    from napari._app_model import get_app_model
    from qtpy.QtWidgets import QFileDialog

    from napari_nrf import space
    from napari_nrf.widgets._render import layer_kind
    from napari_nrf.widgets.cluster_widget import VoxelClustersWidget

    viewer = make_napari_viewer()
    assert "napari-nrf.predict_response" in _menu_commands("napari/layers/visualize")
    assert "napari-nrf.export_mni_nifti" in _menu_commands("napari/layers/data")
    assert "napari-nrf.export_mni_nifti" in _menu_commands("napari/file/io_utilities")
    assert "napari-nrf.cluster_widget" in _menu_commands("napari/layers/segment")
    app = get_app_model()

    _dock, plugin = viewer.window.add_plugin_dock_widget("napari-nrf", "All widgets")
    plugin.widgets["Encoding model"].set_model(BlobModel())
    plugin.widgets["Response volume"].resolution.setValue(4.0)
    viewer.add_image(colour_image(0.9, 0.0, 32), name="red", rgb=True)   # a photo as a 2D layer
    rendered = []
    plugin.widgets["Response volume"].on_rendered(rendered.extend)
    app.commands.execute_command("napari-nrf.predict_response").result()   # Layers > Visualize
    qtbot.waitUntil(lambda: bool(rendered), timeout=30000)
    layer = rendered[0]
    assert layer_kind(layer) == "response" and len(viewer.window.dock_widgets) == 1  # the open tab did it
    vw = plugin.widgets["Response volume"]
    # one volume is no contrast: the row does not offer "red − red"
    assert vw.con_a.currentText() == layer.name and vw.con_b.currentText() == "" and not vw.con_btn.isEnabled()

    viewer.layers.selection.active = layer
    out = tmp_path / "red_response.nii.gz"
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a, **k: (str(out), ""))
    import napari.utils.notifications as notes
    msgs = []
    monkeypatch.setattr(notes, "show_error", msgs.append)
    monkeypatch.setattr(notes, "show_info", msgs.append)
    app.commands.execute_command("napari-nrf.export_mni_nifti").result()   # Layers > Data
    assert msgs and msgs[-1].startswith("napari-nrf: wrote"), msgs
    vol, grid = space.load_nifti(out)
    assert grid.resolution == pytest.approx(4.0) and np.isfinite(vol).any()

    app.commands.execute_command("napari-nrf.cluster_widget").result()     # Layers > Segment
    assert any(isinstance(w, VoxelClustersWidget) for w in viewer.window.dock_widgets.values())
