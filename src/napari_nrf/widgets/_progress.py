"""A progress bar that is cheap to update, mirrored in napari's activity dock.

Why not QProgressBar's busy mode (range 0..0): it animates continuously, and with a
QOpenGLWidget (napari's canvas) in the window every repaint of any widget recomposes the
whole window through OpenGL. On software OpenGL (Mesa llvmpipe, e.g. under Xvfb or a
remote desktop) that costs 50-100 ms a frame and took the CPU from the render worker.
So: a determinate bar that starts at 0 and is repainted at most every ``min_interval``
seconds or when the shown percentage changes. While idle it shows nothing (no "0%").
Each job also appears in napari's activity dock (``napari.utils.progress``), updated at
the same throttled moments.
"""

from __future__ import annotations

import time

from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import QHBoxLayout, QProgressBar, QPushButton, QWidget

STEPS = 1000


class ProgressBar(QProgressBar):
    """QProgressBar with :meth:`start`, :meth:`report` (throttled) and :meth:`reset_idle`."""

    def __init__(self, parent=None, min_interval: float = 0.25):
        super().__init__(parent)
        self.min_interval = float(min_interval)
        self.setRange(0, STEPS)
        self.setValue(0)
        self.setTextVisible(False)  # idle: an empty bar, not "0%"
        self._last = 0.0
        self.activity = None  # the napari.utils.progress of the running job

    def start(self, desc: str | None = None) -> None:
        """A job started: 0 %, no busy animation; ``desc`` names it in napari's activity dock."""
        self.setRange(0, STEPS)
        self.setValue(0)
        self.setTextVisible(True)
        self._last = time.monotonic()
        self._close_activity()
        try:
            from napari.utils import progress

            self.activity = progress(total=STEPS, desc=desc or "napari-nrf")
        except Exception:  # no napari progress machinery: the widget's bar is enough
            self.activity = None

    def report(self, done: int, total: int) -> None:
        """``done`` of ``total`` units finished; repaints only when worth it."""
        if total <= 0:
            return
        v = int(STEPS * min(done, total) / total)
        now = time.monotonic()
        if v >= STEPS or (v // 10 != self.value() // 10 and now - self._last >= self.min_interval):
            self._last = now
            self.setValue(v)
            if self.activity is not None:
                self.activity.update(max(0, v - self.activity.n))

    def reset_idle(self) -> None:
        """The job ended (done, failed or cancelled)."""
        self.setRange(0, STEPS)
        self.setValue(0)
        self.setTextVisible(False)
        self._close_activity()

    def _close_activity(self) -> None:
        if self.activity is not None:
            try:
                self.activity.close()
            except Exception:  # already closed with its viewer
                pass
            self.activity = None


def error_line(exc) -> str:
    """``exc`` as one line (its type when it has no message), so a notification shows the
    reason without being expanded."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def notify_error(what: str, exc) -> str:
    """Show napari's error notification "napari-nrf: <reason> (<what>)" and return the line.

    The reason comes first: napari's toast shows the start of one line only."""
    from napari.utils.notifications import show_error

    line = f"napari-nrf: {error_line(exc)} ({what})"
    show_error(line)
    return line


class _Carrier(QObject):
    changed = Signal(int, int)


class JobPanel(QWidget):
    """The progress bar and Cancel button every dock of the plugin shows under its action
    (one component, not a block copied per widget).

    :meth:`start` a job (the bar at 0 %, Cancel enabled), hand :meth:`reporter` to the
    worker and :meth:`finish` it (done, failed or cancelled). Cancel emits
    ``cancel_requested``.
    """

    cancel_requested = Signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        self.progress_bar = ProgressBar()
        row.addWidget(self.progress_bar, 1)
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setEnabled(False)
        self.cancel_btn.clicked.connect(self.cancel_requested)
        row.addWidget(self.cancel_btn)
        # parentless: a worker still reporting after the dock closed emits into nothing
        self._carrier = _Carrier()
        self._carrier.changed.connect(self.progress_bar.report)

    def start(self, desc: str | None = None) -> None:
        self.progress_bar.start(desc)
        self.cancel_btn.setEnabled(True)

    def reporter(self):
        """A ``progress(done, total, *_)`` callable for a worker (any thread)."""
        carrier = self._carrier

        def progress(done, total, *_):
            carrier.changed.emit(int(done), int(total or 0))

        return progress

    def finish(self) -> None:
        self.cancel_btn.setEnabled(False)
        self.progress_bar.reset_idle()
