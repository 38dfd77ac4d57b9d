"""The plugin's entries in napari's Layers and File menus (npe2 ``menus:`` contributions):

- Layers > Visualize > **Predict response**: the selected 2D image layer through the model
  in use (the Response volume widget's *Render layer*, the dock opened if needed);
- Layers > Data and File > IO Utilities > **Export as MNI NIfTI…**: the selected response,
  contrast, template, atlas or cluster layer written by the plugin's NIfTI writers;
- Layers > Segment > **Voxel clusters** (the widget itself, a ``widgets`` command).

napari calls each with its viewer (app-model injects it by the ``Viewer`` annotation).
Thin: the work is the widgets' and :mod:`napari_nrf.nifti_layers`'.
"""

from __future__ import annotations

from napari.viewer import Viewer

PLUGIN = "napari-nrf"


def _plugin_widget(viewer: Viewer, name: str):
    """The open widget ``name`` of this viewer (a dock of its own, or a tab of All
    widgets, brought to the front), else a new dock from the Plugins menu entry."""
    from .plugin_widget import PluginWidget

    for w in list(getattr(viewer.window, "dock_widgets", {}).values()):
        if isinstance(w, PluginWidget) and name in w.widgets:
            return w.show_tab(name) if name != "Encoding model" else w.widgets[name]
    _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
    return widget


def predict_response(viewer: Viewer):
    """Render the selected 2D image layer with the model in use; returns the worker (None
    when there is nothing to render: the widget says why)."""
    w = _plugin_widget(viewer, "Response volume")
    return w.render_layer(viewer.layers.selection.active)


def export_mni_nifti(viewer: Viewer, path: str | None = None) -> list[str]:
    """Write the selected layer as an MNI NIfTI (``path``, else asked with a save dialog);
    returns the files written ([] when cancelled or not possible, with a notification)."""
    from napari.layers import Image, Labels
    from napari.utils.notifications import show_error, show_info

    from ._progress import notify_error

    layer = viewer.layers.selection.active  # (napari may hand us proxies: isinstance, not type names)
    if not isinstance(layer, (Image, Labels)) or layer.ndim < 3:
        show_error("napari-nrf: select a 3D image or labels layer in MNI space to export")
        return []
    if path is None:
        from qtpy.QtWidgets import QFileDialog

        path, _ = QFileDialog.getSaveFileName(None, "Export as MNI NIfTI", f"{layer.name}.nii.gz",
                                              "NIfTI (*.nii.gz *.nii)")
        if not path:
            return []
    try:
        written = layer.save(str(path), plugin=PLUGIN)
    except Exception as exc:  # noqa: BLE001 - any writer failure is the user's to read
        notify_error(f"{layer.name} not exported", exc)
        return []
    show_info(f"napari-nrf: wrote {', '.join(written)}")
    return list(written)
