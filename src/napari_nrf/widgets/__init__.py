"""napari dock widgets. Thin Qt views over the Qt-free core: no science in here."""

from __future__ import annotations


ALL_WIDGETS = "napari-nrf.all_widgets"


def widget_commands() -> list[tuple[str, str]]:
    """(display name, "module:attr") of every dock widget in the plugin manifest, except
    the "All widgets" entry that holds them all (:mod:`napari_nrf.widgets.plugin_widget`)."""
    from importlib.resources import files

    import yaml

    manifest = yaml.safe_load(files("napari_nrf").joinpath("napari.yaml").read_text())
    contrib = manifest["contributions"]
    by_id = {c["id"]: c["python_name"] for c in contrib.get("commands", [])}
    return [(w["display_name"], by_id[w["command"]]) for w in contrib.get("widgets", [])
            if w["command"] != ALL_WIDGETS]


def dock_all(viewer, area: str = "right") -> dict:
    """Dock every widget of the plugin on ``viewer``; returns display name -> widget."""
    import importlib

    out = {}
    for name, target in widget_commands():
        mod, attr = target.split(":")
        cls = getattr(importlib.import_module(mod), attr)
        w = cls(napari_viewer=viewer)
        viewer.window.add_dock_widget(w, name=name, area=area)
        out[name] = w
    return out
