"""A toy model kind shipped as a package of its own (entry point ``napari_nrf.model_kinds``).

Its spec names the model class and a builder; napari-nrf then offers ``train --kind
toy-linear`` (the generic recipe), ``evaluate``, ``query``, a Training jobs entry and the
Response volume widget for it, with no edit in napari-nrf.
"""

from napari_nrf.kinds import KindSpec
from napari_nrf.settings import FitSettings

SPEC = KindSpec(kind="toy-linear", title="toy linear field: the embedding read out over Fourier features of x",
                model="napari_nrf_toy.model:ToyLinearField", build="napari_nrf_toy.model:build",
                fit=FitSettings(lr=3e-3, weight_decay=0.0),
                panel={"data": "response sets (.h5), one per subject"})


from . import model  # noqa: E402,F401  (loading the entry point registers the model class)
