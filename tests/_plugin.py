"""Open the plugin's widgets the way a user does: Plugins > napari-nrf > <widget>, i.e.
napari's ``viewer.window.add_plugin_dock_widget`` (each widget gets napari's proxy of the
viewer), never the demo's ``dock_all`` shortcut."""


def open_widgets(viewer, names=None) -> dict:
    """Display name -> widget, each opened through napari's plugin path."""
    from napari_nrf.widgets import widget_commands

    out = {}
    for name, _ in widget_commands():
        if names is None or name in names:
            _dock, out[name] = viewer.window.add_plugin_dock_widget("napari-nrf", name)
    return out
