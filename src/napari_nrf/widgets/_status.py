"""Status bar: MNI (x, y, z) in mm and the value under the cursor.

napari writes the active layer's status (world coordinates in (z, y, x) order) on every
mouse move; we rewrite its coordinate field to MNI order with the value of the top
visible volume of the plugin (template, response or contrast layer).
"""

from __future__ import annotations

from ._render import mni_status
from ._state import state_for


def install_mni_status(viewer) -> None:
    """Connect the MNI status rewrite to ``viewer`` once (idempotent)."""
    st = state_for(viewer)
    if getattr(st, "_status_installed", False):
        return
    st._status_installed = True
    from ._view import setup_mni_view

    setup_mni_view(viewer)
    busy = {"on": False}

    def _rewrite(event=None):
        if busy["on"] or viewer.dims.ndim < 3:
            return
        text = mni_status(viewer)
        if not text:
            return
        busy["on"] = True
        try:
            status = viewer.status
            if isinstance(status, dict):
                status = dict(status)
                status["coordinates"] = text
                viewer.status = status
            else:
                viewer.status = text
        finally:
            busy["on"] = False

    viewer.events.status.connect(_rewrite)
