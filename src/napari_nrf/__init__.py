"""napari-nrf: image-to-fMRI encoding models in MNI space.

Qt-free core (``space``, ``features``, ``models``, ``train``, ``query``, ``evaluate``,
``analysis``, ``simulate``, ``jobs``, ``cli``) with thin napari widgets on top.
"""

__version__ = "0.1.0"
