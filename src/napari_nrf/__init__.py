"""napari-nrf: image-to-fMRI encoding models in MNI space.

Qt-free core (``space``, ``features``, ``models``, ``train``, ``query``, ``evaluate``,
``analysis``, ``simulate``, ``jobs``, ``cli``) with thin napari widgets on top.
"""

from napari_nrf._version import __version__  # noqa: F401

# The five-line API (napari_nrf.api), imported on first use so `import napari_nrf` stays fast.
__all__ = ["load_model", "predict", "save"]


def __getattr__(name):
    if name in __all__:
        from napari_nrf import api

        return getattr(api, name)
    raise AttributeError(f"module 'napari_nrf' has no attribute {name!r}")
