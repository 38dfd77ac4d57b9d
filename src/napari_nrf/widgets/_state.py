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
from pathlib import Path

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
    model_loading(str)
        A widget started loading the model file of this name (the card says so).
    model_failed(str)
        Loading failed with this one-line reason; the model in use stays.
    """

    model_changed = Signal(object)
    library_changed = Signal(object)
    region_source = Signal(str)
    model_loading = Signal(str)
    model_failed = Signal(str)

    def __init__(self):
        super().__init__()
        self.model = None
        self.model_path = None
        self.library = None

    def set_model(self, model, path=None) -> None:
        """Make ``model`` (loaded from ``path``, a str or Path, or None) the one every
        widget of this viewer uses."""
        self.model, self.model_path = model, (Path(path) if path else None)
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


NIFTI_PATTERNS = ("*.nii", "*.nii.gz")
PLUGIN = "napari-nrf"


def prefer_our_nifti_reader() -> list[str]:
    """Make napari-nrf napari's preferred reader of ``*.nii`` / ``*.nii.gz`` (napari's
    Preferences > Plugins > File extension readers), for each pattern with no preference
    yet: napari's own reader also claims NIfTI files, so without one File > Open asks
    which plugin to use every time, and napari's choice opens the volume in voxel space,
    not at its MNI place. A preference the user set (to napari or another plugin) stays.
    Returns the patterns set now."""
    try:
        from napari.settings import get_settings

        plugins = get_settings().plugins
        current = dict(plugins.extension2reader)
    except Exception:  # noqa: BLE001 - a napari without these settings: its dialog stays
        return []
    new = [p for p in NIFTI_PATTERNS if p not in current]
    if new:
        plugins.extension2reader = {**current, **{p: PLUGIN for p in new}}
    return new


def state_for(viewer) -> NrfState:
    """The :class:`NrfState` of ``viewer`` or of the viewer behind a napari proxy
    (created on first use, dropped with the viewer)."""
    viewer = real_viewer(viewer)
    key = id(viewer)
    st = _STATES.get(key)
    if st is None:
        st = _STATES[key] = NrfState()
        prefer_our_nifti_reader()  # the plugin's first use in this viewer
        try:
            weakref.finalize(viewer, _STATES.pop, key, None)
        except TypeError:  # not weak-referenceable: keep it for the session
            pass
    return st
