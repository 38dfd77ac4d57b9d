"""Arguments shared by the command modules (below every one of them: no cycles)."""

from __future__ import annotations


KIND_HELP = "model kind (default: nrf for train, the bundle's for evaluate and query); napari_nrf.kinds lists them"


def add_device_arg(p) -> None:
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
