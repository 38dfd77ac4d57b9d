"""Dock layouts that fit small screens.

Every dock widget of the plugin puts its controls in a vertical scroll area
(:func:`scrolling_layout`), so its minimum height is a few lines rather than the sum of
its controls. Horizontally nothing scrolls: the scroll area asks for the width its
controls need (:class:`FitScrollArea`), and the controls are made to need little (forms
wrap their long rows, combo boxes do not grow with their longest item, long labels wrap:
:func:`fit_controls`), so every widget is usable in a 360-380 px dock.

When a dock of the plugin is first shown (:func:`settle_dock`) it is made at least
:data:`DOCK_WIDTH` px wide and, when another dock of the plugin already stands in the
same dock area, tabbed with it: six docks opened one by one from the Plugins menu do not
pile up into a column taller than a 768 px screen (tests/test_window_fit_gui.py and
tests/test_dock_fit_gui.py measure both).
"""

from __future__ import annotations

from qtpy.QtCore import QEvent, QObject, QSize, Qt, QTimer
from qtpy.QtWidgets import (QAbstractSpinBox, QCheckBox, QComboBox, QDockWidget, QFormLayout, QFrame, QLabel,
                            QMainWindow, QScrollArea, QVBoxLayout, QWidget)

MIN_DOCK_HEIGHT = 120  # px: a dock can shrink to this and still show a few controls
DOCK_WIDTH = 370  # px: the width a dock of the plugin opens with
SPIN_MIN = 90  # px: a spin box asks for this width at most
DOCK_FLOOR = 50  # px: napari's own minimum width of a dock
COMBO_MIN = 110  # px: a combo box asks for this width, not its longest item's (Qt elides)


class FitScrollArea(QScrollArea):
    """A vertical-only scroll area whose minimum width is its content's minimum width
    (plus the vertical scroll bar), so the dock never scrolls or clips sideways. Its
    minimum height is :data:`MIN_DOCK_HEIGHT`, or its content's whole minimum height when
    :attr:`show_all` is set (the model card, which must stay readable)."""

    show_all = False

    def minimumSizeHint(self) -> QSize:  # noqa: N802 - Qt's name
        inner = self.widget()
        hint = inner.minimumSizeHint() if inner is not None else QSize(0, 0)
        h = max(MIN_DOCK_HEIGHT, hint.height() + 2 * self.frameWidth() if self.show_all else 0)
        return QSize(hint.width() + self.verticalScrollBar().sizeHint().width() + 2 * self.frameWidth(), h)


def scrolling_layout(widget: QWidget) -> QVBoxLayout:
    """Give ``widget`` a vertical scroll area holding an inner widget; returns the inner
    widget's QVBoxLayout, where the caller adds its controls. When ``widget`` is first
    shown its controls are fitted (:func:`fit_controls`) and its dock settled
    (:func:`settle_dock`)."""
    outer = QVBoxLayout(widget)
    outer.setContentsMargins(0, 0, 0, 0)
    area = FitScrollArea(widget)
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.NoFrame)
    area.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
    inner = QWidget()
    area.setWidget(inner)
    outer.addWidget(area)
    widget.scroll_area = area
    install_dock_fit(widget)
    return QVBoxLayout(inner)


def fit_controls(root: QWidget) -> None:
    """Make the controls under ``root`` ask for little width: form rows wrap (label above
    the field) when the dock is narrow, combo boxes ask for :data:`COMBO_MIN` px
    rather than their longest item's, spin boxes do not reserve room for their widest value,
    and a check box whose text is too long gets a shorter text with the full one as its
    tooltip."""
    for form in root.findChildren(QFormLayout):
        form.setRowWrapPolicy(QFormLayout.WrapLongRows)
        form.setFieldGrowthPolicy(QFormLayout.AllNonFixedFieldsGrow)
    for combo in root.findChildren(QComboBox):
        # a layout takes an explicit minimum width over the hint (which is the longest item)
        hint = combo.minimumSizeHint().width()
        combo.setMinimumWidth(COMBO_MIN if combo.count() == 0 else min(COMBO_MIN, hint))
    for spin in root.findChildren(QAbstractSpinBox):
        # Qt sizes a spin box for its widest value (a range of ±1e6: 150 px) instead of the
        # value it shows
        spin.setMinimumWidth(min(SPIN_MIN, spin.minimumSizeHint().width()))
    for box in root.findChildren(QCheckBox):
        if box.minimumSizeHint().width() > DOCK_WIDTH - 40 and not box.toolTip():
            box.setToolTip(box.text())
    for lab in root.findChildren(QLabel):
        if lab.pixmap() is None or lab.pixmap().isNull():
            if lab.minimumSizeHint().width() > DOCK_WIDTH - 60:
                lab.setWordWrap(True)
    # the hints changed: every layout and scroll area above asks again
    for w in [root, *root.findChildren(QWidget)]:
        w.updateGeometry()
        if w.layout() is not None:
            w.layout().invalidate()
    # a scroll area does not hear of its content's new hint: tell it last
    for area in root.findChildren(QScrollArea):
        area.updateGeometry()


def _dock_of(widget: QWidget):
    w = widget.parentWidget()
    while w is not None and not isinstance(w, QDockWidget):
        w = w.parentWidget()
    return w


def settle_dock(widget: QWidget) -> None:
    """Once ``widget`` is shown in a dock of napari's window: make the dock at least
    :data:`DOCK_WIDTH` px wide, and tab it with the plugin's other docks in the same area
    (the newest in front). Widgets inside another plugin widget (All widgets' tabs) and
    floating docks are left alone."""
    dock = _dock_of(widget)
    if dock is None or dock.isFloating() or getattr(dock, "_nrf_settled", False) or _inside_plugin(widget, dock):
        return
    win = dock.parentWidget()
    while win is not None and not isinstance(win, QMainWindow):
        win = win.parentWidget()
    if win is None:
        return
    dock._nrf_settled = True
    area = win.dockWidgetArea(dock)
    others = [d for d in win.findChildren(QDockWidget)
              if d is not dock and getattr(d, "_nrf_settled", False) and not d.isFloating()
              and d.isVisible() and win.dockWidgetArea(d) == area]
    if others:
        win.tabifyDockWidget(others[-1], dock)
        dock.show()
        dock.raise_()
    if area in (Qt.LeftDockWidgetArea, Qt.RightDockWidgetArea):
        # once the fitted controls' hints reached the dock (the next event loop turn)
        QTimer.singleShot(0, lambda: _resize_dock(win, dock))


def _resize_dock(win, dock) -> None:
    try:
        # A QDockWidget with an explicit minimum (napari sets 50 px) keeps the largest
        # minimum its layout ever computed (here the one from before the fit); put napari's
        # back so the layout computes it again from the fitted controls.
        dock.setMinimumWidth(DOCK_FLOOR)
        dock.layout().invalidate()
        dock.layout().activate()
        win.resizeDocks([dock], [DOCK_WIDTH], Qt.Horizontal)
    except RuntimeError:  # closed meanwhile
        pass


def _inside_plugin(widget: QWidget, dock: QDockWidget) -> bool:
    """True when ``widget`` sits inside another plugin widget (e.g. All widgets) in ``dock``."""
    w = widget.parentWidget()
    while w is not None and w is not dock:
        if getattr(w, "_nrf_dock_fit", None) is not None:
            return True
        w = w.parentWidget()
    return False


class _DockFit(QObject):
    """Event filter: on the first Show of its widget, fit its controls and settle its dock."""

    def __init__(self, widget: QWidget):
        super().__init__(widget)
        self._done = False

    def eventFilter(self, obj, event):  # noqa: N802 - Qt's name
        if not self._done and event.type() == QEvent.Show:
            self._done = True
            fit_controls(obj)
            _refresh_areas(obj)
            settle_dock(obj)
        return False


def _refresh_areas(root: QWidget) -> None:
    """Scroll areas ask their content's (new) minimum again."""
    for area in root.findChildren(QScrollArea):
        inner = area.widget()
        if inner is not None and inner.layout() is not None:
            inner.layout().activate()
        area.updateGeometry()
    if root.layout() is not None:
        root.layout().activate()


def install_dock_fit(widget: QWidget) -> None:
    """Fit ``widget``'s controls and settle its dock when it is first shown (idempotent)."""
    if getattr(widget, "_nrf_dock_fit", None) is None:
        widget._nrf_dock_fit = _DockFit(widget)
        widget.installEventFilter(widget._nrf_dock_fit)
