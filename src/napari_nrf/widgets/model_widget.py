"""Encoding model dock widget: open a bundle, choose the device, see the model card."""

from __future__ import annotations

from pathlib import Path

from qtpy.QtWidgets import (QComboBox, QFileDialog, QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget)


def available_devices() -> list[str]:
    """"cuda:0", "cuda:1", ... for each CUDA GPU found, then "cpu"."""
    import torch

    return [f"cuda:{i}" for i in range(torch.cuda.device_count())] + ["cpu"]


def model_card(model) -> str:
    """A short plain-text description of a loaded model (kind, backbone, subjects, metrics)."""
    lines = [f"kind: {model.kind}", f"backbone: {model.backbone_name}"]
    for s, xyz in model.subjects.items():
        lines.append(f"subject {s}: {len(xyz)} voxels")
    prov = getattr(model, "provenance", {}) or {}
    if prov.get("data"):
        lines.append(f"trained on: {prov['data']}")
    for k, v in (getattr(model, "metrics", {}) or {}).items():
        if isinstance(v, (int, float)):
            lines.append(f"{k}: {v:.3f}")
    return "\n".join(lines)


class EncodingModelWidget(QWidget):
    """Load a model bundle in a worker thread; errors become napari notifications."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.model = None
        self.path: Path | None = None
        lay = QVBoxLayout(self)
        row = QHBoxLayout()
        self.open_btn = QPushButton("Open model…")
        self.open_btn.clicked.connect(self._choose)
        self.device = QComboBox()
        self.device.addItems(available_devices())
        row.addWidget(self.open_btn)
        row.addWidget(self.device)
        lay.addLayout(row)
        self.card = QLabel("no model loaded")
        self.card.setWordWrap(True)
        lay.addWidget(self.card)
        lay.addStretch()

    def _choose(self):
        path, _ = QFileDialog.getOpenFileName(self, "Open model bundle", "", "Model bundles (*.safetensors)")
        if path:
            self.load(path)

    def load(self, path):
        """Load ``path`` on the chosen device in a thread worker; returns the worker."""
        from napari.qt.threading import create_worker

        from napari_nrf.models import load_model

        worker = create_worker(load_model, str(path), device=self.device.currentText())
        worker.returned.connect(lambda m: self._loaded(m, Path(path)))
        worker.errored.connect(self._failed)
        worker.start()
        return worker

    def _loaded(self, model, path):
        self.model, self.path = model, path
        self.card.setText(f"{path.name}\n" + model_card(model))

    def _failed(self, exc):
        from napari.utils.notifications import show_error

        show_error(f"Could not load the model: {exc}")
