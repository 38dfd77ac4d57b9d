"""What a written volume means: the JSON sidecar and NIfTI header text of napari-nrf's
output volumes (Qt-free; :func:`napari_nrf.space.save_nifti` writes them).

A predicted response volume says which model made it (file and SHA-256), from which
image, in which units, where it was computed (the mask: "data" is where the model was
trained, anything larger is extrapolation) and what fills the rest (NaN or 0).
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

import numpy as np

from napari_nrf import space

#: Units of a predicted response unless the model says otherwise (provenance "units"):
#: the training betas were z-scored per voxel within each session.
DEFAULT_UNITS = "z-scored beta (SD)"

#: The extent names a sidecar records, and whether they are extrapolation.
MASK_WORDS = {
    "data": "where the model has data (within reach of its training voxels)",
    "brain": "whole brain (extrapolation outside the model's training voxels)",
    "gm": "grey matter (extrapolation outside the model's training voxels)",
    "none": "whole grid (extrapolation outside the model's training voxels)",
}


def response_units(model) -> str:
    """Units of ``model``'s predictions: its provenance's ``units``, else :data:`DEFAULT_UNITS`."""
    prov = model.provenance or {}
    return str(prov.get("units") or DEFAULT_UNITS)


@functools.lru_cache(maxsize=32)
def _sha256(path: str, size: int, mtime: float) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_sha256(path) -> str | None:
    """SHA-256 hex digest of a file (remembered per size and mtime); None when unreadable."""
    try:
        st = os.stat(path)
        return _sha256(str(Path(path).resolve()), st.st_size, st.st_mtime)
    except OSError:
        return None


def mask_name(spec) -> str:
    """A short name of a mask spec for the sidecar ("data", "brain", a file name, "ROI", "box")."""
    if spec is None:
        return "none"
    if isinstance(spec, str):
        return {"coverage": "data", "grey": "gm", "gray": "gm", "all": "none", "": "none"}.get(spec, spec)
    if isinstance(spec, os.PathLike):
        return Path(spec).name
    return "ROI"


def volume_sidecar(kind: str, grid: space.Grid, *, model=None, model_path=None, image=None, units=None,
                   mask="none", outside: str = "NaN", extra: dict | None = None) -> dict:
    """The JSON sidecar of a written volume.

    Parameters
    ----------
    kind : "response", "contrast" or "clusters"
    grid : space.Grid of the volume (resolution in mm, shape, origin)
    model, model_path : the encoding model and its bundle file (hashed)
    image : str or list of str, the image(s) the volume answers
    units : str (default: :func:`response_units` of ``model``)
    mask : the extent's spec or name ("data", "brain", "gm", "none", a path, "ROI", "box")
    outside : "NaN" or "0", what fills the voxels outside the mask
    """
    from napari_nrf._version import __version__

    name = mask if isinstance(mask, str) and mask in ("ROI", "box") else mask_name(mask)
    out = {
        "generator": f"napari-nrf {__version__}",
        "kind": kind,
        "space": f"MNI152, grid of {space.GRID_TEMPLATE} (FSL's MNI152 box; RAS+, mm; sform/qform code 4)",
        # BIDS-derivative keys: the template of the space- entity, the masks' template
        # (nilearn's, napari_nrf.space.MASK_TEMPLATE) and the inputs (Sources, below).
        "SpaceTemplate": space.GRID_TEMPLATE,
        "Resolution": f"{float(grid.zooms[0]):g} mm isotropic, {' x '.join(map(str, grid.shape))} voxels",
        "resolution_mm": [float(v) for v in grid.zooms],
        "shape": list(grid.shape),
        "mask": name,
        "mask_meaning": MASK_WORDS.get(name, "region of interest"),
        "extrapolation": name != "data" and kind != "clusters",
        "outside_mask": outside,
    }
    if kind in ("response", "contrast"):
        out["units"] = units or (response_units(model) if model is not None else DEFAULT_UNITS)
    if name in ("data", "brain", "gm"):
        out["MaskTemplate"] = space.MASK_TEMPLATE
    sources = []
    if image is not None:
        out["image"] = image
        sources += [str(i) for i in (image if isinstance(image, list) else [image])]
    if model is not None:
        out["model_kind"] = model.kind
        out["backbone"] = model.backbone_name or None
    if model_path is not None:
        out["model_file"] = str(Path(model_path).resolve())
        out["model_sha256"] = file_sha256(model_path)
        sources.insert(0, out["model_file"])
    if sources:
        out["Sources"] = sources
    out.update(extra or {})
    return out


def description(sidecar: dict) -> str:
    """The header's ``descrip`` text (<= 79 ASCII characters) from a sidecar."""
    parts = [f"napari-nrf {sidecar.get('kind', 'volume')}"]
    if sidecar.get("model_kind"):
        parts.append(str(sidecar["model_kind"]))
    img = sidecar.get("image")
    if img:
        parts.append("img=" + (" - ".join(img) if isinstance(img, list) else str(img)))
    if sidecar.get("units"):
        parts.append(str(sidecar["units"]))
    parts.append(f"mask={sidecar.get('mask', 'none')}")
    text = "; ".join(parts)
    return text.encode("ascii", "replace").decode()[:79]


def write_volume(path, volume: np.ndarray, grid: space.Grid, sidecar: dict, outside: str | None = None) -> Path:
    """Write ``volume`` (on ``grid``) to NIfTI ``path`` with its meaning: header description
    and intent (estimate for responses, label for cluster maps) and the JSON sidecar.

    ``outside``: "NaN" keeps NaN outside the mask, "0" writes 0 there (nilearn maskers and
    many viewers turn NaN regions into 0 anyway); default the sidecar's ``outside_mask``.
    """
    outside = outside or sidecar.get("outside_mask", "NaN")
    sidecar = dict(sidecar, outside_mask=outside)
    labels = sidecar.get("kind") == "clusters" or np.issubdtype(np.asarray(volume).dtype, np.integer)
    if not labels:
        volume = np.asarray(volume, np.float32)
        if outside == "0":
            volume = np.nan_to_num(volume, nan=0.0)
    intent = space.INTENT_LABEL if labels else space.INTENT_ESTIMATE
    return space.save_nifti(volume, grid, path, description=description(sidecar), intent=intent,
                            intent_name="labels" if labels else "nrf response", sidecar=sidecar)
