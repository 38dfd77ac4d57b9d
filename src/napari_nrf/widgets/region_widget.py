"""Region explorer dock widget: click a region, see the images that drive it most and least.

A click in the 2D or 3D view picks the label under the cursor on a chosen Labels layer (a
cluster map, a label atlas, any ROI), a thresholded region of an Image layer (a 4D
probabilistic atlas: the most probable volume at the click; a continuous stat map: the
suprathreshold cluster under the click), or a sphere of radius r mm around the clicked
MNI point (in 3D: where the view ray first enters the brain). The legend lists the
source's regions with their names; choosing one scores that region without a click. The region is highlighted,
its MNI centre and size are shown, and the top-k and bottom-k images of the image library
(scored by the model's mean predicted response over the region, from cached features)
appear as thumbnails, computed in a thread worker.
"""

from dataclasses import dataclass, field
import threading

import numpy as np
from qtpy.QtCore import Qt, Signal
from qtpy.QtGui import QImage, QPixmap
from qtpy.QtGui import QColor, QIcon
from qtpy.QtWidgets import (QCheckBox, QComboBox, QDoubleSpinBox, QFileDialog, QFormLayout, QGridLayout,
                            QHBoxLayout, QLabel, QListWidget, QListWidgetItem, QPushButton, QScrollArea,
                            QSpinBox, QVBoxLayout, QWidget)

from napari_nrf import space
from napari_nrf.errors import Cancelled

from napari_nrf.library import ImageLibrary, LibraryError
from ._layout import scrolling_layout
from ._progress import JobPanel, notify_error
from ._render import META, layer_kind, layer_volume, start_worker
from ._state import state_for
from ._status import install_mni_status

SPHERE = "sphere around the click"
MAX_REGION_POINTS = 5000  # larger regions are scored on an even subsample (the mean barely moves)
THUMB = 72


@dataclass
class Region:
    """A picked region.

    Attributes
    ----------
    kind : "label" or "sphere"
    source : str, the Labels layer name or "sphere"
    value : int label value (0 for spheres)
    grid : space.Grid of ``mask``
    mask : bool array (grid.shape)
    click : (3,) MNI mm of the click (sphere centre)
    subject : str or None, the subject of the picked layer (a subject's cluster map)
    """

    kind: str
    source: str
    value: int
    grid: space.Grid
    mask: np.ndarray
    click: np.ndarray
    radius: float = 0.0
    extra: dict = field(default_factory=dict)
    subject: str | None = None
    name: str | None = None

    @property
    def coords(self) -> np.ndarray:
        """(N, 3) float32 MNI mm of the region's voxel centres."""
        return self.grid.coords(self.mask)

    @property
    def n_voxels(self) -> int:
        return int(self.mask.sum())

    @property
    def volume_mm3(self) -> float:
        return float(self.n_voxels * np.prod(self.grid.zooms))

    @property
    def centre(self) -> np.ndarray:
        return self.coords.mean(0) if self.n_voxels else np.full(3, np.nan)

    def describe(self) -> str:
        c = self.centre
        if self.kind == "label":
            what = f"label {self.value} of {self.source}"
        elif self.kind == "map":
            what = f"{self.source} ≥ {self.extra.get('threshold', 0):g}"
            if self.extra.get("volume") is not None:
                what = f"{self.source} volume {self.extra['volume']} ≥ {self.extra.get('threshold', 0):g}"
        else:
            what = f"sphere r = {self.radius:g} mm"
        if self.name:
            what = f"{self.name}: {what}"
        return (f"{what}\ncentre MNI ({c[0]:.1f}, {c[1]:.1f}, {c[2]:.1f}) mm; "
                f"{self.n_voxels} voxels, {self.volume_mm3:.0f} mm³")


def scoring_points(region: Region, max_points: int = MAX_REGION_POINTS) -> np.ndarray:
    """The region's points to score, an even deterministic subsample above ``max_points``."""
    xyz = region.coords
    if len(xyz) > max_points:
        xyz = xyz[np.linspace(0, len(xyz) - 1, max_points).round().astype(int)]
    return xyz


def ray_entry_point(position, view_direction, mask: np.ndarray, grid: space.Grid, step: float = 1.0):
    """First MNI point along the 3D view ray (napari world (z, y, x)) inside ``mask``, or None."""
    p = space.world_to_mni(position)
    d = space.world_to_mni(view_direction)
    n = np.linalg.norm(d)
    if not np.isfinite(n) or n == 0:
        return None
    d = d / n
    t = np.arange(-400.0, 400.0, step)
    pts = p[None] + t[:, None] * d[None]
    ijk, inside = grid.nearest_index(pts)
    hit = np.zeros(len(t), bool)
    hit[inside] = mask[tuple(ijk[inside].T)]
    if not hit.any():
        return None
    return pts[int(np.argmax(hit))]


def _is_map(layer) -> bool:
    """An Image layer read from a NIfTI file: a continuous map (3D) or a 4D (probabilistic) atlas."""
    from napari.layers import Image

    return isinstance(layer, Image) and layer_kind(layer) == "nifti" and layer.ndim in (3, 4)


def label_name(layer, value: int) -> str | None:
    """The name of label ``value`` of a Labels layer: its features' ``name`` (atlases read
    with a label table), else "cluster v" for cluster maps, else None."""
    try:
        feats = layer.features
        if "name" in feats and "index" in feats:
            hit = feats["index"] == int(value)
            if hit.any():
                return str(feats["name"][hit].iloc[0])
    except Exception:  # no features table
        pass
    md = (layer.metadata or {}).get(META) or {}
    names = md.get("label_names") or {}
    if int(value) in names:
        return str(names[int(value)])
    if md.get("kind") == "clusters":
        return f"cluster {int(value)}"
    return None


def _swatch(color) -> "QIcon":
    from qtpy.QtGui import QPixmap

    pix = QPixmap(12, 12)
    pix.fill(color)
    return QIcon(pix)


def _top_job(model, library, xyz, k, subject, progress, *, cancel):
    """Worker body: library features (cached), then the top/bottom images of the region."""
    import torch

    from napari_nrf.analysis import top_images

    with torch.inference_mode():
        feats = library.features(model)
        return top_images(model, feats, coords=xyz, subject=subject, k=k, progress=progress, cancel=cancel)


def scoring_subject(model, region: Region) -> str | None:
    """Whose voxels score a region: None for continuous models (any point); for
    voxel-indexed models the picked layer's subject (a subject's cluster map) when the
    model has it, else the model's first subject."""
    if model.continuous or not model.subjects:
        return None
    if region.subject in model.subjects:
        return region.subject
    return next(iter(model.subjects))


class RegionExplorerWidget(QWidget):
    """Pick a region by clicking; rank the library images by the region's predicted response.

    Public methods: :meth:`pick` (what a click does), :meth:`explore`, :meth:`set_library`.
    Signals: ``picked(Region)``, ``explored(TopImages)``.
    """

    picked = Signal(object)
    explored = Signal(object)

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.state = state_for(napari_viewer)
        self.region: Region | None = None
        self.result = None
        self.worker = None
        self._cancel = threading.Event()
        self._pixmaps = []
        install_mni_status(napari_viewer)

        lay = scrolling_layout(self)  # small screens: the controls scroll
        form = QFormLayout()
        self.source = QComboBox()
        self.source.setToolTip("What a click picks: the label under the cursor on a Labels layer, or a sphere")
        form.addRow("region", self.source)
        self.radius = QDoubleSpinBox()
        self.radius.setRange(1.0, 40.0)
        self.radius.setValue(8.0)
        self.radius.setSuffix(" mm")
        form.addRow("sphere radius", self.radius)
        self.k = QSpinBox()
        self.k.setRange(1, 50)
        self.k.setValue(8)
        self.k.setToolTip("How many of the most and of the least activating images are shown")
        form.addRow("images shown", self.k)
        self.map_volume = QSpinBox()
        self.map_volume.setToolTip("Which volume of a 4D (probabilistic) atlas; a click picks the most "
                                   "probable one there")
        form.addRow("atlas volume", self.map_volume)
        self.map_threshold = QDoubleSpinBox()
        self.map_threshold.setDecimals(3)
        self.map_threshold.setRange(-1e6, 1e6)
        self.map_threshold.setValue(0.25)
        self.map_threshold.setToolTip("An Image source's region: its voxels at or above this value "
                                      "(a probability, or a statistic)")
        trow = QHBoxLayout()
        trow.addWidget(self.map_threshold, 1)
        self.score_btn = QPushButton("Score this ROI")
        self.score_btn.setToolTip("Rank the library for the Image source's voxels above the threshold")
        self.score_btn.clicked.connect(lambda: self.score_source())
        trow.addWidget(self.score_btn)
        form.addRow("threshold", trow)
        self.enabled = QCheckBox("pick regions with a click in the view")
        self.enabled.setChecked(True)
        form.addRow(self.enabled)
        lay.addLayout(form)
        self.legend = QListWidget()
        self.legend.setToolTip("The source's regions; choose one to score it")
        self.legend.setMaximumHeight(130)
        self.legend.itemActivated.connect(self._legend_chosen)
        self.legend.itemClicked.connect(self._legend_chosen)
        lay.addWidget(self.legend)
        lrow = QHBoxLayout()
        self.library_label = QLabel("library: none")
        self.library_label.setWordWrap(True)
        lrow.addWidget(self.library_label, 1)
        btn = QPushButton("Folder…")
        btn.setToolTip("Use a folder of images as the library")
        btn.clicked.connect(self._choose_folder)
        lrow.addWidget(btn)
        lay.addLayout(lrow)
        self.info = QLabel("click a region in the view")
        self.info.setWordWrap(True)
        lay.addWidget(self.info)
        self.job = JobPanel()
        self.progress_bar, self.cancel_btn = self.job.progress_bar, self.job.cancel_btn
        self.job.cancel_requested.connect(self.cancel)
        lay.addWidget(self.job)
        self.grid_widget = QWidget()
        self.thumb_grid = QGridLayout(self.grid_widget)
        self.thumb_grid.setSpacing(2)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(self.grid_widget)
        scroll.setMinimumHeight(2 * (THUMB + 40))
        lay.addWidget(scroll, 1)
        self.thumb_labels: list[QLabel] = []

        self.viewer.layers.events.inserted.connect(self._refresh_sources)
        self.viewer.layers.events.removed.connect(self._refresh_sources)
        self.state.library_changed.connect(self._library_changed)
        self.state.region_source.connect(self.use_source)
        self.source.currentIndexChanged.connect(self._source_changed)
        self._refresh_sources()
        self._source_changed()
        self._library_changed(self.state.library)
        self.viewer.mouse_drag_callbacks.append(self._on_mouse)

    # ---- library ------------------------------------------------------------------------
    def set_library(self, library: ImageLibrary) -> None:
        """Use ``library`` (shared with the viewer's other widgets)."""
        self.state.set_library(library)

    def prepare_library(self):
        """Compute the library's features for the current model in a worker (cached)."""
        model, library = self.state.model, self.state.library
        if model is None or library is None:
            return None
        self.library_label.setText(f"library: {library.label} ({len(library)} images), encoding…")

        def done(_):
            self._library_changed(library)

        def failed(exc):
            self._library_changed(library)
            if not isinstance(exc, Cancelled):
                notify_error("could not encode the image library", exc)

        return start_worker(lambda cancel=None: library.features(model), on_result=done, on_error=failed)

    def _library_changed(self, library):
        if library is None:
            self.library_label.setText("library: none (choose a folder of images)")
        else:
            self.library_label.setText(f"library: {library.label} ({len(library)} images)")

    def _choose_folder(self):
        from napari.utils.notifications import show_error

        folder = QFileDialog.getExistingDirectory(self, "Image library folder")
        if folder:
            try:
                self.set_library(ImageLibrary.from_folder(folder))
            except LibraryError as exc:
                show_error(f"napari-nrf: {exc}")

    # ---- clicks ------------------------------------------------------------------------
    def _on_mouse(self, viewer, event):
        """Mouse-drag callback: a press and release without moving is a pick."""
        if not self.enabled.isChecked() or event.button != 1 or event.modifiers:
            return
        if self.state.model is None or self.state.library is None:
            return  # nothing to rank yet: a click must not add layers or pop-ups
        moved = False
        yield
        while event.type == "mouse_move":
            moved = True
            yield
        if not moved:
            self.pick(event.position, view_direction=event.view_direction, dims_displayed=list(event.dims_displayed))

    def pick(self, position, view_direction=None, dims_displayed=None):
        """Pick the region at napari world ``position`` (z, y, x); highlight it and rank images.

        Returns the :class:`Region` (or None when nothing is there).
        """
        from napari.utils.notifications import show_info

        src = self.source.currentText()
        three_d = dims_displayed is not None and len(dims_displayed) == 3 and view_direction is not None
        if src == SPHERE or src not in self.viewer.layers:
            region = self._sphere(position, view_direction if three_d else None)
        elif _is_map(self.viewer.layers[src]):
            region = self._map_at(self.viewer.layers[src], position)
        else:
            region = self._label(self.viewer.layers[src], position, view_direction, dims_displayed)
        if region is None or region.n_voxels == 0:
            self.info.setText("nothing to pick here: click on a labelled region or inside the brain")
            show_info("napari-nrf: no region under the click")
            return None
        return self.use_region(region)

    def use_region(self, region: Region) -> Region:
        """Highlight ``region``, describe it (with its name) and rank the library for it."""
        self.region = region
        self._highlight(region)
        self.info.setText(region.describe())
        self.picked.emit(region)
        self.explore(region)
        return region

    # ---- image sources: 4D probabilistic atlases and continuous maps ---------------------
    def _map_region(self, layer, k: int | None, seed=None) -> Region | None:
        """Voxels of ``layer`` (volume ``k`` of a 4D one) at or above the threshold; with
        ``seed`` (MNI mm) only the connected cluster that contains it."""
        vol, grid = layer_volume(layer)
        vol = np.asarray(vol)
        data = vol[..., k] if vol.ndim == 4 else vol
        thr = float(self.map_threshold.value())
        mask = np.nan_to_num(data.astype(np.float32), nan=-np.inf) >= thr
        if seed is not None:
            ijk, inside = grid.nearest_index(seed)
            if not inside or not mask[tuple(ijk)]:
                return None
            if vol.ndim == 3:  # a stat map: the suprathreshold cluster under the click
                from scipy import ndimage

                lab, _ = ndimage.label(mask)
                mask = lab == lab[tuple(ijk)]
        names = ((layer.metadata or {}).get(META) or {}).get("volume_names") or {}
        name = names.get(k) if k is not None else None
        click = np.asarray(seed, float) if seed is not None else grid.coords(mask).mean(0) if mask.any() else np.zeros(3)
        return Region("map", layer.name, int(k or 0), grid, mask, click, name=name or (f"volume {k}" if k is not None else None),
                      extra={"threshold": thr, "volume": k})

    def _map_at(self, layer, position):
        xyz = space.world_to_mni(position)
        vol, grid = layer_volume(layer)
        k = None
        if np.asarray(vol).ndim == 4:  # the most probable volume at the click
            ijk, inside = grid.nearest_index(xyz)
            if not inside:
                return None
            k = int(np.nanargmax(np.asarray(vol)[tuple(ijk)]))
            self.map_volume.setValue(k)
        return self._map_region(layer, k, seed=xyz)

    def score_source(self):
        """Score the current Image source's region (4D: the chosen volume) without a click."""
        src = self.source.currentText()
        if src not in self.viewer.layers or not _is_map(self.viewer.layers[src]):
            return None
        layer = self.viewer.layers[src]
        k = int(self.map_volume.value()) if layer.ndim == 4 else None
        region = self._map_region(layer, k)
        if region is None or region.n_voxels == 0:
            self.info.setText(f"no voxel of {src} reaches the threshold")
            return None
        return self.use_region(region)

    def pick_label(self, value: int):
        """Score label ``value`` of the current Labels source (one region of an atlas)."""
        src = self.source.currentText()
        if src not in self.viewer.layers or _is_map(self.viewer.layers[src]):
            return None
        layer = self.viewer.layers[src]
        vol, grid = layer_volume(layer)
        mask = np.asarray(vol) == int(value)
        if not mask.any():
            return None
        subject = ((layer.metadata or {}).get(META) or {}).get("subject")
        region = Region("label", layer.name, int(value), grid, mask, grid.coords(mask).mean(0), subject=subject,
                        name=label_name(layer, int(value)))
        return self.use_region(region)

    # ---- legend ----------------------------------------------------------------------------
    def legend_entries(self) -> list[tuple[int, str]]:
        """(value, text) of the legend: labels of a Labels source, volumes of a 4D atlas."""
        return [(self.legend.item(i).data(Qt.UserRole), self.legend.item(i).text())
                for i in range(self.legend.count())]

    def _source_changed(self, *args):
        src = self.source.currentText()
        layer = self.viewer.layers[src] if src in self.viewer.layers else None
        is_map = layer is not None and _is_map(layer)
        self.radius.setEnabled(layer is None)
        self.map_threshold.setEnabled(is_map)
        self.score_btn.setEnabled(is_map)
        self.map_volume.setEnabled(is_map and layer.ndim == 4)
        if is_map and layer.ndim == 4:
            self.map_volume.setRange(0, layer.data.shape[0] - 1)
        self.legend.clear()
        if layer is None:
            self.legend.setVisible(False)
            return
        md = (layer.metadata or {}).get(META) or {}
        if is_map:
            if layer.ndim != 4:
                self.legend.setVisible(False)
                return
            names = md.get("volume_names") or {}
            for k in range(layer.data.shape[0]):
                it = QListWidgetItem(f"{k}  {names.get(k, f'volume {k}')}")
                it.setData(Qt.UserRole, k)
                self.legend.addItem(it)
        else:
            values = [int(v) for v in np.unique(np.asarray(layer.data)) if int(v) != 0][:2000]
            for v in values:
                it = QListWidgetItem(f"{v}  {label_name(layer, v) or ''}".rstrip())
                it.setData(Qt.UserRole, v)
                try:
                    rgba = np.asarray(layer.get_color(v), float)
                    it.setIcon(_swatch(QColor.fromRgbF(*[float(c) for c in rgba[:3]])))
                except Exception:  # a colormap without this label
                    pass
                self.legend.addItem(it)
        self.legend.setVisible(self.legend.count() > 0)

    def _legend_chosen(self, item):
        value = item.data(Qt.UserRole)
        src = self.source.currentText()
        if src in self.viewer.layers and _is_map(self.viewer.layers[src]):
            self.map_volume.setValue(int(value))
            return self.score_source()
        return self.pick_label(int(value))

    def _label(self, layer, position, view_direction, dims_displayed):
        value = layer.get_value(position, view_direction=view_direction, dims_displayed=dims_displayed, world=True)
        if isinstance(value, tuple):  # multiscale layers give (level, value)
            value = value[-1]
        if value is None or int(value) == 0:
            return None
        vol, grid = layer_volume(layer)
        mask = np.asarray(vol) == int(value)
        subject = ((layer.metadata or {}).get(META) or {}).get("subject")  # cluster maps are per subject
        return Region("label", layer.name, int(value), grid, mask, space.world_to_mni(position), subject=subject,
                      name=label_name(layer, int(value)))

    def _sphere(self, position, view_direction):
        grid = space.Grid.mni(2.0)
        brain = space.brain_mask(grid)
        if view_direction is not None:
            centre = ray_entry_point(position, view_direction, brain, grid)
            if centre is None:
                return None
        else:
            centre = space.world_to_mni(position)
        r = float(self.radius.value())
        sphere = space.sphere_mask(grid, centre, r)
        mask = sphere & brain
        if not mask.any():  # outside the brain mask: keep the bare sphere
            mask = sphere
        return Region("sphere", "sphere", 0, grid, mask, np.asarray(centre, float), radius=r)

    def _highlight(self, region: Region):
        data, kw = space.layer_data(region.mask.astype(np.uint8), region.grid)
        name = "selected region"
        old = [ly for ly in self.viewer.layers if layer_kind(ly) == "region"]
        for ly in old:
            self.viewer.layers.remove(ly)
        layer = self.viewer.add_labels(data, name=name, opacity=0.6, blending="translucent_no_depth",
                                       metadata={META: {"kind": "region", "grid": region.grid}}, **kw)
        # keep the pick source selected so napari's status shows its labels
        src = self.source.currentText()
        if src in self.viewer.layers:
            self.viewer.layers.selection.active = self.viewer.layers[src]
        return layer

    # ---- ranking ------------------------------------------------------------------------
    def explore(self, region: Region | None = None):
        """Rank the library's images for ``region`` (default: the last pick) in a worker."""
        from napari.utils.notifications import show_info

        region = region or self.region
        model, library = self.state.model, self.state.library
        if region is None:
            return None
        if model is None or library is None:
            show_info("napari-nrf: load a model and choose an image library to see the top images")
            return None
        if self.worker is not None and self.worker.is_running:
            self.cancel()
        subject = scoring_subject(model, region)
        xyz = scoring_points(region)
        self._cancel = cancel = threading.Event()
        progress = self.job.reporter()
        self.job.start("napari-nrf: ranking the library for the region")
        self.worker = start_worker(_top_job, model, library, xyz, int(self.k.value()), subject, progress,
                                   on_result=lambda res: self._show(res, library, cancel),
                                   on_error=self._failed, on_finished=self._finished, cancel_event=cancel)
        return self.worker

    def cancel(self):
        self._cancel.set()

    def _finished(self):
        self.job.finish()

    def _failed(self, exc):
        if isinstance(exc, Cancelled):
            return
        notify_error("ranking the images failed", exc)

    def _show(self, res, library, cancel):
        if cancel.is_set():
            return
        self.result = res
        self._clear_thumbs()
        k = len(res.top)
        cols = min(max(k, 1), 4)
        row = 0
        for title, idx, scores in (("most activating", res.top, res.top_scores),
                                   ("least activating", res.bottom, res.bottom_scores)):
            head = QLabel(f"<b>{title}</b>")
            self.thumb_grid.addWidget(head, row, 0, 1, cols)
            self.thumb_labels.append(head)
            row += 1
            for j, (i, s) in enumerate(zip(idx, scores)):
                self._add_thumb(library, int(i), float(s), row + j // cols, j % cols)
            row += (len(idx) + cols - 1) // cols
        self.explored.emit(res)

    def _add_thumb(self, library, i, score, r, c):
        arr = library.thumbnail(i, THUMB)
        h, w = arr.shape[:2]
        qimg = QImage(arr.data, w, h, 3 * w, QImage.Format_RGB888).copy()  # copy: own the pixels
        pix = QPixmap.fromImage(qimg)
        self._pixmaps.append(pix)
        lab = QLabel()
        lab.setPixmap(pix)
        lab.setAlignment(Qt.AlignCenter)
        lab.setToolTip(f"{library.names[i]}: {score:+.3f}")
        txt = QLabel(f"{score:+.2f}")
        txt.setAlignment(Qt.AlignCenter)
        box = QWidget()
        bl = QVBoxLayout(box)
        bl.setContentsMargins(0, 0, 0, 0)
        bl.setSpacing(0)
        bl.addWidget(lab)
        bl.addWidget(txt)
        self.thumb_grid.addWidget(box, r, c)
        self.thumb_labels.append(box)

    def _clear_thumbs(self):
        for w in self.thumb_labels:
            self.thumb_grid.removeWidget(w)
            w.deleteLater()
        self.thumb_labels = []
        self._pixmaps = []

    def n_thumbnails(self) -> int:
        """Number of image thumbnails shown (top + bottom)."""
        return sum(1 for w in self.thumb_labels if not isinstance(w, QLabel))

    def use_source(self, name: str) -> None:
        """Pick regions on the Labels layer ``name`` from now on."""
        self._refresh_sources()
        if name in self.viewer.layers:
            self.source.setCurrentText(name)

    def _refresh_sources(self, event=None):
        from napari.layers import Labels

        names = [ly.name for ly in self.viewer.layers if (isinstance(ly, Labels) and ly.ndim == 3
                 and layer_kind(ly) != "region") or _is_map(ly)]
        cur = self.source.currentText()
        self.source.blockSignals(True)
        self.source.clear()
        self.source.addItem(SPHERE)
        self.source.addItems(names)
        if cur in names or cur == SPHERE:
            self.source.setCurrentText(cur)
        self.source.blockSignals(False)
        self._source_changed()
