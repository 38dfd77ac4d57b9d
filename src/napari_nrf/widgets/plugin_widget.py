"""The whole plugin in one dock: what ``napari -w napari-nrf`` and Plugins > napari-nrf >
All widgets open.

The Encoding model widget sits on top (the model is what every other widget needs); the
other widgets are tabs below it (each scrolls its own controls), so the dock fits a
1366 x 768 screen next to the canvas. Every inner widget gets the viewer napari handed this one and
so shares the viewer's state (:func:`napari_nrf.widgets._state.state_for`).
"""

from __future__ import annotations

import importlib

from qtpy.QtWidgets import QTabWidget, QVBoxLayout, QWidget

from ._layout import fit_controls, install_dock_fit

MODEL = "Encoding model"


class PluginWidget(QWidget):
    """Every dock widget of the plugin: the model on top, the others in tabs.

    Attributes
    ----------
    widgets : dict
        Display name -> inner widget (the same classes the Plugins menu opens one by one).
    tabs : QTabWidget
    """

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        from napari_nrf.widgets import widget_commands

        self.viewer = napari_viewer
        self.widgets: dict[str, QWidget] = {}
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        self.tabs = QTabWidget()
        self.tabs.setDocumentMode(True)
        for name, target in widget_commands():
            mod, attr = target.split(":")
            w = getattr(importlib.import_module(mod), attr)(napari_viewer=napari_viewer)
            self.widgets[name] = w
            if name == MODEL:
                lay.addWidget(w)
            else:
                self.tabs.addTab(w, name)  # each widget scrolls its own controls
        lay.addWidget(self.tabs, 1)
        # A first launch starts somewhere: the MNI template on the canvas, the drop zone in
        # front, the demo model one click away (Encoding model's button).
        if len(napari_viewer.layers) == 0:
            from ._render import ensure_template

            ensure_template(napari_viewer)
        self.tabs.setCurrentIndex(0)
        fit_controls(self)  # every tab, shown or not, asks for a dock's width only
        install_dock_fit(self)

    def show_tab(self, name: str) -> QWidget:
        """Bring the tab of widget ``name`` to the front; returns the widget."""
        w = self.widgets[name]
        for i in range(self.tabs.count()):
            if self.tabs.tabText(i) == name:
                self.tabs.setCurrentIndex(i)
        return w
