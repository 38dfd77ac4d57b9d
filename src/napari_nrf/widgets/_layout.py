"""Dock layouts that fit small screens.

Every dock widget of the plugin puts its controls in a vertical scroll area
(:func:`scrolling_layout`), so its minimum height is a few lines rather than the sum of
its controls: all of them docked at once still fit a 1920 x 1080 screen, and on a
1366 x 768 one each dock scrolls instead of pushing the canvas away
(tests/test_window_fit_gui.py measures it).
"""

from __future__ import annotations

from qtpy.QtWidgets import QFrame, QScrollArea, QVBoxLayout, QWidget

MIN_DOCK_HEIGHT = 120  # px: a dock can shrink to this and still show a few controls


def scrolling_layout(widget: QWidget) -> QVBoxLayout:
    """Give ``widget`` a vertical scroll area holding an inner widget; returns the inner
    widget's QVBoxLayout, where the caller adds its controls."""
    outer = QVBoxLayout(widget)
    outer.setContentsMargins(0, 0, 0, 0)
    area = QScrollArea(widget)
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.NoFrame)
    area.setMinimumHeight(MIN_DOCK_HEIGHT)
    inner = QWidget()
    area.setWidget(inner)
    outer.addWidget(area)
    widget.scroll_area = area
    return QVBoxLayout(inner)
