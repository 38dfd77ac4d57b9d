"""Response volume dock widget: drop images, render their predicted volumes in MNI space.

Drop image files (png, jpg, tif, bmp, ...) onto the widget, or pick an existing napari
Image layer. Each image becomes an Image layer named after it, in MNI world coordinates
over the MNI152 template, with a diverging colormap centred at 0. Rendering runs in a
thread worker (progress bar, Cancel); layers are built on the main thread only when the
worker returns, so a cancelled render leaves nothing behind.
"""

import functools
from pathlib import Path
import threading

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (QCheckBox, QComboBox, QDoubleSpinBox, QFileDialog, QFormLayout, QFrame, QHBoxLayout, QLabel,
                            QLineEdit, QPushButton, QSlider, QWidget)

from napari_nrf import space

from ._forms import render_settings_form, set_choices
from ._layout import scrolling_layout
from ._progress import JobPanel, notify_error
from ._render import (META, RenderCancelled, cold_hot, compute_volumes, ensure_template, layer_kind,
                      layer_volume, start_worker, volume_layer_data)
from ._state import state_for
from ._status import install_mni_status

DATA = "where the model has data"
BRAIN = "whole brain (extrapolation)"
GREY = "grey matter (extrapolation)"
EXTENTS = (DATA, BRAIN, GREY, "ROI from a Labels layer", "ROI from a NIfTI file", "box")
# What each extent is called in a written volume's sidecar (napari_nrf.volume_meta).
EXTENT_MASK_NAMES = {DATA: "data", BRAIN: "brain", GREY: "gm", "ROI from a Labels layer": "ROI",
                     "ROI from a NIfTI file": "ROI", "box": "box within the brain"}
OUTSIDE = ("NaN", "0")


CONTINUOUS_SUBJECT = "(field: any point)"


def _read_images(paths):
    """Read image files -> (images, names, errors) where errors are user messages."""
    from napari_nrf.features import ImageError, load_image_file

    images, names, errors = [], [], []
    for p in paths:
        p = Path(p)
        try:
            images.append(load_image_file(p))
            names.append(p.stem)
        except (ImageError, OSError) as exc:
            errors.append(str(exc))
    return images, names, errors


def _render_job(model, images, grid, mask, subject, progress, *, cancel, keep_features=False):
    """Worker body: features of the images, then their volumes (B, *grid.shape); with
    ``keep_features`` the pair ``(volumes, features)``, for a second step on the same
    features (:func:`_reference_job`)."""
    import torch

    from napari_nrf.features import FeatureCache

    if cancel():
        raise RenderCancelled("cancelled")
    with torch.inference_mode():
        try:
            cache = FeatureCache()
        except OSError:  # unwritable cache folder: just compute
            cache = None
        feats = model.encode_images(images, cache=cache)
        vols = compute_volumes(model, feats, grid, mask=mask, subject=subject, progress=progress, cancel=cancel)
    return (vols, feats) if keep_features else vols


def _reference_job(model, feats, grid, mask, reference, progress, *, cancel):
    """Worker body of the second step: the ``reference`` subject's volumes (Rest2Visual's
    stimulus-only prediction) from the features the first step computed."""
    import torch

    if cancel():
        raise RenderCancelled("cancelled")
    with torch.inference_mode():
        return compute_volumes(model, feats, grid, mask=mask, subject=reference, progress=progress, cancel=cancel)


class ResponseVolumeWidget(QWidget):
    """Drop zone + controls that turn images into predicted response volumes.

    Public methods (used by the demo and the tests): :meth:`add_images`,
    :meth:`render_images`, :meth:`render_layer`, :meth:`cancel`, :meth:`contrast`,
    :meth:`export`, :meth:`set_threshold`, :meth:`set_opacity`, :meth:`response_layers`.
    Signal ``rendered(list)`` is emitted with the new layers after each render.
    """

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.state = state_for(napari_viewer)
        self.worker = None
        self._second_step = False  # Rest2Visual's stimulus-only step is pending
        self._cancel = threading.Event()
        # The second step may still run when the dock closes: its callbacks then do nothing
        # (a dict, not the widget, is what the destroyed signal's handler touches).
        live = self._live = {"alive": True, "cancel": self._cancel}

        def _gone(*_):
            live["alive"] = False
            live["cancel"].set()

        self.destroyed.connect(_gone)
        self._listeners = []
        self.setAcceptDrops(True)
        install_mni_status(napari_viewer)

        lay = scrolling_layout(self)  # small screens: the controls scroll
        self.drop_label = QLabel("Drop images here\n(png, jpg, tif, bmp, …; a .nii/.nii.gz opens as a volume)")
        self.drop_label.setAlignment(Qt.AlignCenter)
        self.drop_label.setFrameShape(QFrame.StyledPanel)
        self.drop_label.setMinimumHeight(60)
        lay.addWidget(self.drop_label)
        row = QHBoxLayout()
        self.open_btn = QPushButton("Open images…")
        self.open_btn.clicked.connect(self._choose_images)
        row.addWidget(self.open_btn)
        self.layer_combo = QComboBox()
        self.layer_combo.setToolTip("An existing 2D image layer (greyscale or RGB)")
        row.addWidget(self.layer_combo, 1)
        self.layer_btn = QPushButton("Render layer")
        self.layer_btn.clicked.connect(lambda: self.render_layer())
        row.addWidget(self.layer_btn)
        lay.addLayout(row)

        # The settings are a magicgui form (widgets/_forms.py); the attributes below are
        # its Qt widgets, as a user (or a test) drives them.
        self.settings = render_settings_form(EXTENTS, OUTSIDE)
        lay.addWidget(self.settings.native)
        self.resolution = self.settings.resolution.native
        self.extent = self.settings.extent.native
        self.roi_layer = self.settings.roi_layer.native
        self.roi_path = self.settings.roi_file.line_edit.native
        self.box = self.settings.box.native
        self.subject = self.settings.subject.native
        self.outside = self.settings.outside.native
        self.settings.extent.changed.connect(self._extent_changed)
        self.contrast_check = QCheckBox("contrast A − B of two images")
        self.contrast_check.setToolTip("Two images rendered together also give their contrast volume (A − B)")
        self.contrast_check.setChecked(True)
        lay.addWidget(self.contrast_check)
        self.vs_stimulus = QCheckBox("also stimulus-only and the difference")
        self.vs_stimulus.setToolTip("Rest2Visual: the same image for a person with the population's mean rest map, "
                                    "and the difference this subject's rest map makes")
        self.vs_stimulus.setChecked(True)
        self.vs_stimulus.setVisible(False)
        lay.addWidget(self.vs_stimulus)

        self.job = JobPanel()
        self.progress_bar, self.cancel_btn = self.job.progress_bar, self.job.cancel_btn
        self.job.cancel_requested.connect(self.cancel)
        lay.addWidget(self.job)

        disp = QFormLayout()
        self.threshold = QSlider(Qt.Horizontal)
        self.threshold.setRange(0, 95)
        self.threshold.setValue(20)
        self.threshold.setToolTip("hide |value| below this percentage of the colour limit")
        self.threshold.valueChanged.connect(lambda v: self.set_threshold(v / 100))
        # The same threshold in the map's own units (SD for z-scored responses), as nilearn
        # and FSLeyes users set it; the table written beside an export uses it.
        self.threshold_units = QDoubleSpinBox()
        self.threshold_units.setRange(0.0, 1000.0)
        self.threshold_units.setDecimals(2)
        self.threshold_units.setSingleStep(0.1)
        self.threshold_units.setSuffix(" SD")
        self.threshold_units.setSpecialValueText("% only")
        self.threshold_units.setToolTip("hide |value| below this, in the map's units; 0: use the percentage")
        self.threshold_units.valueChanged.connect(self.set_threshold_units)
        trow = QHBoxLayout()
        trow.addWidget(self.threshold, 1)
        trow.addWidget(self.threshold_units)
        disp.addRow("threshold", trow)
        self.opacity = QSlider(Qt.Horizontal)
        self.opacity.setRange(0, 100)
        self.opacity.setValue(90)
        self.opacity.valueChanged.connect(lambda v: self.set_opacity(v / 100))
        disp.addRow("opacity", self.opacity)
        self.goto = QLineEdit()
        self.goto.setPlaceholderText("x, y, z (MNI mm), Enter")
        self.goto.setToolTip("Move the slices and the view to this MNI point")
        self.goto.returnPressed.connect(self._goto)
        disp.addRow("go to MNI", self.goto)
        lay.addLayout(disp)

        crow = QHBoxLayout()
        self.con_a = QComboBox()
        self.con_b = QComboBox()
        self.con_b.setPlaceholderText("needs a 2nd volume")
        self.con_btn = QPushButton("A − B")
        self.con_btn.clicked.connect(self._contrast_clicked)
        crow.addWidget(self.con_a, 1)
        crow.addWidget(QLabel("−"))
        crow.addWidget(self.con_b, 1)
        crow.addWidget(self.con_btn)
        lay.addLayout(crow)
        self.export_btn = QPushButton("Export selected volume as NIfTI…")
        self.export_btn.clicked.connect(self._export_clicked)
        lay.addWidget(self.export_btn)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        lay.addWidget(self.status)
        lay.addStretch()

        self.viewer.layers.events.inserted.connect(self._refresh_layers)
        self.viewer.layers.events.removed.connect(self._refresh_layers)
        self.state.model_changed.connect(self._model_changed)
        self._refresh_layers()
        self._model_changed(self.state.model)
        self._extent_changed()

    # ---- callbacks registered by others (demo, benchmark) ------------------------------
    def on_rendered(self, fn) -> None:
        """Call ``fn(list_of_new_layers)`` after each completed render step (main thread):
        the prediction layers as soon as they are shown; for a Rest2Visual model with the
        stimulus-only option, a second call with the subject-minus-stimulus-only contrasts."""
        self._listeners.append(fn)

    # ---- drag and drop ---------------------------------------------------------------
    def dragEnterEvent(self, event):
        if event.mimeData().hasUrls():
            event.acceptProposedAction()
        else:
            event.ignore()

    def dragMoveEvent(self, event):
        if event.mimeData().hasUrls():
            event.acceptProposedAction()

    def dropEvent(self, event):
        urls = event.mimeData().urls()
        paths = [u.toLocalFile() for u in urls if u.isLocalFile()]
        if not paths:
            event.ignore()
            return
        event.acceptProposedAction()
        self.add_paths(paths)

    def add_paths(self, paths):
        """What a drop does: NIfTI files go to napari's reader (this plugin's, so they land
        at their MNI place), image files are rendered. Returns the render worker or None."""
        from napari_nrf.nifti_layers import is_nifti

        nifti = [p for p in paths if is_nifti(p)]
        for p in nifti:
            self.viewer.open(p, plugin="napari-nrf")
        rest = [p for p in paths if not is_nifti(p)]
        return self.add_images(rest) if rest else None

    # ---- inputs ----------------------------------------------------------------------
    def _choose_images(self):
        from napari_nrf.features import IMAGE_SUFFIXES

        pattern = " ".join(f"*{s}" for s in IMAGE_SUFFIXES)
        paths, _ = QFileDialog.getOpenFileNames(self, "Images to render", "", f"Images ({pattern})")
        if paths:
            self.add_images(paths)

    def add_images(self, paths):
        """Render the image files ``paths``; unreadable files give a notification.

        Returns the render worker, or None when nothing could be rendered.
        """
        from napari.utils.notifications import show_error

        images, names, errors = _read_images(paths)
        for e in errors:
            show_error(f"napari-nrf: {e}")
        if not images:
            return None
        return self.render_images(images, names)

    def render_layer(self, layer=None):
        """Render a napari Image layer (2D greyscale or RGB); default: the one picked."""
        from napari.utils.notifications import show_error

        from napari_nrf.features import ImageError, to_rgb_uint8

        if layer is None:
            name = self.layer_combo.currentText()
            if name not in self.viewer.layers:
                show_error("napari-nrf: pick a 2D image layer to render")
                return None
            layer = self.viewer.layers[name]
        try:
            img = to_rgb_uint8(np.asarray(layer.data))
        except ImageError as exc:
            notify_error(f"layer {layer.name!r} not rendered", exc)
            return None
        return self.render_images([img], [layer.name])

    # ---- settings -> grid, mask, subject ------------------------------------------------
    def region_spec(self):
        """(grid, mask) from the resolution and extent controls (raises ValueError)."""
        form = self.settings
        res = float(form.resolution.value)
        ext = form.extent.value
        if ext == "box":
            try:
                vals = [float(v) for v in form.box.value.replace(";", ",").split(",")]
            except ValueError:
                raise ValueError("box: give six numbers, xmin, ymin, zmin, xmax, ymax, zmax (MNI mm)") from None
            if len(vals) != 6:
                raise ValueError("box: give six numbers, xmin, ymin, zmin, xmax, ymax, zmax (MNI mm)")
            # a box is a part of the brain: values outside the brain outline stay NaN
            return space.Grid.from_extent(res, vals[:3], vals[3:]), "brain"
        grid = space.Grid.mni(res)
        if ext == BRAIN:
            return grid, "brain"
        if ext == GREY:
            return grid, "gm"
        if ext == DATA:
            if self.state.model is None or not self.state.model.subjects:
                raise ValueError("the model has no subject voxels; choose another extent")
            # computed in the render worker (cancellable; tens of seconds at 0.5 mm), once per grid
            return grid, "data"
        if ext == "ROI from a NIfTI file":
            path = form.roi_file.line_edit.value.strip()  # text: an empty FileEdit is no file
            if not path:
                raise ValueError("choose an ROI NIfTI file")
            return grid, space.roi_mask(grid, path)
        name = form.roi_layer.value
        if not name or name not in self.viewer.layers:
            raise ValueError("choose a Labels layer as the ROI")
        vol, src = layer_volume(self.viewer.layers[name])
        mask = space.resample(np.asarray(vol), src, grid, order=0) != 0
        if not mask.any():
            raise ValueError(f"the Labels layer {name!r} has no labelled voxel inside the MNI box")
        return grid, mask

    def current_subject(self):
        s = self.settings.subject.value
        return None if (not s or s == CONTINUOUS_SUBJECT) else s

    # ---- render ----------------------------------------------------------------------
    def render_images(self, images, names):
        """Render (H, W, 3) uint8 ``images`` named ``names`` in a worker; returns the worker."""
        from napari.utils.notifications import show_error, show_info

        model = self.state.model
        if model is None:
            show_error("napari-nrf: load an encoding model first (Encoding model widget)")
            return None
        if (self.worker is not None and self.worker.is_running) or self._second_step:
            show_info("napari-nrf: a render is running; cancel it or wait")
            return None
        try:
            grid, mask = self.region_spec()
        except ValueError as exc:
            show_error(f"napari-nrf: {exc}")
            return None
        subject = self.current_subject()
        self._cancel = cancel = threading.Event()
        self._live["cancel"] = cancel
        self.job.start(f"napari-nrf: rendering {', '.join(names)}")
        self.status.setText(f"rendering {', '.join(names)} at {grid.resolution:g} mm…")
        progress = self.job.reporter()

        reference = None
        if model.conditioned and model.pseudo_subjects and self.vs_stimulus.isChecked():
            # the stimulus-only reference (Rest2Visual's population field)
            reference = model.pseudo_subjects[0] if subject not in model.pseudo_subjects else None
        meta = {"names": list(names), "grid": grid, "subject": subject, "cancel": cancel,
                "layer_meta": self._volume_meta(model), "reference": reference, "mask": mask}
        # Rest2Visual: the person's prediction is shown first; the stimulus-only one and the
        # difference follow from a second worker on the same features (_rendered).
        job = _render_job if reference is None else functools.partial(_render_job, keep_features=True)
        self.worker = start_worker(job, model, list(images), grid, mask, subject, progress,
                                   on_result=lambda vols: self._rendered(vols, meta),
                                   on_error=lambda exc: self._failed(exc, meta), on_finished=self._finished,
                                   cancel_event=cancel)
        return self.worker

    def cancel(self):
        """Ask the running render to stop at its next chunk; no layer will be made."""
        self._cancel.set()
        self.status.setText("cancelling…")

    def _finished(self):
        if self._second_step:  # the first step's worker ended; the second one runs on
            return
        self.job.finish()

    def _second_finished(self):
        if not self._live["alive"]:
            return
        self._second_step = False
        self._finished()

    def _failed(self, exc, meta):
        from napari.utils.notifications import show_info

        if isinstance(exc, RenderCancelled) or meta["cancel"].is_set():
            self.status.setText("render cancelled")
            show_info("napari-nrf: render cancelled")
            return
        self.status.setText(f"render failed: {exc}")
        notify_error("render failed", exc)

    def _rendered(self, vols, meta):
        if meta["cancel"].is_set():  # cancelled after the last chunk: drop the result
            self.status.setText("render cancelled")
            return
        ensure_template(self.viewer)
        grid = meta["grid"]
        reference = meta.get("reference")
        feats = None
        if reference is not None:
            vols, feats = vols
        new = []
        for vol, name in zip(vols, meta["names"]):
            label = name if reference is None else f"{name} ({meta['subject'] or 'default subject'})"
            data, kw, _ = volume_layer_data(vol, grid, label, threshold=self.threshold.value() / 100, image=name,
                                            subject=meta["subject"], **meta["layer_meta"])
            kw["opacity"] = self.opacity.value() / 100
            new.append(self.viewer.add_image(data, **kw))
        if reference is None and self.contrast_check.isChecked() and len(new) == 2:
            new.append(self.contrast(new[0], new[1]))
        self.status.setText(f"rendered {len(vols)} volume(s) at {grid.resolution:g} mm")
        if new:
            self.viewer.layers.selection.active = new[0]
        for fn in self._listeners:
            fn(new)
        if reference is not None:  # step 2: the stimulus-only prediction and the difference
            self._second_step = True
            self.status.setText(f"rendered {len(vols)} volume(s) at {grid.resolution:g} mm; "
                                "computing the stimulus-only prediction…")
            self.worker = start_worker(_reference_job, self.state.model, feats, grid, meta["mask"], reference,
                                       self.job.reporter(),
                                       on_result=lambda refs: self._rendered_reference(refs, new, meta),
                                       on_error=lambda exc: self._live["alive"] and self._failed(exc, meta),
                                       on_finished=self._second_finished, cancel_event=meta["cancel"])

    def _rendered_reference(self, refs, people, meta):
        """Step 2 of a Rest2Visual render: the hidden stimulus-only layers and the
        subject-specific minus stimulus-only contrasts (for the person layers still open)."""
        if not self._live["alive"]:
            return
        if meta["cancel"].is_set():
            self.status.setText("render cancelled")
            return
        grid, new = meta["grid"], []
        for person, vol, name in zip(people, refs, meta["names"]):
            data, kw, _ = volume_layer_data(vol, grid, f"{name} (stimulus-only)", threshold=self.threshold.value() / 100,
                                            image=name, subject=meta["reference"], **meta["layer_meta"])
            kw["opacity"] = self.opacity.value() / 100
            kw["visible"] = False
            ref_layer = self.viewer.add_image(data, **kw)
            if person in self.viewer.layers:  # the user may have removed it meanwhile
                new.append(self.contrast(person, ref_layer))
        self.status.setText(f"rendered {len(refs)} volume(s) at {grid.resolution:g} mm with the stimulus-only "
                            "prediction")
        for fn in self._listeners:
            fn(new)

    # ---- layers ------------------------------------------------------------------------
    def response_layers(self) -> list:
        return [ly for ly in self.viewer.layers if layer_kind(ly) in ("response", "contrast")]

    def contrast(self, layer_a, layer_b):
        """Add the contrast volume ``A - B`` of two response layers on the same grid."""
        va, ga = layer_volume(layer_a)
        vb, gb = layer_volume(layer_b)
        if ga != gb:
            vb = space.resample(vb, gb, ga, order=1, cval=np.nan)
        diff = np.asarray(va, np.float32) - np.asarray(vb, np.float32)
        name = f"{layer_a.name} − {layer_b.name}"
        ma = dict((layer_a.metadata or {}).get(META) or {})
        keep = {k: ma[k] for k in ("units", "mask", "model_path", "model_kind", "backbone", "outside") if k in ma}
        data, kw, _ = volume_layer_data(diff, ga, name, threshold=self.threshold.value() / 100,
                                        a=layer_a.name, b=layer_b.name, image=[layer_a.name, layer_b.name], **keep)
        kw["metadata"][META]["kind"] = "contrast"
        kw["opacity"] = self.opacity.value() / 100
        return self.viewer.add_image(data, **kw)

    def _contrast_clicked(self):
        from napari.utils.notifications import show_error

        a, b = self.con_a.currentText(), self.con_b.currentText()
        if a not in self.viewer.layers or b not in self.viewer.layers or a == b:
            show_error("napari-nrf: choose two different response volumes")
            return
        self.contrast(self.viewer.layers[a], self.viewer.layers[b])

    def _volume_meta(self, model) -> dict:
        """What a new response layer records about itself (for its colorbar and exports)."""
        from napari_nrf.volume_meta import response_units

        path = self.state.model_path
        return {"units": response_units(model), "mask": EXTENT_MASK_NAMES.get(self.settings.extent.value, "ROI"),
                "model_path": str(path) if path else None, "model_kind": model.kind,
                "backbone": model.backbone_name or None, "outside": self.settings.outside.value}

    def export(self, layer, path, outside: str | None = None) -> Path:
        """Write a response/contrast layer as an MNI NIfTI file with its JSON sidecar
        (model file and SHA-256, image, units, mask, resolution); ``outside`` "NaN" or "0"
        (default: the widget's choice) fills the voxels outside the extent."""
        from napari_nrf.errors import check_output
        from napari_nrf.nifti_layers import write_image

        # The file dialog asked about replacing a file; the loaded model and ROI are never replaced.
        check_output(path, [self.state.model_path, self.roi_path.text().strip() or None], overwrite=True,
                     flag="export")
        md = dict((layer.metadata or {}).get(META) or {})
        md["outside"] = outside or self.settings.outside.value
        meta = {"metadata": {META: md}, "name": layer.name, "scale": layer.scale, "translate": layer.translate}
        out = Path(write_image(str(path), layer.data, meta)[0])
        # The peak / cluster table beside it, above the threshold shown (map units).
        from napari_nrf.experiments import write_map_table

        vol = md.get("volume")
        if vol is not None and md.get("grid") is not None:
            thr = float(md.get("threshold", 0.2)) * float(abs(layer.contrast_limits[1]))
            write_map_table(np.asarray(vol), md["grid"], out, threshold=thr)
        return out

    def _export_clicked(self):
        from napari.utils.notifications import show_error, show_info

        layer = self.viewer.layers.selection.active
        if layer is None or layer_kind(layer) not in ("response", "contrast"):
            show_error("napari-nrf: select a response volume layer to export")
            return
        path, _ = QFileDialog.getSaveFileName(self, "Export NIfTI", f"{layer.name}.nii.gz", "NIfTI (*.nii.gz *.nii)")
        if path:
            try:
                out = self.export(layer, path)
            except (OSError, ValueError) as exc:
                notify_error("export failed", exc)
                return
            show_info(f"napari-nrf: wrote {out}")

    def _goto(self):
        from napari.utils.notifications import show_error

        from ._view import go_to_mni, parse_mni

        try:
            go_to_mni(self.viewer, parse_mni(self.goto.text()))
        except ValueError as exc:
            show_error(f"napari-nrf: {exc}")

    def set_threshold(self, frac: float):
        """Hide |value| < frac * colour limit on every response layer (frac in [0, 1))."""
        for layer in self.response_layers():
            layer.colormap = cold_hot(frac)
            layer.metadata[META]["threshold"] = float(frac)

    def set_threshold_units(self, value: float):
        """Hide |value| below ``value`` in the map's own units (SD) on every response layer;
        0 goes back to the percentage slider."""
        if value <= 0:
            self.set_threshold(self.threshold.value() / 100)
            return
        for layer in self.response_layers():
            limit = float(abs(layer.contrast_limits[1])) or 1.0
            frac = min(0.999, float(value) / limit)
            layer.colormap = cold_hot(frac)
            layer.metadata[META]["threshold"] = frac

    def set_opacity(self, value: float):
        for layer in self.response_layers():
            layer.opacity = float(value)

    # ---- keep the combos in sync ----------------------------------------------------------
    def _refresh_layers(self, event=None):
        from napari.layers import Image, Labels

        images = [ly.name for ly in self.viewer.layers if isinstance(ly, Image) and layer_kind(ly) is None
                  and ly.ndim == 2]
        labels = [ly.name for ly in self.viewer.layers if isinstance(ly, Labels) and ly.ndim == 3]
        volumes = [ly.name for ly in self.response_layers()]
        set_choices(self.settings.roi_layer, labels)
        for combo, items in ((self.layer_combo, images), (self.con_a, volumes), (self.con_b, volumes)):
            cur = combo.currentText()
            combo.blockSignals(True)
            combo.clear()
            combo.addItems(items)
            if cur in items:
                combo.setCurrentText(cur)
            combo.blockSignals(False)
        if len(volumes) > 1 and (self.con_b.currentIndex() < 0 or self.con_a.currentText() == self.con_b.currentText()):
            self.con_b.setCurrentIndex(1 if self.con_a.currentIndex() == 0 else 0)
        # one volume is no contrast: not "X − X", an empty B and a disabled button
        if len(volumes) < 2:
            self.con_b.clear()
        self.con_btn.setEnabled(len(volumes) > 1)

    def _extent_changed(self, *args):
        form = self.settings
        ext = form.extent.value
        form.roi_layer.enabled = ext == "ROI from a Labels layer"
        form.roi_file.enabled = ext == "ROI from a NIfTI file"
        form.box.enabled = ext == "box"

    def _model_changed(self, model):
        form = self.settings
        # Honest default: where the model has data; the whole brain only for models
        # without training voxels (their field is all they offer).
        if model is not None and form.extent.value in (DATA, BRAIN):
            has_voxels = any(len(v) for v in model.subjects.values())  # rest-map-only subjects have none
            form.extent.value = DATA if has_voxels else BRAIN
        conditioned = model is not None and model.conditioned
        self.vs_stimulus.setVisible(bool(conditioned))
        if model is None:
            form.subject.choices = []
            return
        subjects = ([CONTINUOUS_SUBJECT] if model.continuous and not conditioned else []) \
            + list(model.subjects)
        form.subject.choices = subjects
        if subjects:
            form.subject.value = subjects[0]
