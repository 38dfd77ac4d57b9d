"""Rendering helpers of the widgets: volumes through the query engine, layers, colormaps.

Placement in MNI world coordinates goes through :func:`napari_nrf.space.layer_data` only.
Every layer the plugin makes carries ``metadata["napari_nrf"]`` (a dict with ``kind`` =
"response", "contrast", "template" or "region", and for volumes the :class:`Grid`).
"""

from __future__ import annotations

import threading
import weakref

import numpy as np

from napari_nrf import space
from napari_nrf.errors import Cancelled

from ._meta import META, layer_kind  # noqa: F401  (layer_kind: imported from here by the widgets)
from ._view import setup_mni_view

class RenderCancelled(Cancelled):
    """Raised in a render worker when the user cancelled."""


# ---- volumes ---------------------------------------------------------------------------
_ENGINES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_ENGINES_LOCK = threading.Lock()


def engine_for(model):
    """The :class:`napari_nrf.query.QueryEngine` of ``model`` on its current device.

    One engine per loaded model, so the grid's coordinate half that the engine caches is
    paid once, not on every render (on the demo model that is 40 % of a 2 mm render).
    """
    from napari_nrf.query import QueryEngine

    with _ENGINES_LOCK:
        eng = _ENGINES.get(model)
        if eng is None or str(eng.device) != str(model.device):
            eng = _ENGINES[model] = QueryEngine(model, device=model.device)
        return eng


def compute_volumes(model, features: dict, grid: space.Grid, mask=None, subject=None, progress=None,
                    cancel=None) -> np.ndarray:
    """Predicted volumes (B, *grid.shape) float32 of B images (NaN outside ``mask``).

    ``features``: dict name -> (B, ...) tensors (``model.encode_images``). Goes through
    the model's :class:`napari_nrf.query.QueryEngine` (chunked, cancellable, coordinate
    half cached per grid). ``cancel()`` returning True raises :class:`RenderCancelled`
    between chunks.
    """
    engine = engine_for(model)
    try:
        return np.asarray(engine.volume(features, grid, mask=mask, subject=subject, progress=progress,
                                        cancel=cancel), dtype=np.float32)
    except Exception as exc:
        if isinstance(exc, Cancelled):
            raise RenderCancelled(str(exc)) from exc
        raise


def robust_limit(volume: np.ndarray) -> float:
    """Symmetric display limit: the 99.5th percentile of |finite values| (1.0 if none)."""
    from napari_nrf.nifti_layers import robust_limit as _limit

    return _limit(volume)


# ---- colormap ---------------------------------------------------------------------------
def cold_hot(threshold: float = 0.2, name: str | None = None):
    """A diverging napari Colormap for symmetric limits (-m, m), centred at 0
    (:func:`napari_nrf.nifti_layers.cold_hot_spec`: |v| < ``threshold * m`` transparent)."""
    from napari.utils.colormaps import Colormap

    from napari_nrf.nifti_layers import cold_hot_spec

    return Colormap(**cold_hot_spec(threshold, name))


def volume_layer_data(volume: np.ndarray, grid: space.Grid, name: str, threshold: float = 0.2,
                      limit: float | None = None, **meta) -> tuple:
    """``(data, kwargs, "image")`` of a response volume in MNI world coordinates
    (:func:`napari_nrf.nifti_layers.response_layer_data`; NaN shown as 0, kept in metadata)."""
    from napari_nrf.nifti_layers import response_layer_data

    data, kw, kind = response_layer_data(volume, grid, name, threshold=threshold, limit=limit, **meta)
    kw["colormap"] = cold_hot(threshold)
    return data, kw, kind


def template_layer_data(resolution: float = 2.0) -> tuple:
    """``(data, kwargs, "image")`` of the MNI152 template at ``resolution`` mm."""
    grid = space.Grid.mni(resolution)
    data, kw = space.layer_data(space.template(grid), grid)
    kw.update(name="MNI152", colormap="gray", blending="translucent_no_depth", rendering="attenuated_mip",
              attenuation=0.3, metadata={META: {"kind": "template", "grid": grid}})
    return data, kw, "image"


def ensure_template(viewer, resolution: float = 2.0):
    """Add the MNI152 template once (below every other layer); returns the template layer."""
    for layer in viewer.layers:
        if layer_kind(layer) == "template" or _is_sample_template(layer):
            return layer
    data, kw, _ = template_layer_data(resolution)
    layer = viewer.add_image(data, **kw)
    viewer.layers.move(viewer.layers.index(layer), 0)
    setup_mni_view(viewer)  # neurological orientation, labelled mm axes, orientation letters
    return layer


def _is_sample_template(layer) -> bool:
    """The MNI152 layer of the plugin's sample data opened before this session's helpers
    tagged it: reuse it instead of adding a second template."""
    return getattr(layer, "name", None) == "MNI152" and layer.ndim == 3


def layer_volume(layer) -> tuple[np.ndarray, space.Grid]:
    """(volume (X, Y, Z), grid) of a 3D napari layer placed in MNI world coordinates."""
    md = (layer.metadata or {}).get(META) or {}
    if md.get("volume") is not None and md.get("grid") is not None:
        return md["volume"], md["grid"]
    return space.layer_to_volume(np.asarray(layer.data), layer.scale, layer.translate)


def mni_status(viewer, position=None) -> str:
    """'MNI (x, y, z) = (.., .., ..) mm' plus what the top visible layer holds there: a
    label atlas or cluster map's region name, a movie prediction's value at the time on
    the slider, or a volume's value (a volume with no value there, NaN outside its extent,
    gives way to the layer below)."""
    pos = np.asarray(viewer.cursor.position if position is None else position, dtype=float)
    if pos.size < 3:
        return ""
    xyz = space.world_to_mni(pos)
    text = f"MNI (x, y, z) = ({xyz[0]:.1f}, {xyz[1]:.1f}, {xyz[2]:.1f}) mm"
    for layer in list(viewer.layers)[::-1]:
        if not layer.visible:
            continue
        what = _layer_readout(layer, pos, xyz)
        if what:
            return f"{text}; {what}"
    return text


def _layer_readout(layer, pos, xyz) -> str:
    """What ``layer`` holds at world ``pos`` / MNI ``xyz`` as status text ("" for nothing)."""
    from napari.layers import Labels

    kind = layer_kind(layer)
    if isinstance(layer, Labels):
        try:
            v = layer.get_value(pos[-layer.ndim:], world=True)
        except (IndexError, ValueError, TypeError):
            return ""
        if v is None or int(v) == 0:
            return ""
        from napari_nrf.nifti_layers import _names_from_features

        name = _names_from_features(getattr(layer, "features", None)).get(int(v))
        return f"{layer.name}: {name} ({int(v)})" if name else f"{layer.name}: {int(v)}"
    if kind == "movie":
        try:
            v = layer.get_value(pos[-layer.ndim:], world=True)
        except (IndexError, ValueError, TypeError):
            return ""
        if v is None or not np.isfinite(float(v)):
            return ""
        return f"{layer.name} = {float(v):.3g} at t = {pos[-layer.ndim]:.1f} s"
    if kind not in ("response", "contrast", "template"):
        return ""
    vol, grid = layer_volume(layer)
    ijk, inside = grid.nearest_index(xyz)
    if not inside:
        return ""
    v = float(vol[tuple(ijk)])
    return f"{layer.name} = {v:.3g}" if np.isfinite(v) else ""


# ---- OpenGL -------------------------------------------------------------------------------
SOFTWARE_GL = ("llvmpipe", "softpipe", "swrast", "software rasterizer")


def opengl_renderer(viewer) -> str:
    """The OpenGL renderer string of ``viewer``'s canvas ("" when it cannot be read)."""
    try:
        from vispy.gloo import gl

        viewer.window._qt_viewer.canvas._scene_canvas.set_current()
        return str(gl.glGetParameter(gl.GL_RENDERER))
    except Exception:  # no canvas or a napari without these internals
        return ""


def is_software_opengl(renderer: str) -> bool:
    """True for Mesa's CPU rasterisers (Xvfb, remote desktops, VMs without a GPU), where a
    3D volume frame of the 2 mm template takes seconds instead of milliseconds."""
    r = renderer.lower()
    return any(s in r for s in SOFTWARE_GL)


def draw_now(viewer) -> None:
    """Paint the canvas now (so that "visible" means drawn, not just scheduled)."""
    try:
        from qtpy.QtWidgets import QApplication

        viewer.window._qt_viewer.canvas.native.repaint()
        QApplication.processEvents()
    except Exception:  # a napari without these internals: the event loop will draw it
        pass


# ---- workers ------------------------------------------------------------------------------
def call_safely(fn, *args, **kwargs):
    """``(True, fn(...))`` or ``(False, exception)``.

    Worker bodies go through this so that errors come back through ``returned`` and are
    shown as napari notifications by our handlers (napari 0.9's own ``errored`` status
    hook raises a TypeError in the Qt event loop when a worker fails).
    """
    try:
        return True, fn(*args, **kwargs)
    except Exception as exc:  # reported to the user by the caller's handler
        return False, exc


def start_worker(fn, *args, on_result, on_error, on_finished=None, cancel_event=None):
    """Run ``fn(*args, cancel=...)`` in a napari thread worker; results and errors come
    back on the main thread.

    ``fn`` gets a ``cancel()`` callable that is True once ``cancel_event`` is set or the
    worker was asked to quit (napari's task-status cancel button calls ``worker.quit``).
    A worker that quits emits no result: ``on_error`` then gets a :class:`RenderCancelled`.
    """
    from napari.qt.threading import create_worker

    holder = []

    def cancel():
        return bool((cancel_event is not None and cancel_event.is_set()) or (holder and holder[0].abort_requested))

    worker = create_worker(call_safely, fn, *args, cancel=cancel)
    holder.append(worker)
    got = []

    def _returned(res):
        got.append(True)
        ok, value = res
        (on_result if ok else on_error)(value)

    def _finished():
        if not got:  # quit before returning
            on_error(RenderCancelled("cancelled"))
        if on_finished is not None:
            on_finished()

    worker.returned.connect(_returned)
    worker.finished.connect(_finished)
    worker.start()
    return worker
