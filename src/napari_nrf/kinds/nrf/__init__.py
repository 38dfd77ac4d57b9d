"""The NRF kind (Neural Response Function: a continuous field over MNI space)."""

from __future__ import annotations

from napari_nrf.kinds import KindSpec
from napari_nrf.settings import NRF_FIT


def train_files(data, out=None, *, backbone: str = "efficientnet-lite0", preset: str = "demo", **fit_kwargs):
    """The NRF recipe on response set files: :func:`napari_nrf.recipes.train_nrf`."""
    from napari_nrf.data.responseset import ResponseSet
    from napari_nrf.recipes import train_nrf

    return train_nrf([ResponseSet.load(p) for p in data], backbone=backbone, preset=preset, out=out, **fit_kwargs)


SPEC = KindSpec(kind="nrf", title="NRF: a continuous field over MNI space", model="napari_nrf.models.nrf:NRF",
                fit=NRF_FIT, recipe="napari_nrf.kinds.nrf:train_files",
                panel={"data": "response sets (.h5), one per subject", "presets": ("tiny", "demo", "paper")})
