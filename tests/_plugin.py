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


def two_region_atlas(folder, table: str = "atlas.tsv", text: str = "index\tname\n1\tLeft thing\n2\tRight thing\n"):
    """``(grid, labels)`` of a 4 mm two-region atlas written as ``folder/atlas.nii.gz`` with
    the label table ``folder/<table>`` beside it (label 1 on the left, 2 on the right)."""
    import numpy as np

    from napari_nrf import space

    g = space.Grid.from_extent(4.0, [-60, -80, -30], [60, 40, 50])
    lab = np.zeros(g.shape, np.uint8)
    lab[:10] = 1
    lab[15:] = 2
    space.save_nifti(lab, g, folder / "atlas.nii.gz")
    (folder / table).write_text(text)
    return g, lab
