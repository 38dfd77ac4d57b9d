"""Encoding model dock widget: open a bundle, choose the device, see the model card."""

from __future__ import annotations

import json
from pathlib import Path

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QComboBox, QFileDialog, QHBoxLayout, QLabel, QPushButton, QWidget

from napari_nrf.errors import write_text_atomic
from ._layout import scrolling_layout
from ._state import state_for

MAX_RECENT = 8
DEMO_ITEM = "demo NRF model (shipped with the plugin)"


def available_devices() -> list[str]:
    """"cuda:0", "cuda:1", ... for each CUDA GPU found, then "cpu" (the first GPU is the default)."""
    import torch

    return [f"cuda:{i}" for i in range(torch.cuda.device_count())] + ["cpu"]


def model_card(model) -> str:
    """A short plain-text description of a loaded model (kind, backbone, subjects, metrics)."""
    kind = model.kind + (" (continuous field in MNI space)" if model.continuous else "")
    n_par = sum(p.numel() for p in model.parameters())
    lines = [f"kind: {kind}", f"backbone: {model.backbone_name}, {n_par / 1e6:.2f} M parameters"]
    total = 0
    for s, xyz in model.subjects.items():
        lines.append(f"subject {s}: {model.describe_subject(s)}")
        total += len(xyz)
    if len(model.subjects) > 1:
        lines.append(f"voxels (all subjects): {total}")
    prov = model.provenance or {}
    for key in ("data", "training_data", "dataset"):
        if prov.get(key):
            data = prov[key] if isinstance(prov[key], (list, tuple)) else [prov[key]]
            lines.append("trained on: " + ", ".join(Path(str(d)).name for d in data))
            break
    tr = prov.get("training")
    if isinstance(tr, dict):
        n = tr.get("n_train_images")
        if isinstance(n, list) and n:
            lines.append(f"training images: {sum(int(v) for v in n)} over {len(n)} subject(s)")
        if isinstance(tr.get("epochs_run"), int):
            lines.append(f"epochs: {tr['epochs_run']} (best {tr.get('best_epoch')})")
    for k, v in (model.metrics or {}).items():
        if isinstance(v, bool):
            continue
        if isinstance(v, (int, float)):
            lines.append(f"{k}: {v:.3f}")
    return "\n".join(lines)


# ---- recent models (a small JSON list in the user cache folder) ---------------------
def _recent_file() -> Path:
    from napari_nrf.features import default_cache_dir

    return default_cache_dir() / "recent_models.json"


def recent_models() -> list[str]:
    """Recently opened model bundles that still exist, newest first."""
    try:
        items = json.loads(_recent_file().read_text())
    except (OSError, ValueError):
        return []
    return [p for p in items if isinstance(p, str) and Path(p).is_file()][:MAX_RECENT]


def add_recent(path) -> None:
    """Put ``path`` first in the recent list (written atomically)."""
    path = str(Path(path).resolve())
    items = [path] + [p for p in recent_models() if p != path]
    write_text_atomic(_recent_file(), json.dumps(items[:MAX_RECENT], indent=1))


def check_device(device: str) -> None:
    """Raise a ValueError with a user message when ``device`` cannot be used here."""
    import torch

    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"{device} was chosen but CUDA is not available on this machine; choose the CPU")
        idx = int(device.split(":")[1]) if ":" in device else 0
        if idx >= torch.cuda.device_count():
            raise ValueError(f"{device} does not exist: this machine has {torch.cuda.device_count()} GPU(s)")


def _load(path: str, device: str, cancel=None):
    from napari_nrf.models import load_model

    check_device(device)
    return load_model(path, device=device)


def load_into_state(state, path, device: str = "cpu", on_loaded=None):
    """Load model bundle ``path`` on ``device`` in a worker and make it the model of every
    widget of the viewer (``state``: :class:`napari_nrf.widgets._state.NrfState`); returns
    the worker. Any widget's *Open model…* goes through here, so the card always names the
    model in use. A file that cannot be loaded (corrupt, not a bundle, wrong device) is a
    one-line error notification; the model in use stays."""
    from ._progress import notify_error
    from ._render import start_worker

    path = Path(path)
    state.model_loading.emit(path.name)

    def loaded(model):
        try:
            add_recent(path)
        except OSError:  # a read-only cache folder must not stop the viewer
            pass
        state.set_model(model, path)
        if on_loaded is not None:
            on_loaded(model)

    def failed(exc):
        state.model_failed.emit(notify_error(f"{path.name} not loaded; the model in use stays", exc))

    return start_worker(_load, str(path), device, on_result=loaded, on_error=failed)


CARD_LINES = 8  # the card shows at least this many lines (kind, subjects, data, metrics)


class ModelCard(QLabel):
    """The model card: a wrapped, selectable label at least :data:`CARD_LINES` lines tall
    in the font it is shown with (napari's style sheet sets it after construction)."""

    def _lines_height(self) -> int:
        m = self.contentsMargins()
        return CARD_LINES * self.fontMetrics().lineSpacing() + m.top() + m.bottom() + 4

    def minimumSizeHint(self):  # noqa: N802 - Qt's name
        hint = super().minimumSizeHint()
        hint.setHeight(max(hint.height(), self._lines_height()))
        return hint

    def heightForWidth(self, width: int) -> int:  # noqa: N802 - a wrapped label's layouts ask this
        return max(super().heightForWidth(width), self._lines_height())


class EncodingModelWidget(QWidget):
    """Load a model bundle in a worker thread; errors become napari notifications.

    The loaded model is shared with the other widgets of the viewer
    (:func:`napari_nrf.widgets._state.state_for`); the card names the model in use,
    whichever widget loaded it.
    """

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.state = state_for(napari_viewer)
        self.model = None
        self.path: Path | None = None
        self.worker = None
        lay = scrolling_layout(self)  # small screens: the controls scroll
        row = QHBoxLayout()
        self.open_btn = QPushButton("Open model…")
        self.open_btn.setToolTip("Open a .safetensors model bundle")
        self.open_btn.clicked.connect(self._choose)
        row.addWidget(self.open_btn)
        # A new user's first model, one click away: the small demo NRF shipped in the package.
        self.demo_btn = QPushButton("Load the demo model")
        self.demo_btn.setToolTip("The small demo NRF model shipped with the plugin (3 virtual subjects)")
        self.demo_btn.clicked.connect(self.load_demo)
        row.addWidget(self.demo_btn)
        lay.addLayout(row)
        row = QHBoxLayout()
        self.recent = QComboBox()
        self.recent.setToolTip("Recently opened models")
        self._fill_recent()
        self.recent.activated.connect(self._recent_chosen)
        row.addWidget(self.recent, 1)
        row.addWidget(QLabel("device"))
        self.device = QComboBox()
        self.device.setToolTip("Where the model runs: each CUDA GPU found, or the CPU")
        self.device.addItems(available_devices())
        row.addWidget(self.device)
        lay.addLayout(row)
        self.rest_btn = QPushButton("Rest map from a NIfTI…")
        self.rest_btn.setToolTip("Rest2Visual: add a new person from their rest map (napari-nrf rest-map), "
                                 "no training; shown as a layer and chosen in the Response volume widget")
        self.rest_btn.clicked.connect(self._choose_rest_map)
        self.rest_btn.setVisible(False)
        lay.addWidget(self.rest_btn)
        self.card = ModelCard("no model loaded")
        self.card.setWordWrap(True)
        self.card.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.card.setAlignment(Qt.AlignLeft | Qt.AlignTop)
        lay.addWidget(self.card)
        lay.addStretch()
        # the dock never hides the card: its minimum shows the buttons and CARD_LINES lines
        self.scroll_area.show_all = True
        self.state.model_changed.connect(self._model_changed)
        self.state.model_loading.connect(self._loading)
        self.state.model_failed.connect(self._load_failed)
        self._model_changed(self.state.model)

    def _fill_recent(self):
        self.recent.clear()
        from napari_nrf.demo import shipped_model_path

        items = recent_models()
        demo = shipped_model_path()
        self.recent.addItem("recent models…" if items or demo.is_file() else "(no recent models)")
        for p in items:
            self.recent.addItem(Path(p).name, p)
        if demo.is_file() and str(demo.resolve()) not in items:
            self.recent.addItem(DEMO_ITEM, str(demo))

    def _loading(self, name: str):
        self.card.setText(f"loading {name}…")

    def _load_failed(self, line: str):
        self._model_changed(self.state.model)  # the card of the model still in use

    def _recent_chosen(self, index: int):
        path = self.recent.itemData(index)
        if path:
            self.load(path)

    def _choose(self):
        path, _ = QFileDialog.getOpenFileName(self, "Open model bundle", "", "Model bundles (*.safetensors)")
        if path:
            self.load(path)

    def load_demo(self):
        """Load the demo NRF model (shipped, or trained once into the cache); returns the worker."""
        from napari_nrf.demo import demo_model_path

        try:
            path = demo_model_path(train=False)
        except FileNotFoundError as exc:
            from ._progress import notify_error

            notify_error("demo model", exc)
            return None
        return self.load(path)

    def load(self, path):
        """Load ``path`` on the chosen device in a thread worker; returns the worker."""
        self.worker = load_into_state(self.state, path, self.device.currentText())
        return self.worker

    def set_model(self, model, path=None):
        """Use an already loaded model (the demo, notebooks); shared with the other widgets."""
        self.state.set_model(model, path)

    def _choose_rest_map(self):
        path, _ = QFileDialog.getOpenFileName(self, "Rest map of a new person", "", "NIfTI (*.nii *.nii.gz)")
        if path:
            self.add_rest_map(path)

    def add_rest_map(self, path):
        """Add the person of rest map NIfTI ``path`` to the Rest2Visual model, show the map
        as a layer; the other widgets see the new subject. Returns the subject name."""
        from napari.utils.notifications import show_error

        from napari_nrf import space
        from napari_nrf.models.rest2visual import subject_from_rest_map
        from napari_nrf.data.restmap import load_rest_map

        try:
            name = subject_from_rest_map(self.model, path)
            vol, grid = load_rest_map(path)
        except (ValueError, OSError) as exc:
            show_error(f"napari-nrf: {exc}")
            return None
        data, kw = space.layer_data(vol, grid)
        self.viewer.add_image(data, name=name, colormap="twilight_shifted", blending="additive", visible=False, **kw)
        self.state.set_model(self.model, self.path)  # refresh every widget's subject list
        return name

    def _model_changed(self, model):
        self.model, self.path = model, self.state.model_path
        self._fill_recent()
        self.rest_btn.setVisible(model is not None and model.conditioned)
        if model is None:
            self.card.setText("no model loaded")
            return
        name = f"model in use: {self.path.name}\n" if self.path else "model in use: (not from a file)\n"
        self.card.setText(name + model_card(model))
