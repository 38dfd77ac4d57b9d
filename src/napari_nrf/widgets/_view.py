"""The viewer as a neuroscientist reads it: MNI axes in mm, orientation letters, colorbars.

:func:`setup_mni_view` (idempotent, called by every widget and by the template) turns on
napari's scale bar (mm, from the layers' units) and axes (labelled z, y, x), the
neurological camera orientation of :data:`napari_nrf.space.NAPARI_CAMERA_ORIENTATION`, a
colorbar on every response layer, the slice position in mm beside each slider, and a text
overlay with the orientation letters of the screen's edges (L/R, A/P, S/I, in 2D and 3D),
the slice position in mm and the units of the selected response layer. :func:`go_to_mni` moves the view to an MNI point.
"""

from __future__ import annotations

import numpy as np

from napari_nrf import space

from ._meta import META, layer_kind

VOLUME_KINDS = ("response", "contrast")
PLANE = {0: "sagittal", 1: "coronal", 2: "axial"}  # MNI axis of the slice -> plane name


def _mni_axis(viewer, dim: int) -> int | None:
    """MNI axis (0 x, 1 y, 2 z) of napari world dimension ``dim`` (None for a volume axis)."""
    a = viewer.dims.ndim - 1 - int(dim)
    return a if 0 <= a < 3 else None


def direction_letters(vec) -> str:
    """Letters of an MNI direction (3,): "R", "A", "S" ... or two for an oblique one ("RS")."""
    v = np.asarray(vec, float)
    n = np.linalg.norm(v)
    if not np.isfinite(n) or n == 0:
        return "?"
    v = v / n
    order = np.argsort(-np.abs(v))
    out = [space.MNI_AXIS_LETTERS[a][int(v[a] > 0)] for a in order if abs(v[a]) > 0.38]
    return "".join(out[:2]) or "?"


def _to_mni(viewer, vec_displayed, displayed) -> np.ndarray:
    out = np.zeros(3)
    for value, d in zip(vec_displayed, displayed):
        a = _mni_axis(viewer, d)
        if a is not None:
            out[a] = value
    return out


def screen_directions(viewer) -> tuple[np.ndarray, np.ndarray]:
    """MNI directions (3,) of the screen's right and up in the current view."""
    displayed = list(viewer.dims.displayed)
    _depth, vertical, horizontal = (str(getattr(o, "value", o)) for o in viewer.camera.orientation)
    if viewer.dims.ndisplay == 2:
        vert, horiz = displayed[-2], displayed[-1]
        up = np.zeros(3)
        right = np.zeros(3)
        if _mni_axis(viewer, vert) is not None:
            up[_mni_axis(viewer, vert)] = 1.0 if vertical == "up" else -1.0
        if _mni_axis(viewer, horiz) is not None:
            right[_mni_axis(viewer, horiz)] = 1.0 if horizontal == "right" else -1.0
        return right, up
    view = _to_mni(viewer, viewer.camera.view_direction, displayed)
    up = _to_mni(viewer, viewer.camera.up_direction, displayed)
    # With the displayed (z, y, x) and the orientation ("towards", "up", "right") the
    # rendering is a proper rotation and right = view x up (checked in tests/test_view_gui.py);
    # each flipped axis or swapped pair of displayed axes mirrors it.
    sign = 1.0
    sign *= -1.0 if _depth == "away" else 1.0
    sign *= -1.0 if vertical == "down" else 1.0
    sign *= -1.0 if horizontal == "left" else 1.0
    axes = [_mni_axis(viewer, d) for d in displayed]
    if None not in axes:
        perm = [2 - a for a in axes]  # position of z, y, x
        inversions = sum(1 for i in range(3) for j in range(i + 1, 3) if perm[i] > perm[j])
        sign *= -1.0 if inversions % 2 else 1.0
    return sign * np.cross(view, up), up


def orientation_text(viewer) -> str:
    """'left L | right R | top A | bottom P' plus, in 2D, the slice ("axial z = 10.0 mm")."""
    right, up = screen_directions(viewer)
    text = (f"left {direction_letters(-right)} | right {direction_letters(right)} | "
            f"top {direction_letters(up)} | bottom {direction_letters(-up)}")
    if viewer.dims.ndisplay == 2 and viewer.dims.ndim >= 3:
        for d in viewer.dims.not_displayed:
            a = _mni_axis(viewer, d)
            if a is not None:
                text += f"  ·  {PLANE[a]} {'xyz'[a]} = {float(viewer.dims.point[d]):.1f} mm"
    return text


def colour_layer(viewer):
    """The response layer whose colours the view explains: the selected one, else the top
    visible one (None when no response layer is visible)."""
    layers = [ly for ly in viewer.layers if layer_kind(ly) in VOLUME_KINDS and ly.visible]
    active = viewer.layers.selection.active
    return active if active in layers else (layers[-1] if layers else None)


def sync_colorbars(viewer) -> None:
    """One colour bar, the :func:`colour_layer`'s, which the text overlay names (napari's
    colour bars carry no title: five stacked bars could not be told apart)."""
    target = colour_layer(viewer)
    for ly in viewer.layers:
        if layer_kind(ly) in VOLUME_KINDS:
            try:
                ly.colorbar.visible = ly == target  # (==: napari may hand us a new proxy per access)
            except AttributeError:  # an older napari without layer colorbars
                return


def units_text(viewer) -> str:
    """'<layer>: <units>, colour limits ±m' of the selected (else the top visible) response layer."""
    layer = colour_layer(viewer)
    if layer is None:
        return ""
    md = layer.metadata.get(META) or {}
    hi = float(layer.contrast_limits[1])
    mask = md.get("mask")
    where = "" if mask in (None, "data") else "; outside the model's data: extrapolation"
    return f"{layer.name}: {md.get('units') or 'predicted response'}, colour ±{hi:.2g}{where}"


def update_overlay(viewer) -> None:
    lines = [orientation_text(viewer)] if viewer.dims.ndim >= 3 else []
    u = units_text(viewer)
    if u:
        lines.append(u)
    viewer.text_overlay.text = "\n".join(lines)
    sync_colorbars(viewer)
    update_slider_labels(viewer)


def slider_label(viewer, dim: int) -> str | None:
    """The text of napari world dimension ``dim``'s slider: "z -2.0 mm" for an MNI axis,
    "t 3.9 s" for a movie's time axis, None for another axis (napari's own label stays)."""
    a = _mni_axis(viewer, dim)
    if a is None:
        if str(viewer.dims.axis_labels[dim]).startswith("time"):  # a movie prediction's time axis
            return f"t {float(viewer.dims.point[dim]):.1f} s"
        return None
    return f"{'xyz'[a]} {float(viewer.dims.point[dim]):.1f} mm"


def update_slider_labels(viewer) -> None:
    """Show the slice position in MNI mm beside each spatial slider (napari's slider counts
    steps). Only the Qt label's text changes, with its signals blocked: the dims model keeps
    its axis labels ("z", "y", "x"), which napari uses to align layers."""
    from ._state import real_viewer

    try:
        qt_dims = real_viewer(viewer).window._qt_viewer.dims
        sliders = qt_dims.slider_widgets
    except AttributeError:  # no Qt window (or another napari): the overlay says the slice
        return
    changed = False
    for dim, sw in enumerate(sliders):
        text = slider_label(viewer, dim) if dim in viewer.dims.not_displayed else None
        label = getattr(sw, "axis_label", None)
        if label is None or text is None:
            continue
        if label.text() != text:
            label.blockSignals(True)
            label.setText(text)
            label.setToolTip(f"slider position ({viewer.dims.axis_labels[dim]} axis)")
            label.blockSignals(False)
            changed = True
    if changed and hasattr(qt_dims, "_resize_axis_labels"):
        qt_dims._resize_axis_labels()


def show_colorbar(layer) -> None:
    """Turn on napari's layer colorbar (napari >= 0.5) of a response layer."""
    try:
        layer.colorbar.visible = True
    except AttributeError:  # an older napari without layer colorbars
        pass


def setup_mni_view(viewer) -> None:
    """Scale bar, labelled axes, orientation letters, colorbars and the neurological
    camera orientation on ``viewer`` (once per viewer; later layers get their colorbar)."""
    from ._state import state_for

    st = state_for(viewer)
    if getattr(st, "_view_installed", False):
        return
    st._view_installed = True
    try:
        viewer.camera.orientation = space.NAPARI_CAMERA_ORIENTATION
    except Exception:  # older napari without camera.orientation
        pass
    viewer.scale_bar.visible = True
    viewer.axes.visible = True
    viewer.axes.labels = True
    viewer.axes.colored = True
    viewer.text_overlay.visible = True
    viewer.text_overlay.position = "top_left"
    viewer.text_overlay.font_size = 11

    def refresh(event=None):
        try:
            update_overlay(viewer)
        except Exception:  # a half-built viewer (closing): keep the last text
            pass

    def inserted(event=None):
        layer = getattr(event, "value", None)
        if layer is not None and layer_kind(layer) in VOLUME_KINDS:
            show_colorbar(layer)
        refresh()

    for ly in viewer.layers:
        if layer_kind(ly) in VOLUME_KINDS:
            show_colorbar(ly)
    viewer.layers.events.inserted.connect(inserted)
    viewer.layers.events.removed.connect(refresh)
    viewer.layers.selection.events.active.connect(refresh)
    viewer.dims.events.ndisplay.connect(refresh)
    viewer.dims.events.order.connect(refresh)
    viewer.dims.events.point.connect(refresh)
    viewer.dims.events.axis_labels.connect(refresh)  # napari resets the slider's text then
    viewer.camera.events.angles.connect(refresh)
    viewer.camera.events.orientation.connect(refresh)
    refresh()


def parse_mni(text: str) -> np.ndarray:
    """'x, y, z' (commas, spaces or semicolons; mm) -> (3,) float; ValueError otherwise."""
    parts = [p for p in text.replace(";", ",").replace(",", " ").split() if p]
    try:
        xyz = np.array([float(p) for p in parts])
    except ValueError:
        raise ValueError(f"give three numbers x, y, z in MNI mm, got {text!r}") from None
    if xyz.shape != (3,):
        raise ValueError(f"give three numbers x, y, z in MNI mm, got {text!r}")
    return xyz


def go_to_mni(viewer, xyz) -> None:
    """Move the slices (and the 2D view's centre) to MNI point ``xyz`` (x, y, z) mm."""
    w = space.mni_to_world(xyz)
    nd = viewer.dims.ndim
    point = list(viewer.dims.point)
    for i in range(3):
        if nd - 3 + i >= 0:
            point[nd - 3 + i] = float(w[i])
    viewer.dims.point = point
    displayed = list(viewer.dims.displayed)
    centre = [float(point[d]) for d in displayed]
    viewer.camera.center = tuple(([0.0] * (3 - len(centre))) + centre)
