"""A progress bar that is cheap to update.

Why not QProgressBar's busy mode (range 0..0): it animates continuously, and with a
QOpenGLWidget (napari's canvas) in the window every repaint of any widget recomposes the
whole window through OpenGL. On software OpenGL (Mesa llvmpipe, e.g. under Xvfb or a
remote desktop) that costs 50-100 ms a frame and took the CPU from the render worker.
So: a determinate bar that starts at 0 and is repainted at most every ``min_interval``
seconds or when the shown percentage changes.
"""

from __future__ import annotations

import time

from qtpy.QtWidgets import QProgressBar

STEPS = 1000


class ProgressBar(QProgressBar):
    """QProgressBar with :meth:`start`, :meth:`report` (throttled) and :meth:`reset_idle`."""

    def __init__(self, parent=None, min_interval: float = 0.25):
        super().__init__(parent)
        self.min_interval = float(min_interval)
        self.setRange(0, STEPS)
        self.setValue(0)
        self._last = 0.0

    def start(self) -> None:
        """A job started: 0 %, no busy animation."""
        self.setRange(0, STEPS)
        self.setValue(0)
        self._last = time.monotonic()

    def report(self, done: int, total: int) -> None:
        """``done`` of ``total`` units finished; repaints only when worth it."""
        if total <= 0:
            return
        v = int(STEPS * min(done, total) / total)
        now = time.monotonic()
        if v >= STEPS or (v // 10 != self.value() // 10 and now - self._last >= self.min_interval):
            self._last = now
            self.setValue(v)

    def reset_idle(self) -> None:
        """The job ended (done, failed or cancelled)."""
        self.setRange(0, STEPS)
        self.setValue(0)
