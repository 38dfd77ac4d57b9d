"""Training jobs dock widget: adapt pretrained models to a new subject, or train a new
NRF from response sets, in the background.

A thin view over :mod:`napari_nrf.jobs` and :mod:`napari_nrf.finetune`: the job runs in a
child process, this widget polls the jobs folder on a timer (progress bars, a live loss
and validation curve, cancel, resume) and, when a job it started succeeds, opens the new
model in the Encoding model widget. Jobs survive napari: interrupted ones are listed
with a Resume button at the next start.
"""

from __future__ import annotations

from pathlib import Path

from qtpy.QtCore import QTimer, Signal
from qtpy.QtGui import QColor, QPainter, QPen
from qtpy.QtWidgets import (QCheckBox, QComboBox, QFileDialog, QFormLayout, QHBoxLayout, QLabel, QLineEdit, QListWidget,
                            QProgressBar, QPushButton, QSpinBox, QTableWidget, QVBoxLayout, QWidget)

from napari_nrf.train_jobs import GROUP

from ._layout import scrolling_layout
from .model_widget import available_devices


class CurveView(QWidget):
    """Two live curves against the epoch: training loss (blue, its range on the left axis)
    and validation median Pearson r (orange, its range on the right axis)."""

    LEFT, RIGHT, TOP, BOTTOM = 44, 44, 18, 16  # px: room for the axes' labels

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setMinimumHeight(110)
        self.loss: list[float] = []
        self.val: list[float] = []

    def set_data(self, loss, val):
        self.loss, self.val = list(loss), list(val)
        self.update()

    def axis_labels(self) -> dict:
        """The axes' texts: ``x`` (epochs), ``loss`` and ``val`` ((low, high) of each, or None)."""
        def rng(series):
            pts = [v for v in series if v == v]
            return (f"{min(pts):.3g}", f"{max(pts):.3g}") if len(pts) >= 2 else None

        n = max(len(self.loss), len(self.val))
        return {"x": f"epoch 1 - {n}" if n else "epoch", "loss": rng(self.loss), "val": rng(self.val)}

    def paintEvent(self, event):  # noqa: N802 - Qt's name
        p = QPainter(self)
        p.fillRect(self.rect(), QColor(30, 30, 30))
        w, h = self.width(), self.height()
        x0, x1, y0, y1 = self.LEFT, w - self.RIGHT, self.TOP, h - self.BOTTOM
        p.setPen(QColor(110, 110, 110))
        p.drawLine(x0, y1, x1, y1)
        p.drawLine(x0, y0, x0, y1)
        p.drawLine(x1, y0, x1, y1)
        labels = self.axis_labels()
        colours = {"loss": QColor(80, 160, 255), "val": QColor(255, 160, 60)}
        for key, series in (("loss", self.loss), ("val", self.val)):
            pts = [v for v in series if v == v]
            if len(pts) < 2:
                continue
            lo, hi = min(pts), max(pts)
            span = (hi - lo) or 1.0
            p.setPen(QPen(colours[key], 2))
            xs = [x0 + (x1 - x0) * i / (len(pts) - 1) for i in range(len(pts))]
            ys = [y1 - (y1 - y0) * (v - lo) / span for v in pts]
            for i in range(len(pts) - 1):
                p.drawLine(int(xs[i]), int(ys[i]), int(xs[i + 1]), int(ys[i + 1]))
            p.setPen(colours[key])
            low, high = labels[key]
            x = 2 if key == "loss" else x1 + 3
            p.drawText(x, y0 + 10, high)
            p.drawText(x, y1, low)
        p.setPen(QColor(200, 200, 200))
        p.drawText(x0 + 4, h - 3, labels["x"])
        last_v = next((v for v in reversed(self.val) if v == v), None)
        txt = "loss (blue, left), val r (orange, right)" + (f": {last_v:.3f}" if last_v is not None else "")
        p.drawText(6, 13, txt)
        p.end()


MODES = ("Finetune pretrained models to a new subject", "Train a new NRF")


def training_modes() -> list[tuple[str, str | None]]:
    """(label, kind) of each mode: finetuning (kind None), then training a new model of
    each kind that has a recipe (napari_nrf.kinds: the specs, NRF first)."""
    from napari_nrf.kinds import trainable_kinds

    kinds = ["nrf"] + [k for k in trainable_kinds() if k != "nrf"]
    return [(MODES[0], None)] + [(MODES[1] if k == "nrf" else f"Train a new {k} model", k) for k in kinds]
RUN_ON = ("this machine", "SLURM cluster (submitit)", "submitit local executor (test)")


class FinetuneJobsWidget(QWidget):
    """Start a background training job and watch it. Two modes (:data:`MODES`):

    * finetune: pick base models and a new subject's data; finetune + ensemble job;
    * train: pick one or more subjects' response sets (one field on the union of their
      voxels) and a model size; a new NRF is trained from scratch.

    Parameters
    ----------
    napari_viewer : napari.Viewer
    jobs_dir : path or None
        Jobs folder (default :func:`napari_nrf.jobs.default_jobs_dir`).

    Attributes
    ----------
    extra_kwargs : dict
        More arguments for new jobs (:func:`napari_nrf.finetune.finetune_ensemble` or
        :func:`napari_nrf.train.fit`: batch sizes, learning rate, ...).
    """

    job_finished = Signal(object)  # the Job, when it leaves the running state

    def __init__(self, napari_viewer, jobs_dir=None, parent=None):
        super().__init__(parent)
        from napari_nrf.jobs import JobManager

        self.viewer = napari_viewer
        self.manager = JobManager(jobs_dir)
        self.extra_kwargs: dict = {}
        self.threads: int | None = None
        self._started: set[str] = set()  # jobs started here: their models open when done
        self._announced: set[str] = set()
        self._offsets: dict[str, int] = {}
        self._curves: dict[str, tuple[list, list]] = {}
        self._rows: dict[str, int] = {}
        self._stages: dict[str, str] = {}  # latest stage text per job (records without a fraction too)
        self._etas: dict[str, float | None] = {}
        self._fractions: dict[str, float] = {}  # job id -> last progress fraction read

        lay = scrolling_layout(self)  # small screens: the controls scroll
        form = QFormLayout()
        self.form = form
        self.mode = QComboBox()
        self._modes = training_modes()
        self.mode.addItems([label for label, _ in self._modes])
        self.mode.setToolTip("Finetune: adapt trained models to a new subject from a few of its images. "
                             "Train: a new NRF from scratch on one or more subjects' response sets.")
        form.addRow("job", self.mode)
        self.bases = QListWidget()
        self.bases.setToolTip("Pretrained models (.safetensors) to finetune; they are never modified")
        self.bases.setMaximumHeight(80)
        brow = QHBoxLayout()
        self.add_base_btn = QPushButton("Add base…")
        self.add_base_btn.clicked.connect(self._choose_bases)
        self.remove_base_btn = QPushButton("Remove")
        self.remove_base_btn.clicked.connect(lambda: [self.bases.takeItem(self.bases.row(i))
                                                      for i in self.bases.selectedItems()])
        brow.addWidget(self.add_base_btn)
        brow.addWidget(self.remove_base_btn)
        form.addRow("base models", self.bases)
        self.bases_buttons = _wrap(brow)
        form.addRow("", self.bases_buttons)
        self.data = QLineEdit()
        self.data.setPlaceholderText("new subject's response set (.h5)")
        drow = QHBoxLayout()
        drow.addWidget(self.data)
        b = QPushButton("…")
        b.clicked.connect(self._choose_data)
        drow.addWidget(b)
        self.data_row = _wrap(drow)
        form.addRow("new subject", self.data_row)
        self.out = QLineEdit()
        self.out.setPlaceholderText("output model (.safetensors)")
        orow = QHBoxLayout()
        orow.addWidget(self.out)
        b = QPushButton("…")
        b.clicked.connect(self._choose_out)
        orow.addWidget(b)
        form.addRow("output", _wrap(orow))
        self.replace = QCheckBox("replace an existing output file")
        self.replace.setToolTip("without it, a job refuses to write over a model that already exists")
        form.addRow("", self.replace)
        self.n_images = QSpinBox()
        self.n_images.setRange(0, 1_000_000)
        self.n_images.setValue(200)
        self.n_images.setSpecialValueText("all")
        self.n_images.setToolTip("training images of the new subject to use (0: all)")
        form.addRow("images", self.n_images)
        self.preset = QComboBox()
        from napari_nrf.models.nrf import PRESETS

        self.preset.addItems(list(PRESETS))
        self.preset.setCurrentText("demo")
        self.preset.setToolTip("model size: tiny (tests), demo (CPU minutes), paper (8 x 4096 MLP, needs a GPU)")
        form.addRow("model size", self.preset)
        self.backbone = QComboBox()
        from napari_nrf.features import BACKBONES

        self.backbone.addItems(sorted(BACKBONES))
        self.backbone.setCurrentText("efficientnet-lite0")
        form.addRow("backbone", self.backbone)
        from napari_nrf.settings import FINETUNE_FIT, NRF_FIT, field_spec

        # Each mode shows its recipe's schedule, from the training settings (default, range,
        # help): finetuning counts epochs (FINETUNE_FIT), a new NRF optimiser steps (NRF_FIT).
        spec = field_spec("epochs", FINETUNE_FIT)
        self.epochs = QSpinBox()
        self.epochs.setRange(spec["min"], min(spec["max"], 1000))
        self.epochs.setValue(spec["default"])
        self.epochs.setToolTip(spec["help"])
        form.addRow("epochs", self.epochs)
        spec = field_spec("steps", NRF_FIT)
        self.steps = QSpinBox()
        self.steps.setRange(0, min(spec["max"], 1_000_000))
        self.steps.setSingleStep(100)
        self.steps.setValue(spec["default"] or 0)
        self.steps.setSpecialValueText("auto")  # 0: the NRF preset's schedule from the image count
        self.steps.setToolTip(spec["help"])
        form.addRow("steps", self.steps)
        self.device = QComboBox()
        self.device.addItems(available_devices())
        form.addRow("device", self.device)
        self.run_on = QComboBox()
        self.run_on.addItems(RUN_ON)
        self.run_on.setToolTip("where the job runs: a child process here, or a SLURM cluster through submitit "
                               "(the jobs folder must be on a file system the nodes share; docs/scale.md)")
        form.addRow("run on", self.run_on)
        self.profile = QLineEdit()
        self.profile.setPlaceholderText("SLURM profile (.toml): partition, time, gpus, mem, account")
        prow = QHBoxLayout()
        prow.addWidget(self.profile)
        b = QPushButton("…")
        b.clicked.connect(self._choose_profile)
        prow.addWidget(b)
        self.profile_row = _wrap(prow)
        form.addRow("SLURM profile", self.profile_row)
        self.run_on.currentIndexChanged.connect(self._run_on_changed)
        self._run_on_changed()
        lay.addLayout(form)
        self.start_btn = QPushButton("Start finetune job")
        self.start_btn.clicked.connect(self.start)
        lay.addWidget(self.start_btn)
        self.mode.currentIndexChanged.connect(self._mode_changed)
        self._mode_changed()

        self.table = QTableWidget(0, 3)
        self.table.setHorizontalHeaderLabels(["job", "state", "progress"])
        self.table.setSelectionBehavior(QTableWidget.SelectRows)
        self.table.setSelectionMode(QTableWidget.SingleSelection)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.verticalHeader().setVisible(False)  # row numbers say nothing; the dock is narrow
        self.table.itemSelectionChanged.connect(self._selection_changed)
        lay.addWidget(self.table)
        crow = QHBoxLayout()
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.clicked.connect(self.cancel_selected)
        self.resume_btn = QPushButton("Resume")
        self.resume_btn.clicked.connect(self.resume_selected)
        crow.addWidget(self.cancel_btn)
        crow.addWidget(self.resume_btn)
        lay.addLayout(crow)
        self.curve = CurveView()
        lay.addWidget(self.curve)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        lay.addWidget(self.status)

        self.timer = QTimer(self)
        self.timer.setInterval(500)
        self.timer.timeout.connect(self.refresh)
        self.timer.start()
        self.refresh()

    # ---- inputs ---------------------------------------------------------------------------
    @property
    def training(self) -> bool:
        """True in a "Train a new ..." mode."""
        return self.mode.currentIndex() >= 1

    @property
    def train_kind(self) -> str | None:
        """The kind a "Train a new ..." mode trains (None when finetuning)."""
        return self._modes[max(0, self.mode.currentIndex())][1]

    def _mode_changed(self, *_):
        train = self.training
        if train:  # the kind's model sizes (its spec's panel)
            from napari_nrf.kinds import spec_for

            presets = list(spec_for(self.train_kind).panel.get("presets", ()))
            if presets != [self.preset.itemText(i) for i in range(self.preset.count())]:
                self.preset.clear()
                self.preset.addItems(presets)
                self.preset.setCurrentText("demo")
        for w, show in ((self.bases, not train), (self.bases_buttons, not train), (self.n_images, not train),
                        (self.epochs, not train), (self.preset, train and self.preset.count() > 0),
                        (self.backbone, train), (self.steps, train)):
            label = self.form.labelForField(w)
            if label is not None:  # the buttons' row has none
                label.setVisible(show)
            w.setVisible(show)
        self.form.labelForField(self.data_row).setText("response sets" if train else "new subject")
        self.data.setPlaceholderText("one or more subjects' response sets (.h5; separate with ;)" if train
                                     else "new subject's response set (.h5)")
        self.start_btn.setText("Start training job" if train else "Start finetune job")

    def _run_on_changed(self, *_):
        show = self.run_on.currentIndex() == 1
        self.form.labelForField(self.profile_row).setVisible(show)
        self.profile_row.setVisible(show)

    def _choose_profile(self):
        path, _ = QFileDialog.getOpenFileName(self, "SLURM profile", "", "TOML profiles (*.toml)")
        if path:
            self.profile.setText(path)

    def job_manager(self):
        """The manager that queues the next job: this machine's, or a submitit one (SLURM
        with the profile's options, or submitit's local executor) on the same jobs folder,
        so that cluster jobs are listed, followed, cancelled and resumed like local ones."""
        i = self.run_on.currentIndex()
        if i == 0:
            return self.manager
        from napari_nrf.cluster import submitit_params
        from napari_nrf.jobs import JobManager

        params = submitit_params(self.profile.text().strip() or None, cluster="slurm" if i == 1 else "local")
        return JobManager(self.manager.root, backend="submitit", submitit_params=params)

    def data_paths(self) -> list[str]:
        """The response sets in the data field (several separated by ';')."""
        return [p.strip() for p in self.data.text().split(";") if p.strip()]

    def _choose_bases(self):
        paths, _ = QFileDialog.getOpenFileNames(self, "Base models", "", "Model bundles (*.safetensors)")
        self.add_bases(paths)

    def add_bases(self, paths):
        have = {self.bases.item(i).text() for i in range(self.bases.count())}
        for p in paths:
            if str(p) not in have:
                self.bases.addItem(str(p))

    def _choose_data(self):
        if self.training:
            paths, _ = QFileDialog.getOpenFileNames(self, "Response sets (one per subject)", "",
                                                    "Response sets (*.h5)")
        else:
            path, _ = QFileDialog.getOpenFileName(self, "New subject's responses", "", "Response sets (*.h5)")
            paths = [path] if path else []
        if paths:
            self.data.setText("; ".join(paths))
            if not self.out.text():
                suffix = f"-{self.train_kind}" if self.training else "-finetuned"
                self.out.setText(str(Path(paths[0]).with_suffix("")) + suffix + ".safetensors")

    def _choose_out(self):
        path, _ = QFileDialog.getSaveFileName(self, "Output model", "", "Model bundles (*.safetensors)")
        if path:
            path = path if path.endswith(".safetensors") else path + ".safetensors"
            self.out.setText(path)
            # Qt's save dialog has already asked whether to replace an existing file.
            if Path(path).exists():
                self.replace.setChecked(True)

    # ---- jobs -----------------------------------------------------------------------------
    def start(self):
        """Submit a job from the form; returns the Job (None with a message on bad input)."""
        from napari_nrf.train_jobs import submit_finetune, submit_train, submit_train_kind

        bases = [self.bases.item(i).text() for i in range(self.bases.count())]
        try:
            manager = self.job_manager()
            if self.training:
                if not self.data_paths() or not self.out.text():
                    raise ValueError("choose the response set(s) and an output file")
                kw = {"steps": self.steps.value() or None, "preset": self.preset.currentText(),
                      "backbone": self.backbone.currentText(), **self.extra_kwargs}
                if self.train_kind == "nrf":
                    job = submit_train(manager, self.data_paths(), self.out.text(),
                                       device=self.device.currentText(), threads=self.threads,
                                       overwrite=self.replace.isChecked(), **kw)
                else:  # any other kind with a recipe, through its spec
                    if self.preset.count() == 0:
                        kw.pop("preset")
                    job = submit_train_kind(manager, self.train_kind, self.data_paths(), self.out.text(),
                                            device=self.device.currentText(), threads=self.threads,
                                            overwrite=self.replace.isChecked(), **kw)
            elif not bases:
                raise ValueError("add at least one base model")
            else:
                if len(self.data_paths()) != 1 or not self.out.text():
                    raise ValueError("choose the new subject's response set (one file) and an output file")
                kw = {"n_images": self.n_images.value() or None, "epochs": self.epochs.value(), **self.extra_kwargs}
                job = submit_finetune(manager, bases, self.data_paths()[0], self.out.text(),
                                      device=self.device.currentText(), threads=self.threads,
                                      overwrite=self.replace.isChecked(), **kw)
        except ValueError as exc:
            existing = getattr(exc, "existing", None) or getattr(exc.__cause__, "existing", None)
            if existing is not None:  # the CLI's "--overwrite" means nothing in a form
                exc = f"{existing} already exists; tick 'replace an existing output file' or choose another output"
            self._error(f"Could not start the job: {exc}")
            return None
        self._started.add(job.id)
        self.refresh()
        self._select(job.id)
        return job

    def _selected_id(self):
        rows = self.table.selectionModel().selectedRows() if self.table.selectionModel() else []
        if not rows:
            return None
        item = self.table.item(rows[0].row(), 0)
        return item.data(256) if item is not None else None  # Qt.UserRole

    def _select(self, job_id):
        row = self._rows.get(job_id)
        if row is not None:
            self.table.selectRow(row)

    def cancel_selected(self):
        jid = self._selected_id()
        if jid:
            self.manager.cancel(jid)
            self.refresh()

    def resume_selected(self):
        jid = self._selected_id()
        if not jid:
            return
        try:
            self.manager.resume(jid)
        except ValueError as exc:
            self._error(str(exc))
            return
        self._started.add(jid)
        self._announced.discard(jid)
        self.refresh()

    def refresh(self):
        """Poll the jobs (start queued ones, notice finished ones) and update the view."""
        from qtpy.QtWidgets import QTableWidgetItem

        try:
            jobs = self.manager.poll()
        except OSError as exc:  # a jobs folder that went away must not kill the timer
            self.status.setText(f"jobs folder unreadable: {exc}")
            return
        # The training group; job folders from before the group field: their target's module.
        jobs = [j for j in jobs if j.group == GROUP or j.spec.get("target", "").startswith("napari_nrf.finetune:")]
        self.table.setRowCount(len(jobs))
        self._rows = {}
        for r, job in enumerate(reversed(jobs)):  # newest first
            self._rows[job.id] = r
            recs, self._offsets[job.id] = job.read_progress(self._offsets.get(job.id, 0))
            loss, val = self._curves.setdefault(job.id, ([], []))
            last = None
            stage = self._stages.get(job.id)
            for rec in recs:
                if rec.get("stage"):
                    stage = rec["stage"]
                if rec.get("epoch") is not None and ("loss" in rec or "val_pearson" in rec):
                    loss.append(rec.get("loss", float("nan")))
                    val.append(rec.get("val_pearson", float("nan")))
                if rec.get("fraction") is not None:
                    last = rec
            item = QTableWidgetItem(job.name)
            item.setData(256, job.id)
            item.setToolTip(str(job.dir))
            self.table.setItem(r, 0, item)
            status = job.status
            cs = job.cluster_state if job.state.get("backend") == "submitit" else None
            self.table.setItem(r, 1, QTableWidgetItem(f"{status} (SLURM {cs})" if cs and cs != "UNKNOWN" and
                                                      status == "running" else status))
            bar = self.table.cellWidget(r, 2)
            if not isinstance(bar, QProgressBar):
                bar = QProgressBar()
                bar.setRange(0, 1000)
                self.table.setCellWidget(r, 2, bar)
            self._stages[job.id] = stage
            if last is not None:
                self._fractions[job.id] = float(last["fraction"])
                self._etas[job.id] = last.get("eta_s")
            # progress records are read once (incrementally): keep each job's last fraction, so
            # a cancelled job still shows how far it got when the rows are rebuilt
            bar.setValue(int(1000 * self._fractions.get(job.id, 1.0 if status == "done" else 0.0)))
            if stage:  # the latest stage, also from records without a fraction (features)
                eta = self._etas.get(job.id) if status == "running" else None
                bar.setFormat(f"%p%  {stage}" + (f"  ETA {eta:.0f} s" if eta else ""))
            if status == "done":
                bar.setValue(1000)
            bar.setProperty("job", job.id)
            if status in ("done", "failed", "cancelled", "interrupted") and job.id not in self._announced:
                if job.id in self._started:
                    self._finished(job)
                self._announced.add(job.id)
        sel = self._selected_id()
        if sel is None and jobs:
            sel = jobs[-1].id
        if sel in self._curves:
            self.curve.set_data(*self._curves[sel])

    def _selection_changed(self):
        jid = self._selected_id()
        if jid in self._curves:
            self.curve.set_data(*self._curves[jid])

    def _finished(self, job):
        st = job.state
        if st.get("state") == "done":
            out = (st.get("result") or {}).get("out")
            self.status.setText(f"{job.name}: done → {out}")
            if out:
                self.open_model(out)
        else:
            msg = f"{job.name}: {st.get('state')}" + (f" ({st['error']})" if st.get("error") else "")
            self.status.setText(msg)
            if st.get("state") == "failed":
                self._error(msg)
        self.job_finished.emit(job)

    def open_model(self, path):
        """Open ``path`` in the docked Encoding model widget (or the shared state)."""
        from .model_widget import EncodingModelWidget

        try:
            docks = dict(self.viewer.window.dock_widgets)
        except Exception:  # a viewer without a window (tests)
            docks = {}
        for w in docks.values():
            if isinstance(w, EncodingModelWidget):
                return w.load(path)
        from ._render import start_worker
        from ._state import state_for
        from .model_widget import _load

        return start_worker(_load, str(path), self.device.currentText(),
                            on_result=lambda m: state_for(self.viewer).set_model(m, Path(path)),
                            on_error=lambda e: self._error(f"Could not load the model: {e}"))

    def _error(self, msg):
        self.status.setText(msg)
        try:
            from napari.utils.notifications import show_error

            show_error(msg)
        except Exception:  # noqa: BLE001 - notifications are best effort
            pass

    def closeEvent(self, event):  # noqa: N802
        self.timer.stop()
        super().closeEvent(event)


def _wrap(layout) -> QWidget:
    w = QWidget()
    layout.setContentsMargins(0, 0, 0, 0)
    w.setLayout(layout)
    return w
