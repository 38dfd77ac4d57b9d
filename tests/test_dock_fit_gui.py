"""Docks that fit: every widget of the plugin, opened from the Plugins menu (napari's
``add_plugin_dock_widget``) on a 1366 x 768 and a 1920 x 1080 screen, in a 370 px dock,
alone or all together, shows every control whole: no visible child is narrower or
shorter than Qt's own minimum for it, and nothing scrolls sideways. With every dock open
the window's minimum height stays under 740 px."""

import pytest

from _plugin import open_widgets

pytestmark = pytest.mark.gui

DOCK = 370


def _pump(n=8):
    from qtpy.QtWidgets import QApplication

    for _ in range(n):
        QApplication.processEvents()


def _effective_min(w):
    """What a Qt layout gives a widget at least: its explicit minimum where set, else its
    minimumSizeHint (Qt's qSmartMinSize), ignoring a size policy that may shrink it."""
    from qtpy.QtWidgets import QSizePolicy

    hint, explicit = w.minimumSizeHint(), w.minimumSize()
    pol = w.sizePolicy()
    mw = explicit.width() if explicit.width() > 0 else hint.width()
    mh = explicit.height() if explicit.height() > 0 else hint.height()
    if pol.horizontalPolicy() == QSizePolicy.Policy.Ignored:
        mw = 0
    return mw, mh


def clipped_children(root):
    """(class, text, width, needed width, height, needed height) of each visible child of
    ``root`` whose geometry is under its minimum (buttons, labels, fields cut off)."""
    from qtpy.QtWidgets import (QAbstractButton, QAbstractSpinBox, QComboBox, QLabel, QLineEdit, QProgressBar,
                                QSlider)

    kinds = (QAbstractButton, QAbstractSpinBox, QComboBox, QLabel, QLineEdit, QProgressBar, QSlider)
    bad = []
    from qtpy.QtWidgets import QWidget

    for c in root.findChildren(QWidget):
        if not isinstance(c, kinds) or not c.isVisible():
            continue
        mw, mh = _effective_min(c)
        if c.width() + 1 < mw or c.height() + 1 < mh:
            text = c.text() if hasattr(c, "text") and callable(c.text) else ""
            bad.append((type(c).__name__, str(text)[:40], c.width(), mw, c.height(), mh))
    return bad


def _check_dock(widget):
    """Every scroll area of ``widget``: its content is no wider than its viewport (no
    sideways scrolling); no visible control clipped."""
    from qtpy.QtWidgets import QScrollArea

    for area in [widget.scroll_area] + widget.findChildren(QScrollArea):
        if not area.isVisible() or area.widget() is None:
            continue
        content, view = area.widget(), area.viewport()
        assert content.minimumSizeHint().width() <= view.width() + 1, \
            (type(widget).__name__, content.minimumSizeHint().width(), view.width())
        assert area.horizontalScrollBar().maximum() == 0 or not area.horizontalScrollBar().isVisible()
    bad = clipped_children(widget)
    assert not bad, (type(widget).__name__, bad)


def _dock_of(w):
    from qtpy.QtWidgets import QDockWidget

    while w is not None and not isinstance(w, QDockWidget):
        w = w.parentWidget()
    return w


@pytest.mark.parametrize("screen", [(1366, 768), (1920, 1080)])
def test_every_dock_alone_in_a_370_px_dock(make_napari_viewer, screen):
    from qtpy.QtCore import Qt

    from napari_nrf.widgets import widget_commands

    for name, _ in widget_commands():
        viewer = make_napari_viewer(show=True)
        win = viewer.window._qt_window
        win.resize(*screen)
        w = open_widgets(viewer, [name])[name]
        _pump()
        dock = _dock_of(w)
        win.resizeDocks([dock], [DOCK], Qt.Horizontal)
        _pump()
        assert dock.width() <= DOCK + 10, (name, dock.width())  # nothing forces it wider
        _check_dock(w)
        viewer.close()


def test_all_docks_together_on_1366x768(make_napari_viewer):
    """Six docks opened one by one from the Plugins menu: tabbed in one column, the window
    still fits 768 px (at most 740 px tall), each dock usable at 370 px."""
    from qtpy.QtCore import Qt

    viewer = make_napari_viewer(show=True)
    win = viewer.window._qt_window
    win.resize(1366, 728)
    widgets = open_widgets(viewer)
    _pump()
    hint = win.minimumSizeHint().expandedTo(win.minimumSize())
    assert hint.height() <= 740, hint.height()
    assert win.height() <= 740, win.height()
    docks = [_dock_of(w) for w in widgets.values()]
    assert len({win.dockWidgetArea(d) for d in docks}) == 1
    win.resizeDocks([docks[0]], [DOCK], Qt.Horizontal)
    for name, w in widgets.items():
        _dock_of(w).raise_()          # the user clicks the dock's tab
        _pump()
        assert w.isVisible(), name
        assert _dock_of(w).width() <= DOCK + 10
        _check_dock(w)


def test_all_widgets_dock_fits_on_1366x768(make_napari_viewer):
    """`napari -w napari-nrf`'s dock (All widgets) at 370 px: the model on top, every tab."""
    from qtpy.QtCore import Qt

    viewer = make_napari_viewer(show=True)
    win = viewer.window._qt_window
    win.resize(1366, 728)
    dock, plugin = viewer.window.add_plugin_dock_widget("napari-nrf", "All widgets")
    _pump()
    win.resizeDocks([dock], [DOCK], Qt.Horizontal)
    assert win.minimumSizeHint().height() <= 740
    for name, w in plugin.widgets.items():
        if name != "Encoding model":
            plugin.show_tab(name)
        _pump()
        assert dock.width() <= DOCK + 10, (name, dock.width())
        _check_dock(w)
    _check_dock(plugin.widgets["Encoding model"])
