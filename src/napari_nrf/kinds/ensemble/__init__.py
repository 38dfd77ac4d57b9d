"""The ensemble kind (voxelwise least squares over finetuned base models): made by
``napari-nrf finetune`` (new-subject adaptation), not by the training loop."""

from __future__ import annotations

from napari_nrf.kinds import KindSpec

SPEC = KindSpec(kind="ensemble", title="voxelwise ensemble of finetuned base models",
                model="napari_nrf.models.ensemble:EnsembleModel", fittable=False, verbs={"train": "finetune"})
