"""A window that fits: with every widget of the plugin docked the napari window fits a
1920 x 1080 screen, and on 1366 x 768 the canvas keeps most of the window while each
dock scrolls. Measured from Qt's minimum size hints of the real window."""

import pytest

from _plugin import open_widgets

pytestmark = pytest.mark.gui


def _pump():
    from qtpy.QtWidgets import QApplication

    for _ in range(5):
        QApplication.processEvents()


def test_every_widget_docked_fits_full_hd(make_napari_viewer):
    viewer = make_napari_viewer(show=True)
    from napari_nrf.widgets import widget_commands

    widgets = open_widgets(viewer)  # every widget, one dock each, from the Plugins menu
    assert len(widgets) == len(widget_commands()) >= 6
    _pump()
    win = viewer.window._qt_window
    hint = win.minimumSizeHint().expandedTo(win.minimumSize())
    assert hint.width() <= 1920 and hint.height() <= 1080 - 40, (hint.width(), hint.height())  # 40 px taskbar
    for name, w in widgets.items():
        # the Encoding model keeps its buttons and the model card's eight lines in view
        limit = 240 if name == "Encoding model" else 200
        assert w.minimumSizeHint().height() <= limit, (type(w).__name__, w.minimumSizeHint().height())


def test_whole_plugin_usable_on_1366x768(make_napari_viewer):
    """`napari -w napari-nrf` (the All widgets dock) on a 1366 x 768 laptop."""
    viewer = make_napari_viewer(show=True)
    dock, plugin = viewer.window.add_plugin_dock_widget("napari-nrf", "All widgets")
    win = viewer.window._qt_window
    hint = win.minimumSizeHint().expandedTo(win.minimumSize())
    assert hint.width() <= 1366 and hint.height() <= 768 - 40, (hint.width(), hint.height())
    win.resize(1366, 728)
    _pump()
    canvas = viewer.window._qt_viewer.canvas.native
    # napari's layer controls take ~300 px on the left, the plugin ~420 px on the right
    assert canvas.width() >= 600 and canvas.height() >= 0.5 * win.height(), (canvas.width(), canvas.height())
    # every tab's controls are reachable: the dock scrolls rather than clips
    for name, w in plugin.widgets.items():
        plugin.show_tab(name) if name != "Encoding model" else None
        _pump()
        area = w.scroll_area
        assert area.widget().sizeHint().height() <= area.viewport().height() or area.verticalScrollBar().maximum() > 0
