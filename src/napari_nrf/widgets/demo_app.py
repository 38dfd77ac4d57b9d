"""The demo viewer of ``napari-nrf demo``: napari with the plugin's widgets docked, the
demo model loaded, the template, the image library and a sample volume rendered.
The Qt-free parts (model lookup and training, library, sample) are in :mod:`napari_nrf.demo`."""

from __future__ import annotations

import time

from napari_nrf import space

from napari_nrf.demo import load_demo_model, warm_up, sample_image_path, demo_library


MAIN_WIDGETS = ("Encoding model", "Response volume", "Region explorer")


def _dock_of(widget):
    from qtpy.QtWidgets import QDockWidget

    w = widget
    while w is not None and not isinstance(w, QDockWidget):
        w = w.parent()
    return w


def _tabify_extras(viewer, widgets) -> None:
    """Put the plugin's other docks (clusters, jobs, ...) in tabs behind the Region explorer,
    so the demo's three main widgets keep the screen height."""
    main = _dock_of(widgets.get("Region explorer"))
    if main is None:
        return
    try:
        qwin = viewer.window._qt_window
        for name, w in widgets.items():
            d = _dock_of(w)
            if name not in MAIN_WIDGETS and d is not None:
                qwin.tabifyDockWidget(main, d)
        main.raise_()
    except (AttributeError, RuntimeError):  # a napari without these internals: keep its layout
        pass


def build_demo(viewer, model, path, library=None, on_ready=None, ndisplay: int = 3, log=print):
    """Set up the demo in ``viewer``: widgets, model, template, library, sample render.

    Returns a dict with ``widgets`` (display name -> widget), ``worker`` (the render) and,
    once the volume is there, ``layers`` (the new layers). ``on_ready(state)`` is called
    on the main thread when the first volume is visible.
    """
    from napari_nrf.widgets import dock_all
    from napari_nrf.widgets._render import draw_now, ensure_template

    widgets = dock_all(viewer)
    _tabify_extras(viewer, widgets)
    widgets["Encoding model"].set_model(model, path)
    ensure_template(viewer)
    vw = widgets["Response volume"]
    rx = widgets["Region explorer"]
    state = {"widgets": widgets, "layers": None, "viewer": viewer}

    def rendered(layers):
        state["layers"] = layers
        viewer.dims.ndisplay = ndisplay
        if ndisplay == 3:
            viewer.camera.angles = space.NAPARI_CAMERA_ANGLES  # from behind, left and above
        draw_now(viewer)
        log(f"first volume visible ({layers[0].name}, {ndisplay}D view)")
        # The library after the first volume: making its stimuli and features would only
        # delay the volume the user is waiting for.
        rx.set_library(library if library is not None else demo_library())
        state["library_worker"] = rx.prepare_library()  # features now: the first click is then fast
        if on_ready is not None:
            on_ready(state)

    vw.on_rendered(rendered)
    if model.subjects:  # show the field where the model was trained, not its extrapolation
        vw.extent.setCurrentText("where the model has data")
    state["worker"] = vw.add_images([str(sample_image_path())])
    return state


def choose_ndisplay(requested: int | None, renderer: str) -> tuple[int, str | None]:
    """(2 or 3, message or None): the demo's view. ``requested`` None means automatic:
    3D, except on a software OpenGL renderer where each 3D frame takes seconds."""
    from napari_nrf.widgets._render import is_software_opengl

    if requested in (2, 3):
        return int(requested), None
    if is_software_opengl(renderer):
        return 2, (f"software OpenGL ({renderer}): opening in 2D, where the viewer stays responsive; "
                   "the 3D view (the 2D/3D button, or --ndisplay 3) takes seconds per frame here")
    return 3, None


def run_demo(show: bool = True, screenshot=None, ndisplay: int | None = None, timeout: float = 300.0) -> int:
    """Open the demo viewer. Returns 0 (1 when the first render failed).

    Parameters
    ----------
    show : bool
        Start napari's event loop (False: build everything, render, optionally take the
        screenshot, close; for tests and headless machines).
    screenshot : path or None
        Save a screenshot of the whole window (widgets included) once the first volume
        is rendered.
    ndisplay : int or None
        2 or 3: the view shown once the volume is there; None: 3D, or 2D on a software
        OpenGL renderer (see :func:`choose_ndisplay`).
    """
    t0 = _process_start()

    def say(msg):  # seconds since the process started (imports included), as a user sees it
        print(f"[demo {time.time() - t0:5.1f} s] {msg}", flush=True)

    model, path = load_demo_model()
    say(f"demo model {path.name} loaded")
    warm = warm_up(model)

    import napari
    from qtpy.QtCore import QEventLoop, QTimer

    viewer = napari.Viewer(title="napari-nrf demo", show=bool(show or screenshot))
    try:
        viewer.window.resize(1600, 1000)
    except Exception:  # older napari without Window.resize
        pass
    from napari_nrf.widgets._render import opengl_renderer

    ndisplay, why = choose_ndisplay(ndisplay, opengl_renderer(viewer))
    say("napari opened" + (f"; {why}" if why else ""))
    loop = QEventLoop()
    warm.join()
    state = build_demo(viewer, model, path, ndisplay=ndisplay, log=say, on_ready=lambda st: loop.quit())
    say("widgets docked, rendering the sample image")
    if state["worker"] is None:
        return 1
    if not show or screenshot:
        QTimer.singleShot(int(timeout * 1000), loop.quit)
        if state["layers"] is None:
            loop.exec()
        if state["layers"] is None:
            say("the render did not finish")
            viewer.close()
            return 1
        if screenshot:
            from qtpy.QtWidgets import QApplication

            for _ in range(5):
                QApplication.processEvents()
            viewer.window.screenshot(str(screenshot), canvas_only=False)
            say(f"screenshot: {screenshot}")
    if show:
        napari.run()
    else:
        _wait_worker(state.get("library_worker"), timeout)
        viewer.close()
    return 0


def _process_start() -> float:
    """Wall-clock time (epoch s) at which this process started."""
    try:
        import psutil

        return psutil.Process().create_time()
    except Exception:  # no psutil or no /proc: from now
        return time.time()


def _wait_worker(worker, timeout: float) -> None:
    """Process Qt events until ``worker`` finished (so nothing runs when the viewer closes)."""
    if worker is None:
        return
    from qtpy.QtWidgets import QApplication

    t = time.perf_counter()
    while worker.is_running and time.perf_counter() - t < timeout:
        QApplication.processEvents()
        time.sleep(0.02)
    QApplication.processEvents()
