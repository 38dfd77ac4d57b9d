"""Virtual experiment dock widget: two image sets (or a folder of categories) -> a statistic
map with a threshold in its own units and a peak / cluster table where a click goes to the peak.

A thin view over :mod:`napari_nrf.experiments` (the statistics, the table, the files): it
collects the sets and the options, runs the experiment in a thread worker (progress,
Cancel) and places the results as layers. Works with every model that predicts a volume
per image (NRF, Universal, ensembles, Rest2Visual with a rest map's subject).
"""

from __future__ import annotations

import math
import threading
from pathlib import Path

import numpy as np
from qtpy.QtCore import QObject, Qt, Signal
from qtpy.QtWidgets import (QAbstractItemView, QComboBox, QDoubleSpinBox, QFileDialog, QFormLayout, QFrame,
                            QHBoxLayout, QHeaderView, QLabel, QPushButton, QSpinBox, QTableWidget,
                            QTableWidgetItem, QWidget)

from napari_nrf import experiments as ex

from ._layout import scrolling_layout
from ._progress import ProgressBar
from ._render import META, RenderCancelled, ensure_template, start_worker, volume_layer_data
from ._state import state_for
from ._status import install_mni_status

TWO_SETS = "two sets: A vs B"
LOCALIZER = "localizer: folder of categories"
DEFAULT_ATLAS = "visual areas (default)"
TABLE_COLUMNS = ("cluster", "x", "y", "z", "t", "mm³", "region")


class _Signals(QObject):
    """Worker thread -> main thread (queued)."""

    progress = Signal(int, int, str)


class SetZone(QLabel):
    """A drop zone for one image set: files or folders dropped here (or chosen with
    :meth:`add`) are listed; the label says how many images it holds."""

    changed = Signal()

    def __init__(self, name: str, parent=None):
        super().__init__(parent)
        self.name = name
        self.paths: list[str] = []
        self.setAcceptDrops(True)
        self.setAlignment(Qt.AlignCenter)
        self.setFrameShape(QFrame.StyledPanel)
        self.setWordWrap(True)
        self.setMinimumHeight(44)
        self._update()

    def add(self, paths) -> list[str]:
        """Add image files or folders (their image files); returns what was not an image source."""
        from napari_nrf.features import image_files
        from napari_nrf.features.images import IMAGE_SUFFIXES, ImageError

        bad = []
        for p in paths:
            p = Path(p)
            if p.is_dir():
                try:
                    self.paths += image_files([p])
                except ImageError:
                    bad.append(str(p))
            elif p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
                self.paths.append(str(p))
            else:
                bad.append(str(p))
        self._update()
        self.changed.emit()
        return bad

    def clear_set(self) -> None:
        self.paths = []
        self._update()
        self.changed.emit()

    def _update(self):
        n = len(self.paths)
        self.setText(f"set {self.name}: drop images or folders here" if not n else
                     f"set {self.name}: {n} image{'s' if n != 1 else ''} ({Path(self.paths[0]).parent.name}/…)")

    def dragEnterEvent(self, event):
        if event.mimeData().hasUrls():
            event.acceptProposedAction()

    def dragMoveEvent(self, event):
        if event.mimeData().hasUrls():
            event.acceptProposedAction()

    def dropEvent(self, event):
        paths = [u.toLocalFile() for u in event.mimeData().urls() if u.isLocalFile()]
        bad = self.add(paths)
        if bad:
            from napari.utils.notifications import show_warning

            show_warning(f"napari-nrf: not images, skipped: {', '.join(Path(b).name for b in bad[:5])}")
        event.acceptProposedAction()


class VirtualExperimentWidget(QWidget):
    """Contrast two image sets, or run a category localizer, through the loaded model.

    Public methods (the tests and the docs' screenshots drive them): :meth:`run`,
    :meth:`cancel`, :meth:`set_threshold`, :meth:`goto_row`, :meth:`export`. After a
    run, ``result`` is the :class:`~napari_nrf.experiments.ContrastResult` shown (for a
    localizer, the chosen category's), ``rows`` the cluster table's rows.
    """

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.state = state_for(napari_viewer)
        self.worker = None
        self.result = None
        self.localizer_result = None
        self.rows: list[dict] = []
        self.stat_layer = None
        self.labels_layer = None
        self._cancel = threading.Event()
        self._signals = _Signals()
        self._signals.progress.connect(self._on_progress)
        install_mni_status(napari_viewer)

        lay = scrolling_layout(self)
        # The plugin's seventh dock: it shrinks further than the others (the mode and the
        # first zone still show) so that every dock open at once still fits 1920 x 1080.
        self.scroll_area.setMinimumHeight(60)
        self.mode = QComboBox()
        self.mode.addItems([TWO_SETS, LOCALIZER])
        self.mode.currentTextChanged.connect(self._mode_changed)
        lay.addWidget(self.mode)

        self.zone_a, self.zone_b = SetZone("A"), SetZone("B")
        self.set_rows = []
        for zone in (self.zone_a, self.zone_b):
            lay.addWidget(zone)
            row = QHBoxLayout()
            add = QPushButton(f"Add folder to {zone.name}…")
            add.clicked.connect(lambda _=False, z=zone: self._choose_folder(z))
            clear = QPushButton("Clear")
            clear.clicked.connect(zone.clear_set)
            row.addWidget(add, 1)
            row.addWidget(clear)
            lay.addLayout(row)
            self.set_rows.append((add, clear))
        loc_row = QHBoxLayout()
        self.folder_label = QLabel("no folder: one sub-folder per category")
        self.folder_label.setWordWrap(True)
        self.folder_btn = QPushButton("Folder…")
        self.folder_btn.clicked.connect(self._choose_localizer_folder)
        loc_row.addWidget(self.folder_label, 1)
        loc_row.addWidget(self.folder_btn)
        lay.addLayout(loc_row)
        self.localizer_folder = None

        form = QFormLayout()
        form.setFieldGrowthPolicy(QFormLayout.AllNonFixedFieldsGrow)
        self.resolution = _spin(0.5, 8.0, 0.5, 2.0, suffix=" mm")
        self.extent = _combo(["data", "brain", "gm"],
                             "data: brain voxels near the model's training voxels; brain / gm: extrapolation")
        self.subject = _combo([], "voxel-indexed models: whose voxels; Rest2Visual: whose rest map")
        self.correction = _combo(["fwe", "fdr", "none"],
                                 "fwe: max-statistic permutations over images; fdr: Benjamini-Hochberg")
        self.permutations = QSpinBox()
        self.permutations.setRange(1, 100000)
        self.permutations.setValue(1000)
        self.alpha = _spin(0.001, 0.5, 0.01, 0.05, decimals=3)
        self.tail = _combo(list(ex.TAILS), "two-sided, greater (A > B) or less (A < B)")
        self.min_effect = _spin(0.0, 100.0, 0.05, 0.2,
                                tip="localizer: smallest effect (data units) for a voxel to get a category")
        for label, w in (("resolution", self.resolution), ("extent", self.extent), ("subject", self.subject),
                         ("correction", self.correction), ("permutations", self.permutations),
                         ("alpha", self.alpha), ("test", self.tail), ("min effect", self.min_effect)):
            form.addRow(label, w)
        lay.addLayout(form)
        self.form = form

        prow = QHBoxLayout()
        self.run_btn = QPushButton("Run")
        self.run_btn.clicked.connect(lambda: self.run())
        self.progress_bar = ProgressBar()
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setEnabled(False)
        self.cancel_btn.clicked.connect(self.cancel)
        prow.addWidget(self.run_btn)
        prow.addWidget(self.progress_bar, 1)
        prow.addWidget(self.cancel_btn)
        lay.addLayout(prow)

        show = QFormLayout()
        show.setFieldGrowthPolicy(QFormLayout.AllNonFixedFieldsGrow)
        self.category = QComboBox()
        self.category.currentTextChanged.connect(self._category_changed)
        show.addRow("category", self.category)
        trow = QHBoxLayout()
        self.threshold = _spin(0.0, 1000.0, 0.25, 0.0, tip="threshold in the map's own units (Welch t); the "
                               "table follows it")
        self.threshold.setPrefix("t ≥ ")
        self.threshold.valueChanged.connect(self.set_threshold)
        self.reset_thr = QPushButton("corrected")
        self.reset_thr.setToolTip("back to the corrected threshold of the test")
        self.reset_thr.clicked.connect(self._reset_threshold)
        trow.addWidget(self.threshold, 1)
        trow.addWidget(self.reset_thr)
        show.addRow("threshold", trow)
        self.atlas = QComboBox()
        self.atlas.setToolTip("region names in the table: the default visual areas or any open Labels atlas")
        self.atlas.currentTextChanged.connect(lambda *_: self._fill_table())
        show.addRow("atlas", self.atlas)
        lay.addLayout(show)

        self.table = QTableWidget(0, len(TABLE_COLUMNS))
        self.table.setHorizontalHeaderLabels(list(TABLE_COLUMNS))
        self.table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.table.verticalHeader().setVisible(False)
        hdr = self.table.horizontalHeader()
        for i in range(len(TABLE_COLUMNS) - 1):
            hdr.setSectionResizeMode(i, QHeaderView.ResizeToContents)
        hdr.setSectionResizeMode(len(TABLE_COLUMNS) - 1, QHeaderView.Stretch)
        self.table.setMinimumHeight(150)
        self.table.setToolTip("click a row to go to its peak")
        self.table.cellClicked.connect(lambda r, _c: self.goto_row(r))
        lay.addWidget(self.table)
        self.export_btn = QPushButton("Export maps and table…")
        self.export_btn.clicked.connect(self._export_clicked)
        self.export_btn.setEnabled(False)
        lay.addWidget(self.export_btn)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        lay.addWidget(self.status)
        lay.addStretch()

        self.state.model_changed.connect(self._model_changed)
        self.viewer.layers.events.inserted.connect(self._refresh_atlases)
        self.viewer.layers.events.removed.connect(self._refresh_atlases)
        self._model_changed(self.state.model)
        self._refresh_atlases()
        self._mode_changed(self.mode.currentText())

    # ---- inputs ----------------------------------------------------------------------------
    def _mode_changed(self, mode):
        two = mode == TWO_SETS
        for w in (self.zone_a, self.zone_b, *[b for row in self.set_rows for b in row]):
            w.setVisible(two)
        self.folder_label.setVisible(not two)
        self.folder_btn.setVisible(not two)
        self.tail.setEnabled(two)
        self.min_effect.setEnabled(not two)

    def _choose_folder(self, zone):
        d = QFileDialog.getExistingDirectory(self, f"Images of set {zone.name}")
        if d:
            zone.add([d])

    def _choose_localizer_folder(self):
        d = QFileDialog.getExistingDirectory(self, "Folder with one sub-folder of images per category")
        if d:
            self.set_localizer_folder(d)

    def set_localizer_folder(self, folder) -> None:
        """Use ``folder`` (one sub-folder of images per category) and switch to the localizer."""
        self.localizer_folder = str(folder)
        self.mode.setCurrentText(LOCALIZER)
        self.folder_label.setText(Path(folder).name + "/")

    def _model_changed(self, model):
        self.subject.clear()
        if model is None:
            return
        cont = model.continuous and not model.conditioned
        self.subject.addItems((["(field: any point)"] if cont else []) + list(model.subjects))
        has_voxels = any(len(v) for v in model.subjects.values())
        self.extent.setCurrentText("data" if has_voxels else "brain")

    def _refresh_atlases(self, event=None):
        from napari.layers import Labels

        cur = self.atlas.currentText()
        names = [DEFAULT_ATLAS] + [ly.name for ly in self.viewer.layers if isinstance(ly, Labels)
                                   and ly is not self.labels_layer and ex.atlas_from_layer(ly) is not None]
        self.atlas.blockSignals(True)
        self.atlas.clear()
        self.atlas.addItems(names)
        self.atlas.setCurrentText(cur if cur in names else DEFAULT_ATLAS)
        self.atlas.blockSignals(False)

    def current_atlas(self):
        name = self.atlas.currentText()
        if name and name != DEFAULT_ATLAS and name in self.viewer.layers:
            return ex.atlas_from_layer(self.viewer.layers[name])
        return None

    # ---- run --------------------------------------------------------------------------------
    def run(self):
        """Start the experiment in a worker; returns the worker (None when it cannot start)."""
        from napari.utils.notifications import show_error, show_info

        model = self.state.model
        if model is None:
            show_error("napari-nrf: load an encoding model first (Encoding model widget)")
            return None
        if self.worker is not None and self.worker.is_running:
            show_info("napari-nrf: an experiment is running; cancel it or wait")
            return None
        subject = self.subject.currentText()
        subject = None if not subject or subject.startswith("(") else subject
        opts = dict(subject=subject, resolution=self.resolution.value(), extent=self.extent.currentText(),
                    correction=self.correction.currentText(), n_permutations=self.permutations.value(),
                    alpha=self.alpha.value())
        try:
            ex.check_model(model)
            if self.mode.currentText() == TWO_SETS:
                job, args = _contrast_job, (model, list(self.zone_a.paths), list(self.zone_b.paths),
                                            dict(opts, tail=self.tail.currentText()))
                for z in (self.zone_a, self.zone_b):
                    if len(z.paths) < 2:
                        raise ex.ExperimentError(f"set {z.name} has {len(z.paths)} image(s); a contrast needs at "
                                                 "least 2 images per set")
            else:
                if not self.localizer_folder:
                    raise ex.ExperimentError("choose a folder with one sub-folder of images per category")
                sets = ex.category_sets(self.localizer_folder)
                job, args = _localizer_job, (model, sets, dict(opts, min_effect=self.min_effect.value()))
        except ex.ExperimentError as exc:
            show_error(f"napari-nrf: {exc}")
            self.status.setText(str(exc))
            return None
        self._cancel = cancel = threading.Event()
        sig = self._signals

        def progress(done, total, message=""):
            sig.progress.emit(int(done), int(total or 0), str(message))

        self.progress_bar.start("napari-nrf: virtual experiment")
        self.cancel_btn.setEnabled(True)
        self.run_btn.setEnabled(False)
        self.status.setText("predicting every image…")
        self.worker = start_worker(job, *args, progress, on_result=self._done, on_error=self._failed,
                                   on_finished=self._finished, cancel_event=cancel)
        return self.worker

    def cancel(self):
        """Stop the running experiment at its next batch or block of permutations."""
        self._cancel.set()
        self.status.setText("cancelling…")

    def _on_progress(self, done, total, message):
        self.progress_bar.report(done, total)
        if message:
            self.status.setText(f"{message}: {done} / {total}")

    def _finished(self):
        self.cancel_btn.setEnabled(False)
        self.run_btn.setEnabled(True)
        self.progress_bar.reset_idle()

    def _failed(self, exc):
        from napari.utils.notifications import show_error, show_info

        if isinstance(exc, (RenderCancelled, ex.ExperimentCancelled)) or self._cancel.is_set():
            self.status.setText("experiment cancelled")
            show_info("napari-nrf: experiment cancelled")
            return
        self.status.setText(f"experiment failed: {exc}")
        show_error(f"napari-nrf: experiment failed: {exc}")

    def _done(self, result):
        if self._cancel.is_set():
            self.status.setText("experiment cancelled")
            return
        ensure_template(self.viewer, self.resolution.value())
        self.category.blockSignals(True)
        self.category.clear()
        if isinstance(result, ex.LocalizerResult):
            self.localizer_result = result
            self._show_labels(result)
            self.category.addItems(result.categories)
            self.category.blockSignals(False)
            self._show(result.contrasts[result.categories[0]])
        else:
            self.localizer_result = None
            self.category.blockSignals(False)
            self._show(result)
        self.export_btn.setEnabled(True)

    def _category_changed(self, name):
        if self.localizer_result is not None and name in self.localizer_result.contrasts:
            self._show(self.localizer_result.contrasts[name])

    def _show_labels(self, loc):
        data, kw, _ = loc.layer_data("localizer: preferred category")
        if self.labels_layer is not None and self.labels_layer in self.viewer.layers:
            self.viewer.layers.remove(self.labels_layer)
        self.labels_layer = self.viewer.add_labels(data, **kw)

    def _show(self, res):
        """Show ``res``'s t map (a diverging map, hidden below the threshold) and its table."""
        self.result = res
        name = f"{res.name} (t)"
        limit = max(float(np.nanmax(np.abs(res.t))) if np.isfinite(res.t).any() else 1.0, 1e-6)
        data, kw, _ = volume_layer_data(res.t, res.grid, name, threshold=0.0, limit=limit, units="Welch t",
                                        image=f"{len(res.names_a)} vs {len(res.names_b)} images")
        kw["metadata"][META]["kind"] = "stat"
        if self.stat_layer is not None and self.stat_layer in self.viewer.layers:
            self.viewer.layers.remove(self.stat_layer)
        self.stat_layer = self.viewer.add_image(data, **kw)
        self._limit = limit
        thr = res.threshold if math.isfinite(res.threshold) else limit
        self.threshold.blockSignals(True)
        self.threshold.setValue(max(0.0, thr))
        self.threshold.blockSignals(False)
        self.set_threshold(self.threshold.value())
        d = res.test_description()
        ok = "none reachable" if d["threshold"] is None else f"t {d['threshold']:.2f}"
        self.status.setText(f"{res.name}: {len(res.names_a)} vs {len(res.names_b)} images, "
                            f"{res.correction.upper()} alpha {res.alpha:g}: {ok}, "
                            f"{d['n_significant_voxels']} voxels")

    def _reset_threshold(self):
        if self.result is not None and math.isfinite(self.result.threshold):
            self.threshold.setValue(self.result.threshold)

    def set_threshold(self, value: float) -> None:
        """Hide |t| below ``value`` (the map's own units) and list the clusters above it."""
        from ._render import cold_hot

        if self.stat_layer is None or self.result is None:
            return
        frac = min(0.999, max(0.0, float(value) / self._limit))
        self.stat_layer.colormap = cold_hot(frac)
        self.stat_layer.metadata[META]["threshold"] = frac
        self._fill_table()

    def _fill_table(self):
        if self.result is None:
            return
        res, thr = self.result, float(self.threshold.value())
        stat = np.where(np.nan_to_num(res.stat, nan=-np.inf) > thr, res.t, 0.0)
        self.rows = ex.clusters_table(stat, res.grid, 0.0, atlas=self.current_atlas())
        self.table.setRowCount(len(self.rows))
        for i, r in enumerate(self.rows):
            vals = (r["cluster"], f"{r['x_mm']:g}", f"{r['y_mm']:g}", f"{r['z_mm']:g}", f"{r['peak_stat']:.2f}",
                    "" if r["size_mm3"] is None else f"{r['size_mm3']:g}", r["region"])
            for j, v in enumerate(vals):
                self.table.setItem(i, j, QTableWidgetItem(v))

    def goto_row(self, row: int) -> None:
        """Move the slices and the view to the peak of table row ``row``."""
        from ._view import go_to_mni

        r = self.rows[row]
        go_to_mni(self.viewer, (r["x_mm"], r["y_mm"], r["z_mm"]))

    # ---- export -------------------------------------------------------------------------------
    def export(self, folder) -> dict:
        """Write the maps (effect, stat, z, thresholded; the localizer's labels too) with their
        sidecars and ``clusters.tsv`` to ``folder``; returns {what: path}."""
        atlas = self.current_atlas()
        model, path = self.state.model, self.state.model_path
        if self.localizer_result is not None:
            return ex.write_localizer(self.localizer_result, folder, model=model, model_path=path, atlas=atlas)
        return ex.write_contrast(self.result, folder, model=model, model_path=path, atlas=atlas)

    def _export_clicked(self):
        from napari.utils.notifications import show_error, show_info

        d = QFileDialog.getExistingDirectory(self, "Folder for the maps and clusters.tsv")
        if not d:
            return
        try:
            self.export(d)
        except (OSError, ValueError) as exc:
            show_error(f"napari-nrf: export failed: {exc}")
            return
        show_info(f"napari-nrf: wrote the maps and clusters.tsv to {d}")


def _spin(lo, hi, step, value, decimals=2, suffix="", tip=""):
    w = QDoubleSpinBox()
    w.setDecimals(decimals)
    w.setRange(lo, hi)
    w.setSingleStep(step)
    w.setValue(value)
    w.setSuffix(suffix)
    w.setToolTip(tip)
    return w


def _combo(items, tip=""):
    w = QComboBox()
    w.addItems(items)
    w.setToolTip(tip)
    return w


def _contrast_job(model, a, b, opts, progress, *, cancel):
    from napari_nrf.features import FeatureCache

    return ex.contrast(model, a, b, feature_cache=_cache(FeatureCache), progress=progress, cancel=cancel, **opts)


def _localizer_job(model, sets, opts, progress, *, cancel):
    from napari_nrf.features import FeatureCache

    return ex.localizer(model, sets, feature_cache=_cache(FeatureCache), progress=progress, cancel=cancel, **opts)


def _cache(factory):
    try:
        return factory()
    except OSError:  # an unwritable cache folder: compute without it
        return None
