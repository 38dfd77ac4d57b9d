"""The Rest2Visual kind (a subject's rest map + an image -> the evoked volume)."""

from __future__ import annotations

from napari_nrf.kinds import KindSpec
from napari_nrf.settings import REST2VISUAL_FIT


def train_files(data, out=None, *, backbone: str = "efficientnet-lite0", preset: str = "demo", **fit_kwargs):
    """The recipe on response set files with rest maps: :func:`napari_nrf.recipes.train_rest2visual`."""
    from napari_nrf.data.responseset import ResponseSet
    from napari_nrf.recipes import train_rest2visual

    return train_rest2visual([ResponseSet.load(p) for p in data], backbone=backbone, preset=preset, out=out,
                             **fit_kwargs)


SPEC = KindSpec(kind="rest2visual", title="Rest2Visual: rest map + image -> evoked volume",
                model="napari_nrf.models.rest2visual:Rest2Visual", fit=REST2VISUAL_FIT,
                evaluate="napari_nrf.kinds.rest2visual.evaluate:evaluate_maps",
                recipe="napari_nrf.kinds.rest2visual:train_files",
                verbs={"train": "train-rest2visual", "evaluate": "evaluate-rest2visual"}, data="rest-maps",
                panel={"data": "response sets (.h5) with rest maps", "presets": ("tiny", "demo", "paper")})
