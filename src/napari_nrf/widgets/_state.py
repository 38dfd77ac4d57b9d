"""State shared by the plugin's dock widgets of one viewer (the loaded model, the library).

The widgets of a viewer find each other's data through :func:`state_for`, so the Response
volume and Region explorer widgets follow the model chosen in the Encoding model widget
without holding references to each other.

napari hands a widget opened from the Plugins menu (or ``napari -w``) a
``PublicOnlyProxy`` of the viewer, a new proxy object per widget; the state is keyed on
the viewer behind the proxy, held weakly, so every widget of a viewer finds the same
state and a closed viewer takes its state with it.
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
    region_source(str)
        A widget made a Labels layer worth picking regions on (a cluster map): the Region
        explorer switches its picking to the layer of that name.
    """

    model_changed = Signal(object)
    library_changed = Signal(object)
    region_source = Signal(str)

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


def real_viewer(viewer):
    """The viewer object behind napari's ``PublicOnlyProxy`` wrappers (or ``viewer`` itself)."""
    seen = 0
    while hasattr(type(viewer), "__wrapped__") or type(viewer).__name__.endswith("Proxy"):
        inner = getattr(viewer, "__wrapped__", None)
        if inner is None or inner is viewer or seen > 8:
            break
        viewer, seen = inner, seen + 1
    return viewer


def state_for(viewer) -> NrfState:
    """The :class:`NrfState` of ``viewer`` or of the viewer behind a napari proxy
    (created on first use, dropped with the viewer)."""
    viewer = real_viewer(viewer)
    key = id(viewer)
    st = _STATES.get(key)
    if st is None:
        st = _STATES[key] = NrfState()
        try:
            weakref.finalize(viewer, _STATES.pop, key, None)
        except TypeError:  # not weak-referenceable: keep it for the session
            pass
    return st
