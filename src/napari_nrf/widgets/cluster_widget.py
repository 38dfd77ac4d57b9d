"""Voxel clusters dock widget: k-means maps of a Universal encoder's voxel embeddings.

Choose subjects and k, press *Cluster*: :func:`napari_nrf.analysis.cluster_maps` runs in a
thread worker with progress, and one Labels layer per subject lands in MNI world
coordinates with the per-cluster features table (size, subjects, MNI centroid). The
Region explorer (when docked) is switched to the new layer, so a click on a cluster shows
the library images that drive it most.
"""

from __future__ import annotations

from napari_nrf.errors import Cancelled

import threading

from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (QFormLayout, QHBoxLayout, QLabel, QListWidget, QListWidgetItem, QPushButton,
                            QWidget)

from napari_nrf import space

from ._forms import cluster_settings_form
from ._layout import scrolling_layout
from ._progress import JobPanel, notify_error
from ._render import META, start_worker
from ._state import state_for

RESOLUTIONS = ("1", "1.5", "2", "3", "4")


def _cluster_job(model, subjects, k, resolution, progress, *, cancel):
    from napari_nrf.analysis import cluster_maps

    return cluster_maps(model, k, subjects=subjects, grid=space.Grid.mni(resolution), progress=progress,
                        cancel=cancel)


def cluster_layer_data(maps, subject: str, k: int) -> tuple:
    """(data, kwargs) of the Labels layer of ``subject``'s clusters (napari placement via
    :func:`napari_nrf.space.layer_data`)."""
    data, kw = space.layer_data(maps.volumes[subject], maps.grid)
    kw.update(name=f"clusters k={k} {subject}", opacity=0.7, blending="translucent_no_depth",
              features={c: v for c, v in maps.table.items()},
              metadata={META: {"kind": "clusters", "grid": maps.grid, "subject": subject, "k": k}})
    return data, kw


class VoxelClustersWidget(QWidget):
    """k-means cluster maps of voxel embeddings, one Labels layer per subject.

    Public: :meth:`run` (what the button does; returns the worker), :attr:`maps` (the last
    :class:`napari_nrf.analysis.ClusterMaps`), :attr:`layers` (the layers added).
    Signals: ``done(object)`` with the ClusterMaps.
    """

    done = Signal(object)

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.state = state_for(napari_viewer)
        self.maps = None
        self.layers = []
        self.worker = None
        self._cancel = threading.Event()

        lay = scrolling_layout(self)  # small screens: the controls scroll
        self.model_label = QLabel("model: none (load a universal model in Encoding model)")
        self.model_label.setWordWrap(True)
        lay.addWidget(self.model_label)
        form = QFormLayout()
        self.subjects = QListWidget()
        self.subjects.setToolTip("Subjects clustered together: clusters are shared across the checked subjects")
        self.subjects.setMaximumHeight(120)
        form.addRow("subjects", self.subjects)
        lay.addLayout(form)
        self.settings = cluster_settings_form(RESOLUTIONS)  # magicgui: k, grid (mm)
        lay.addWidget(self.settings.native)
        self.k = self.settings.k.native  # the Qt widgets, as a user (or a test) drives them
        self.resolution = self.settings.resolution.native
        row = QHBoxLayout()
        self.run_btn = QPushButton("Cluster")
        self.run_btn.clicked.connect(self.run)
        row.addWidget(self.run_btn)
        lay.addLayout(row)
        self.job = JobPanel()
        self.progress_bar, self.cancel_btn = self.job.progress_bar, self.job.cancel_btn
        self.job.cancel_requested.connect(self.cancel)
        lay.addWidget(self.job)
        self.info = QLabel("")
        self.info.setWordWrap(True)
        lay.addWidget(self.info)
        lay.addStretch(1)

        self.state.model_changed.connect(self._model_changed)
        self._model_changed(self.state.model)

    # ---- model and subjects ------------------------------------------------------------
    def _model_changed(self, model):
        self.subjects.clear()
        ok = model is not None and model.has_embeddings
        self.run_btn.setEnabled(ok)
        if model is None:
            self.model_label.setText("model: none (load a universal model in Encoding model)")
            return
        if not ok:
            self.model_label.setText(f"model kind {model.kind!r} has no voxel embeddings: "
                                     "cluster maps need a universal model")
            return
        self.model_label.setText(f"model: {model.kind}, {len(model.subjects)} subject(s)")
        for s in model.subjects:
            item = QListWidgetItem(f"{s}")
            item.setFlags(item.flags() | Qt.ItemIsUserCheckable)
            item.setCheckState(Qt.Checked)
            self.subjects.addItem(item)

    def checked_subjects(self) -> list:
        return [self.subjects.item(i).text() for i in range(self.subjects.count())
                if self.subjects.item(i).checkState() == Qt.Checked]

    def set_subjects(self, names) -> None:
        """Check exactly the subjects ``names``."""
        names = set(names)
        for i in range(self.subjects.count()):
            it = self.subjects.item(i)
            it.setCheckState(Qt.Checked if it.text() in names else Qt.Unchecked)

    # ---- run ---------------------------------------------------------------------------
    def run(self):
        """Cluster in a worker; the layers are added when it returns. Returns the worker."""
        from napari.utils.notifications import show_info

        model = self.state.model
        subjects = self.checked_subjects()
        if model is None or not model.has_embeddings:
            show_info("napari-nrf: load a universal model first")
            return None
        if not subjects:
            show_info("napari-nrf: check at least one subject")
            return None
        if self.worker is not None and self.worker.is_running:
            self.cancel()
        k = int(self.settings.k.value)
        res = float(self.settings.resolution.value)
        self._cancel = cancel = threading.Event()
        progress = self.job.reporter()
        self.run_btn.setEnabled(False)
        self.job.start(f"napari-nrf: clustering into {k}")
        self.info.setText(f"clustering {sum(len(model.subjects[s]) for s in subjects)} voxels into {k} clusters…")
        self.worker = start_worker(_cluster_job, model, subjects, k, res, progress,
                                   on_result=lambda maps: self._show(maps, k), on_error=self._failed,
                                   on_finished=self._finished, cancel_event=cancel)
        return self.worker

    def cancel(self):
        self._cancel.set()

    def _finished(self):
        self.run_btn.setEnabled(self.state.model is not None and self.state.model.has_embeddings)
        self.job.finish()

    def _failed(self, exc):
        from napari.utils.notifications import show_info

        if isinstance(exc, Cancelled):
            self.info.setText("cancelled")
            show_info("napari-nrf: clustering cancelled")
            return
        self.info.setText(f"failed: {exc}")
        notify_error("clustering failed", exc)

    def _show(self, maps, k):
        from ._render import ensure_template

        ensure_template(self.viewer)
        self.maps = maps
        self.layers = []
        for s in maps.volumes:
            data, kw = cluster_layer_data(maps, s, k)
            name = kw["name"]
            if name in self.viewer.layers:
                self.viewer.layers.remove(name)
            self.layers.append(self.viewer.add_labels(data, **kw))
        sizes = maps.table["size"]
        self.info.setText(f"{maps.result.k} clusters over {', '.join(maps.volumes)}; largest {int(sizes.max())} "
                          f"voxels, smallest {int(sizes.min())}. Click a cluster to see its top images "
                          "(Region explorer).")
        self._connect_region_explorer()
        self.done.emit(maps)

    def _connect_region_explorer(self):
        """Make the Region explorer (however it was opened) pick labels on the first new
        cluster layer, through the viewer's shared state."""
        if self.layers:
            self.state.region_source.emit(self.layers[0].name)
