"""BIDS-derivative conventions of napari-nrf's output folders.

Volumes are named like BIDS derivatives, ``[sub-<label>_]space-<template>_res-<mm>mm_
desc-<label>_<suffix>.nii.gz`` (entities in the BIDS order; labels alphanumeric), each
with its JSON sidecar (``Sources``, ``SpaceTemplate``, ...: napari_nrf.volume_meta), and
an output folder holds ``dataset_description.json`` (``DatasetType: derivative``,
``GeneratedBy``). The template is :data:`napari_nrf.space.GRID_TEMPLATE` (FSL's MNI152
box, MNI152NLin6Asym).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from napari_nrf import space
from napari_nrf.errors import write_text_atomic

CODE_URL = "https://github.com/napari-nrf/napari-nrf"
BIDS_VERSION = "1.10.0"


def label(text: str, fallback: str = "x") -> str:
    """A BIDS label (letters and digits only): ``"a_cat-2.v1"`` -> ``"acat2v1"``."""
    out = re.sub(r"[^A-Za-z0-9]", "", str(text))
    return out or fallback


def res_label(resolution_mm: float) -> str:
    """``2.0`` -> ``"2mm"``, ``1.5`` -> ``"1p5mm"`` (the ``res-`` entity)."""
    return f"{float(resolution_mm):g}".replace(".", "p") + "mm"


def derivative_name(desc: str, resolution_mm: float, suffix: str = "response", subject: str | None = None,
                    template: str = space.GRID_TEMPLATE, ext: str = ".nii.gz") -> str:
    """The file name of one derivative volume, e.g.
    ``space-MNI152NLin6Asym_res-2mm_desc-cat_response.nii.gz``."""
    parts = []
    if subject:
        parts.append("sub-" + label(str(subject).removeprefix("sub-")))
    parts += [f"space-{template}", f"res-{res_label(resolution_mm)}", f"desc-{label(desc)}", suffix]
    return "_".join(parts) + ext


def parse_entities(name) -> dict:
    """The BIDS entities of a file name: ``{"space": ..., "res": ..., "desc": ..., "suffix": ...}``."""
    stem = Path(name).name.split(".")[0]
    parts = stem.split("_")
    out = {k: v for k, v in (p.split("-", 1) for p in parts[:-1] if "-" in p)}
    out["suffix"] = parts[-1]
    return out


def generated_by() -> list[dict]:
    from napari_nrf._version import __version__

    return [{"Name": "napari-nrf", "Version": __version__, "CodeURL": CODE_URL}]


def write_dataset_description(folder, name: str = "napari-nrf predictions") -> Path:
    """``<folder>/dataset_description.json`` (a BIDS derivative dataset); an existing one
    that napari-nrf did not write is kept as it is."""
    path = Path(folder) / "dataset_description.json"
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError):
            old = None
        if not (isinstance(old, dict) and any(g.get("Name") == "napari-nrf" for g in old.get("GeneratedBy") or []
                                              if isinstance(g, dict))):
            return path  # the user's own description of their dataset
    desc = {"Name": name, "BIDSVersion": BIDS_VERSION, "DatasetType": "derivative",
            "GeneratedBy": generated_by()}
    return write_text_atomic(path, json.dumps(desc, indent=2) + "\n")
