"""Movie response dock widget: a film -> the movie model's predicted 4D response.

Drop a video (or a folder of frames) on the widget or type its path, or open a movie data
set and pick one of its films (then the measured responses come too), press *Predict*:
:func:`napari_nrf.movie.view.movie_view` runs in a worker with progress, and three layers
land with time in seconds on the slider: the predicted response (time x MNI grid), the
film's frames and the decoder's reconstructions beside the brain. The label under the
slider says which moment of the film the volume on screen responds to (the haemodynamic
delay); *frames lead by the delay* shifts the frames so the frame on screen is the one
that caused the response on screen. Moving the cursor over the brain plots the predicted
(and measured) time course of the voxel under it. *Export 4D NIfTI* writes the prediction
(time as the 4th axis, the TR in the header).
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
from qtpy.QtCore import QPointF, Qt, Signal
from qtpy.QtGui import QColor, QPainter, QPen
from qtpy.QtWidgets import (QCheckBox, QComboBox, QDoubleSpinBox, QFileDialog, QFormLayout, QHBoxLayout, QLabel,
                            QLineEdit, QPushButton, QWidget)

from napari_nrf import space
from napari_nrf.errors import Cancelled

from ._layout import scrolling_layout
from ._progress import JobPanel, notify_error
from ._render import META, start_worker
from ._state import state_for

LAYERS = ("movie prediction", "movie frames", "movie reconstruction")


class TimeCoursePlot(QWidget):
    """A small plot of one voxel's predicted (orange) and measured (grey) time course,
    with the current time as a vertical line."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setMinimumHeight(110)
        self.t = self.pred = self.measured = None
        self.now = None
        self.title = "time course: move the cursor over the brain"

    def set_data(self, t, pred, measured=None, title=""):
        self.t, self.pred, self.measured, self.title = t, pred, measured, title
        self.update()

    def set_now(self, t):
        self.now = t
        self.update()

    def paintEvent(self, event):  # noqa: N802 - Qt's name
        p = QPainter(self)
        w, h = self.width(), self.height()
        p.fillRect(0, 0, w, h, QColor(30, 30, 30))
        p.setPen(QColor(220, 220, 220))
        p.drawText(6, 14, self.title)
        if self.t is None or len(self.t) < 2:
            return
        series = [s for s in (self.measured, self.pred) if s is not None]
        vals = np.concatenate([s[np.isfinite(s)] for s in series]) if series else np.zeros(1)
        lo, hi = (float(vals.min()), float(vals.max())) if vals.size else (-1.0, 1.0)
        if hi - lo < 1e-6:
            lo, hi = lo - 1, hi + 1
        t0, t1 = float(self.t[0]), float(self.t[-1])

        def pt(t, v):
            return QPointF(6 + (w - 12) * (t - t0) / (t1 - t0), 20 + (h - 26) * (1 - (v - lo) / (hi - lo)))

        for s, col in ((self.measured, QColor(170, 170, 170)), (self.pred, QColor(255, 140, 0))):
            if s is None:
                continue
            p.setPen(QPen(col, 1.5))
            for i in range(len(s) - 1):
                if np.isfinite(s[i]) and np.isfinite(s[i + 1]):
                    p.drawLine(pt(self.t[i], s[i]), pt(self.t[i + 1], s[i + 1]))
        if self.now is not None:
            p.setPen(QPen(QColor(80, 160, 255), 1))
            a, b = pt(self.now, lo), pt(self.now, hi)
            p.drawLine(a, b)


def _view_job(model, source, dataset, film, tr, onset, fps, progress, *, cancel):
    from napari_nrf.movie.view import movie_view

    return movie_view(model, source, dataset=dataset, film=film, tr=tr, onset=onset, fps=fps, progress=progress,
                      cancel=cancel)


class MovieResponseWidget(QWidget):
    """The Movie response widget (see the module doc).

    Public: :meth:`set_source` (a video / frame folder path), :meth:`open_dataset` (a movie
    data set), :meth:`predict` (what *Predict* does; returns the worker), :meth:`show_time_course`
    (MNI point), :meth:`export` (path), :attr:`view` (the last
    :class:`napari_nrf.movie.view.MovieView`), :attr:`layers`. Signal ``done(object)``.
    """

    done = Signal(object)

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.state = state_for(napari_viewer)
        self.view = None
        self.dataset = None
        self.layers = {}
        self.worker = None
        self._cancel = threading.Event()
        self.setAcceptDrops(True)

        lay = scrolling_layout(self)
        self.model_label = QLabel("model: none (load a movie model here or in Encoding model)")
        self.model_label.setWordWrap(True)
        lay.addWidget(self.model_label)
        row = QHBoxLayout()
        self.load_btn = QPushButton("Open model…")
        self.load_btn.clicked.connect(self._browse_model)
        row.addWidget(self.load_btn)
        lay.addLayout(row)
        form = QFormLayout()
        src = QHBoxLayout()
        self.source = QLineEdit()
        self.source.setPlaceholderText("drop a video or a folder of frames here")
        src.addWidget(self.source)
        b = QPushButton("…")
        b.setToolTip("choose a video file")
        b.clicked.connect(self._browse_video)
        src.addWidget(b)
        form.addRow("film", src)
        ds = QHBoxLayout()
        self.film = QComboBox()
        self.film.setToolTip("a film of the opened movie data set (its measured responses are plotted too)")
        ds.addWidget(self.film)
        b = QPushButton("Open data set…")
        b.clicked.connect(self._browse_dataset)
        ds.addWidget(b)
        form.addRow("or data set", ds)
        self.tr = QDoubleSpinBox()
        self.tr.setRange(0.0, 10.0)
        self.tr.setDecimals(3)
        self.tr.setSpecialValueText("model's")
        self.tr.setSuffix(" s")
        form.addRow("TR", self.tr)
        self.onset = QDoubleSpinBox()
        self.onset.setRange(0.0, 36000.0)
        self.onset.setSuffix(" s")
        form.addRow("onset", self.onset)
        self.fps = QDoubleSpinBox()
        self.fps.setRange(0.0, 240.0)
        self.fps.setSpecialValueText("from the file")
        form.addRow("fps (frame folder)", self.fps)
        lay.addLayout(form)
        row = QHBoxLayout()
        self.run_btn = QPushButton("Predict")
        self.run_btn.clicked.connect(self.predict)
        row.addWidget(self.run_btn)
        self.export_btn = QPushButton("Export 4D NIfTI…")
        self.export_btn.setEnabled(False)
        self.export_btn.clicked.connect(self._browse_export)
        row.addWidget(self.export_btn)
        lay.addLayout(row)
        self.lead = QCheckBox("frames lead by the delay")
        self.lead.setToolTip("Shift the frames by the haemodynamic delay: the frame on screen is the one that "
                             "caused the response on screen")
        self.lead.toggled.connect(self._place_frames)
        lay.addWidget(self.lead)
        self.job = JobPanel()
        self.progress_bar, self.cancel_btn = self.job.progress_bar, self.job.cancel_btn
        self.job.cancel_requested.connect(self.cancel)
        lay.addWidget(self.job)
        self.delay_label = QLabel("")
        self.delay_label.setWordWrap(True)
        lay.addWidget(self.delay_label)
        self.plot = TimeCoursePlot()
        lay.addWidget(self.plot)
        self.info = QLabel("")
        self.info.setWordWrap(True)
        lay.addWidget(self.info)
        lay.addStretch(1)
        self.state.model_changed.connect(self._model_changed)
        self._model_changed(self.state.model)
        self.viewer.dims.events.current_step.connect(self._on_step)
        self.viewer.mouse_move_callbacks.append(self._on_mouse)
        viewer, step_cb, mouse_cb = self.viewer, self._on_step, self._on_mouse

        def _disconnect(*_):  # the viewer may outlive this dock: leave no callback to a deleted widget
            try:
                viewer.dims.events.current_step.disconnect(step_cb)
            except Exception:  # noqa: BLE001 - already gone with the viewer
                pass
            try:
                viewer.mouse_move_callbacks.remove(mouse_cb)
            except (ValueError, AttributeError):
                pass

        self.destroyed.connect(_disconnect)

    # ---- inputs --------------------------------------------------------------------------
    def _model_changed(self, model):
        ok = model is not None and model.inputs == "frames"
        self.run_btn.setEnabled(ok)
        if model is None:
            self.model_label.setText("model: none (load a movie model here or in Encoding model)")
        elif not ok:
            self.model_label.setText(f"model kind {model.kind!r} reads still images: open a movie model")
        else:
            self.model_label.setText(f"model: movie, {model.n_voxels} voxels, {model.frames_per_tr} frames per TR "
                                     f"of {model.frame_size} px, delay {model.delay} TR, TR {model.tr:g} s")

    def load_model(self, path):
        """Load a movie model bundle for every widget of the viewer (a worker; the same path
        as Encoding model's *Open model…*, so its card names it); returns the worker."""
        from .model_widget import load_into_state

        self.worker = load_into_state(self.state, path, "cpu")
        return self.worker

    def _browse_model(self):
        path, _ = QFileDialog.getOpenFileName(self, "Open movie model", "", "Model bundles (*.safetensors)")
        if path:
            self.load_model(path)

    def _browse_video(self):
        path, _ = QFileDialog.getOpenFileName(self, "Open a film", "", "Videos (*.mp4 *.mov *.avi *.mkv *.webm);;All (*)")
        if path:
            self.set_source(path)

    def _browse_dataset(self):
        path, _ = QFileDialog.getOpenFileName(self, "Open a movie data set", "", "Movie data sets (*.h5)")
        if path:
            self.open_dataset(path)

    def set_source(self, path) -> None:
        """Predict from this video file or frame folder (clears a chosen data-set film)."""
        self.source.setText(str(path))
        self.film.setCurrentIndex(-1)

    def open_dataset(self, path) -> None:
        from napari_nrf.movie import MovieDataset

        if self.dataset is not None:
            self.dataset.close()
        self.dataset = MovieDataset.load(path)
        self.film.clear()
        self.film.addItems(self.dataset.film_names)
        self.source.clear()

    def dragEnterEvent(self, event):  # noqa: N802
        if event.mimeData().hasUrls():
            event.acceptProposedAction()

    def dropEvent(self, event):  # noqa: N802
        urls = event.mimeData().urls()
        if urls:
            self.set_source(urls[0].toLocalFile())

    # ---- predict -------------------------------------------------------------------------
    def predict(self):
        """Predict the chosen film in a worker; the layers come when it returns."""
        from napari.utils.notifications import show_info

        model = self.state.model
        if model is None or model.inputs != "frames":
            show_info("napari-nrf: load a movie model first")
            return None
        source = self.source.text().strip() or None
        film = self.film.currentText() if (self.dataset is not None and not source) else None
        if source is None and film is None:
            show_info("napari-nrf: drop a video, or open a data set and pick a film")
            return None
        self._cancel = cancel = threading.Event()
        progress = self.job.reporter()
        self.run_btn.setEnabled(False)
        self.job.start("napari-nrf: predicting the film")
        self.info.setText(f"predicting {Path(source).name if source else film}…")
        self.worker = start_worker(_view_job, model, source, self.dataset if film else None, film,
                                   self.tr.value() or None, self.onset.value(), self.fps.value() or None, progress,
                                   on_result=self._show, on_error=self._failed, on_finished=self._finished,
                                   cancel_event=cancel)
        return self.worker

    def cancel(self):
        self._cancel.set()

    def _finished(self):
        self._model_changed(self.state.model)
        self.job.finish()

    def _failed(self, exc):
        from napari.utils.notifications import show_info

        if isinstance(exc, Cancelled):
            self.info.setText("cancelled")
            show_info("napari-nrf: prediction cancelled")
            return
        self.info.setText(f"failed: {exc}")
        notify_error("movie prediction failed", exc)

    def _show(self, view):
        from napari_nrf.movie.view import broadcast_frames

        from ._render import ensure_template

        if view.n_volumes <= view.delay:  # every volume falls inside the haemodynamic lag
            from napari.utils.notifications import show_warning

            need = (view.delay + 1) * view.tr
            msg = (f"this clip gives {view.n_volumes} volume(s), within the model's delay of {view.delay} TR "
                   f"({view.delay * view.tr:g} s): nothing can be predicted; use a clip longer than {need:g} s")
            self.info.setText(msg)
            show_warning(f"napari-nrf: {msg}")
            return
        ensure_template(self.viewer)
        self.view = view
        for name in LAYERS:
            if name in self.viewer.layers:
                self.viewer.layers.remove(name)
        data, kw = space.layer_data(view.volumes(), view.grid)
        kw["scale"] = (view.tr,) + tuple(kw["scale"][1:])  # time in seconds on the slider
        kw["axis_labels"] = ("time (s)",) + tuple(kw["axis_labels"][1:])
        kw["units"] = ("s",) + tuple(kw["units"][1:])
        lim = float(np.nanmax(np.abs(view.pred))) if np.isfinite(view.pred).any() else 1.0
        self.layers = {"movie prediction": self.viewer.add_image(
            data, name="movie prediction", colormap="twilight_shifted", contrast_limits=(-lim, lim),
            metadata={META: {"kind": "movie", "tr": view.tr, "delay": view.delay}}, **kw)}
        nz = view.grid.shape[2]
        same = {"axis_labels": kw["axis_labels"], "units": kw["units"]}  # one set of axes for every layer
        self.layers["movie frames"] = self.viewer.add_image(broadcast_frames(view.frames, nz), name="movie frames",
                                                            rgb=True, **same)
        if view.recon is not None:
            self.layers["movie reconstruction"] = self.viewer.add_image(
                broadcast_frames(view.recon, nz), name="movie reconstruction", rgb=True, **same)
        self._place_frames()
        self.viewer.reset_view()  # the frames panel beside the brain comes into the view, not off its edge
        self.viewer.dims.set_current_step(0, min(view.n_volumes - 1, view.delay))
        self.export_btn.setEnabled(True)
        meas = "" if view.measured is None else ", measured responses loaded"
        self.info.setText(f"{view.n_volumes} volumes x {view.pred.shape[1]} voxels, TR {view.tr:g} s{meas}. "
                          "Move the cursor over the brain for a time course.")
        self._on_step()
        self.done.emit(view)

    def _place_frames(self, *_):
        from napari_nrf.movie.view import frames_placement

        v = self.view
        if v is None:
            return
        shift = v.delay * v.tr if self.lead.isChecked() else 0.0
        for slot, name in enumerate(("movie frames", "movie reconstruction")):
            layer = self.layers.get(name)
            if layer is None:
                continue
            # the reconstruction decodes the volume on screen: it never shifts
            p = frames_placement(v.grid, v.frames.shape[1], v.tr, slot, shift if slot == 0 else 0.0)
            layer.scale, layer.translate = p["scale"], p["translate"]

    # ---- time ------------------------------------------------------------------------------
    def current_volume(self) -> int:
        if self.view is None:
            return 0
        layer = self.layers.get("movie prediction")
        t = float(self.viewer.dims.point[0]) if layer is not None else 0.0
        return int(np.clip(round(t / self.view.tr), 0, self.view.n_volumes - 1))

    def _on_step(self, *_):
        if self.view is None:
            return
        k = self.current_volume()
        self.delay_label.setText(self.view.delay_text(k))
        self.plot.set_now(k * self.view.tr)

    def _on_mouse(self, viewer, event):
        if self.view is None or len(event.position) < 3:
            return
        self.show_time_course(space.world_to_mni(event.position))

    def show_time_course(self, xyz) -> bool:
        """Plot the time course of the voxel nearest MNI ``xyz`` (False: no voxel near)."""
        if self.view is None:
            return False
        tc = self.view.time_course(xyz)
        if tc is None:
            return False
        t, pred, meas, v, d = tc
        x, y, z = self.view.coords[v]
        what = "predicted (orange)" + ("" if meas is None else " vs measured (grey)")
        self.plot.set_data(t, pred, meas, f"voxel at MNI ({x:.0f}, {y:.0f}, {z:.0f}) mm: {what}")
        self._on_step()
        return True

    # ---- export ----------------------------------------------------------------------------
    def _browse_export(self):
        path, _ = QFileDialog.getSaveFileName(self, "Export the 4D prediction", "prediction.nii.gz",
                                              "NIfTI (*.nii.gz *.nii)")
        if path:
            self.export(path)

    def export(self, path) -> Path:
        """Write the prediction as one 4D NIfTI (time 4th, TR in the header), atomically."""
        from napari_nrf.movie.volumes import save_4d

        v = self.view
        if v is None:
            raise ValueError("nothing to export: predict a film first")
        out = save_4d(path, v.pred, v.coords, v.tr, v.grid.resolution,
                      sidecar={"kind": "movie-prediction", "film": v.film, "tr": v.tr, "delay_tr": v.delay})
        self.info.setText(f"exported {out}")
        return out
