"""4D outputs of movie models: responses (T, V) at voxel MNI coordinates -> a 4D NIfTI
(time as the 4th axis, the TR in the header's pixdim[4], seconds). Grids and affines come
from :mod:`napari_nrf.space` (the only module that builds them)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from napari_nrf import space
from napari_nrf.errors import atomic_write


def voxel_grid(coords, resolution: float | None = None) -> space.Grid:
    """The axis-aligned MNI grid at ``resolution`` mm (default: the voxels' own spacing)
    that spans voxels ``coords`` (V, 3) mm with a margin of one cell."""
    xyz = np.asarray(coords, np.float64)
    if resolution is None:
        d = np.diff(np.unique(np.round(xyz[:, 0], 3)))
        resolution = float(np.median(d)) if len(d) else 2.0
    r = float(resolution)
    return space.Grid.from_extent(r, xyz.min(0) - r, xyz.max(0) + r)


def to_volumes(values: np.ndarray, coords, grid: space.Grid) -> np.ndarray:
    """(X, Y, Z, T) float32, each voxel's time course in its nearest cell, NaN elsewhere."""
    values = np.asarray(values, np.float32)
    ijk, _ = grid.nearest_index(np.asarray(coords, np.float32))
    out = np.full(tuple(grid.shape) + (len(values),), np.nan, np.float32)
    out[ijk[:, 0], ijk[:, 1], ijk[:, 2]] = values.T
    return out


def save_4d(path, values: np.ndarray, coords, tr: float, resolution: float | None = None,
            description: str = "napari-nrf movie prediction", sidecar: dict | None = None) -> Path:
    """Write responses (T, V) at ``coords`` as one 4D NIfTI (atomically) with the TR (s)
    in the header; returns the path. A JSON sidecar is written beside it when given."""
    import json

    import nibabel as nib

    from napari_nrf.errors import write_text_atomic

    grid = voxel_grid(coords, resolution)
    vol = to_volumes(values, coords, grid)
    img = space.to_nifti(vol, grid, description=description)
    img.header.set_zooms(tuple(grid.zooms) + (float(tr),))
    img.header.set_xyzt_units("mm", "sec")
    path = Path(path)
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else path.suffix or ".nii"
    with atomic_write(path, None, tmp_name=f".{path.name}.tmp{os.getpid()}{suffix}") as tmp:
        nib.save(img, str(tmp))
    if sidecar is not None:
        write_text_atomic(space.sidecar_path(path), json.dumps(sidecar, indent=2, default=str))
    return path
