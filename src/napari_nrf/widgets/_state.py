"""State shared by the plugin's dock widgets of one viewer (the loaded model, the library).

The widgets of a viewer find each other's data through :func:`state_for`, so the Response
volume and Region explorer widgets follow the model chosen in the Encoding model widget
without holding references to each other.
"""

from __future__ import annotations

import weakref

from qtpy.QtCore import QObject, Signal

_STATES: dict[int, "NrfState"] = {}


class NrfState(QObject):
    """Per-viewer state.

    Signals
    -------
    model_changed(object)
        Emitted with the new :class:`napari_nrf.models.EncodingModel` (or None).
    library_changed(object)
        Emitted with the new :class:`napari_nrf.widgets.region_widget.ImageLibrary`.
    """

    model_changed = Signal(object)
    library_changed = Signal(object)

    def __init__(self):
        super().__init__()
        self.model = None
        self.model_path = None
        self.library = None

    def set_model(self, model, path=None) -> None:
        self.model, self.model_path = model, path
        self.model_changed.emit(model)

    def set_library(self, library) -> None:
        self.library = library
        self.library_changed.emit(library)


def state_for(viewer) -> NrfState:
    """The :class:`NrfState` of ``viewer`` (created on first use, dropped with the viewer)."""
    key = id(viewer)
    st = _STATES.get(key)
    if st is None:
        st = _STATES[key] = NrfState()
        try:
            weakref.finalize(viewer, _STATES.pop, key, None)
        except TypeError:  # not weak-referenceable: keep it for the session
            pass
    return st
