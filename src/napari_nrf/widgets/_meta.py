"""What the plugin records on its layers: ``layer.metadata[META]`` = {"kind": ..., ...}."""

from __future__ import annotations

META = "napari_nrf"


def layer_kind(layer) -> str | None:
    """The plugin's kind of ``layer`` ("template", "response", "contrast", ...), None for others."""
    md = getattr(layer, "metadata", None) or {}
    return (md.get(META) or {}).get("kind")
