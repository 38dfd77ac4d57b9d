"""The Universal encoder kind (one learned embedding per voxel of every subject)."""

from __future__ import annotations

from napari_nrf.kinds import KindSpec
from napari_nrf.settings import UNIVERSAL_FIT


def train_files(data, out=None, *, backbone: str = "efficientnet-lite0", **fit_kwargs):
    """The joint recipe on response set files: :func:`napari_nrf.recipes.train_universal`."""
    from napari_nrf.data.responseset import ResponseSet
    from napari_nrf.recipes import train_universal

    return train_universal([ResponseSet.load(p) for p in data], backbone=backbone, out=out, **fit_kwargs)


SPEC = KindSpec(kind="universal", title="Universal encoder: voxel embeddings shared across subjects",
                model="napari_nrf.models.universal:UniversalEncoder", fit=UNIVERSAL_FIT,
                recipe="napari_nrf.kinds.universal:train_files", verbs={"train": "train-universal"},
                panel={"data": "response sets (.h5), one per subject"})
