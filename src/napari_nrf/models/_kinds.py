"""Imports every model kind so that each registers itself (see base.register)."""

import importlib

for _name in ("nrf", "universal", "ensemble"):
    try:
        importlib.import_module(f"napari_nrf.models.{_name}")
    except ModuleNotFoundError as exc:  # a kind not written yet
        if exc.name != f"napari_nrf.models.{_name}":
            raise
