"""MNI space: grids at any resolution, masks, NIfTI in/out and napari placement.

This is the only module of napari-nrf that builds or interprets affines.

Conventions
-----------
* World coordinates are MNI152 millimetres, RAS+ (x to the subject's right, y anterior,
  z superior).
* A :class:`Grid` is axis-aligned with *positive* steps (canonical RAS+ orientation);
  arrays on a grid are indexed ``volume[i, j, k]`` with ``i`` along x, ``j`` along y and
  ``k`` along z. Files with a negative x step (FSL's MNI152 grids) are flipped to
  canonical order on reading.
* napari layers hold the transposed array ``volume.transpose(2, 1, 0)`` (axes z, y, x)
  with ``scale = zooms[::-1]`` and ``translate = origin[::-1]``, so napari world
  coordinates are MNI mm in (z, y, x) order. No layer gets a rotation or an ``affine``.
"""

from __future__ import annotations

import functools
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from napari_nrf.errors import Cancelled, NapariNRFError, atomic_write, write_text_atomic

# The MNI152 bounding box of FSL's 1 mm template (182 x 218 x 182 voxels), in mm.
MNI_BOX_MIN = np.array([-90.0, -126.0, -72.0])
MNI_BOX_MAX = np.array([90.0, 90.0, 108.0])

# The templates behind the two, by their TemplateFlow / BIDS names: the grids of
# Grid.mni span the field of view of FSL's MNI152 T1 (at 2 mm exactly its 91 x 109 x 91
# grid), the "MNI ICBM 152 non-linear 6th generation asymmetric" template; the
# T1 shown and the brain / grey-matter masks are nilearn's load_mni152_* images, which are
# the ICBM 2009a nonlinear *symmetric* template (mni_icbm152_*_tal_nlin_sym_09a).
GRID_TEMPLATE = "MNI152NLin6Asym"
MASK_TEMPLATE = "MNI152NLin2009aSym"

# NRF's coordinate normalisation (official code): u = (x + offset) / size, in [0, 1].
NRF_COORD_OFFSET = np.array([92.0, 126.0, 72.0])
NRF_COORD_SIZE = np.array([182.0, 218.0, 182.0])

# NIfTI xform codes.
XFORM_SCANNER, XFORM_ALIGNED, XFORM_TALAIRACH, XFORM_MNI = 1, 2, 3, 4
_ACCEPTED_XFORM = (XFORM_ALIGNED, XFORM_MNI)  # 0 (unknown) is not trusted

MIN_RESOLUTION, MAX_RESOLUTION = 0.5, 8.0


class SpaceError(NapariNRFError):
    """Raised for input that is not in MNI space or not on an axis-aligned grid."""


@dataclass(frozen=True, eq=False)
class Grid:
    """An axis-aligned RAS+ grid in MNI space.

    Parameters
    ----------
    shape : tuple of 3 int
        Number of voxels along x, y, z.
    origin : array (3,) float
        MNI mm of the centre of voxel (0, 0, 0).
    zooms : array (3,) float
        Voxel size in mm along x, y, z (positive).
    """

    shape: tuple
    origin: np.ndarray
    zooms: np.ndarray

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        object.__setattr__(self, "origin", np.asarray(self.origin, dtype=np.float64).reshape(3))
        object.__setattr__(self, "zooms", np.asarray(self.zooms, dtype=np.float64).reshape(3))
        if len(self.shape) != 3 or min(self.shape) < 1:
            raise SpaceError(f"grid shape must be 3 positive ints, got {self.shape}")
        if np.any(self.zooms <= 0):
            raise SpaceError(f"grid zooms must be positive, got {self.zooms}")

    # ---- construction -------------------------------------------------------------
    @classmethod
    def from_extent(cls, resolution: float | Sequence[float], extent_min=None, extent_max=None) -> "Grid":
        """Grid covering the box ``[extent_min, extent_max]`` (MNI mm) at ``resolution`` mm.

        The grid is centred on the box; the default box is FSL's MNI152 field of view.
        ``resolution`` is checked against [0.5, 8] mm.
        """
        res = np.broadcast_to(np.asarray(resolution, dtype=np.float64), (3,)).copy()
        if np.any(res < MIN_RESOLUTION - 1e-9) or np.any(res > MAX_RESOLUTION + 1e-9):
            raise SpaceError(
                f"resolution must be between {MIN_RESOLUTION} and {MAX_RESOLUTION} mm, got {resolution}"
            )
        lo = MNI_BOX_MIN if extent_min is None else np.asarray(extent_min, dtype=np.float64)
        hi = MNI_BOX_MAX if extent_max is None else np.asarray(extent_max, dtype=np.float64)
        if np.any(hi < lo):
            raise SpaceError(f"extent max {hi} is below extent min {lo}")
        n = np.floor((hi - lo) / res + 1e-6).astype(int) + 1
        centre = (lo + hi) / 2
        origin = centre - (n - 1) * res / 2
        return cls(tuple(n), origin, res)

    @classmethod
    def mni(cls, resolution: float = 2.0) -> "Grid":
        """Whole-brain MNI grid (FSL's field of view) at ``resolution`` mm."""
        return cls.from_extent(resolution)

    @classmethod
    def from_affine(cls, shape: Sequence[int], affine: np.ndarray) -> "Grid":
        """Grid from a NIfTI-style affine that is already canonical (diagonal, positive)."""
        affine = np.asarray(affine, dtype=np.float64)
        lin = affine[:3, :3]
        if not np.allclose(lin, np.diag(np.diag(lin)), atol=1e-4 * np.abs(lin).max()):
            raise SpaceError("affine is oblique or permuted; reorient or resample it first")
        zooms = np.diag(lin)
        if np.any(zooms <= 0):
            raise SpaceError("affine has a negative step; read files through space.load_nifti")
        return cls(tuple(shape)[:3], affine[:3, 3], zooms)

    # ---- properties ---------------------------------------------------------------
    @property
    def affine(self) -> np.ndarray:
        """(4, 4) float64 voxel -> MNI mm affine."""
        a = np.eye(4)
        a[:3, :3] = np.diag(self.zooms)
        a[:3, 3] = self.origin
        return a

    @property
    def resolution(self) -> float:
        """Voxel size in mm (the largest of the three zooms)."""
        return float(self.zooms.max())

    @property
    def n_points(self) -> int:
        return int(np.prod(self.shape))

    @property
    def extent(self) -> tuple[np.ndarray, np.ndarray]:
        """(min, max) MNI mm of the voxel centres."""
        return self.origin.copy(), self.origin + (np.array(self.shape) - 1) * self.zooms

    def __eq__(self, other):
        return (
            isinstance(other, Grid)
            and self.shape == other.shape
            and np.allclose(self.origin, other.origin, atol=1e-5)
            and np.allclose(self.zooms, other.zooms, atol=1e-6)
        )

    def __hash__(self):
        return hash((self.shape, tuple(np.round(self.origin, 4)), tuple(np.round(self.zooms, 5))))

    def __repr__(self):
        z = ",".join(f"{v:g}" for v in self.zooms)
        o = ",".join(f"{v:g}" for v in self.origin)
        return f"Grid(shape={self.shape}, zooms=({z}) mm, origin=({o}) mm)"

    # ---- index <-> world ----------------------------------------------------------
    def index_to_world(self, ijk) -> np.ndarray:
        """Voxel indices (..., 3) -> MNI mm (..., 3) float64."""
        return np.asarray(ijk, dtype=np.float64) * self.zooms + self.origin

    def world_to_index(self, xyz) -> np.ndarray:
        """MNI mm (..., 3) -> fractional voxel indices (..., 3) float64."""
        return (np.asarray(xyz, dtype=np.float64) - self.origin) / self.zooms

    def nearest_index(self, xyz) -> tuple[np.ndarray, np.ndarray]:
        """Nearest voxel (..., 3) int64 of MNI points, and a boolean 'inside the grid'."""
        ijk = np.rint(self.world_to_index(xyz)).astype(np.int64)
        inside = np.all((ijk >= 0) & (ijk < np.array(self.shape)), axis=-1)
        return ijk, inside

    def coords(self, mask: np.ndarray | None = None, dtype=np.float32) -> np.ndarray:
        """MNI mm of the voxel centres, (N, 3), in C order of ``volume[i, j, k]``.

        With ``mask`` (bool array of ``shape``), only the voxels inside it.
        """
        if mask is not None:
            ijk = np.argwhere(self._check_mask(mask))
        else:
            ijk = np.stack(np.meshgrid(*[np.arange(s) for s in self.shape], indexing="ij"), -1).reshape(-1, 3)
        return self.index_to_world(ijk).astype(dtype)

    def iter_points(self, chunk: int, mask: np.ndarray | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(flat_index (n,) int64, xyz (n, 3) float32)`` chunks of at most ``chunk`` points.

        Memory stays bounded by the chunk (plus the mask's flat indices when given),
        so a 0.5 mm whole brain can be streamed.
        """
        if chunk < 1:
            raise SpaceError("chunk must be >= 1")
        if mask is not None:
            flat = np.flatnonzero(self._check_mask(mask))
            total = flat.size
        else:
            flat = None
            total = self.n_points
        for start in range(0, total, chunk):
            stop = min(start + chunk, total)
            idx = flat[start:stop] if flat is not None else np.arange(start, stop, dtype=np.int64)
            ijk = np.stack(np.unravel_index(idx, self.shape), -1)
            yield idx, self.index_to_world(ijk).astype(np.float32)

    def _check_mask(self, mask):
        mask = np.asarray(mask)
        if mask.shape != self.shape:
            raise SpaceError(f"mask shape {mask.shape} does not match grid shape {self.shape}")
        return mask.astype(bool, copy=False)


def nrf_normalise(xyz, offset=NRF_COORD_OFFSET, size=NRF_COORD_SIZE) -> np.ndarray:
    """MNI mm (..., 3) -> NRF's normalised coordinates ``(x + offset) / size`` (float32)."""
    return ((np.asarray(xyz, dtype=np.float32) + np.asarray(offset, np.float32)) / np.asarray(size, np.float32))


# ---- resampling ---------------------------------------------------------------------
def sample_volume(volume: np.ndarray, grid: Grid, xyz, order: int = 1, cval: float = 0.0) -> np.ndarray:
    """Values of ``volume`` (on ``grid``) at MNI points ``xyz`` (N, 3) by spline of ``order``."""
    from scipy.ndimage import map_coordinates

    ijk = grid.world_to_index(np.asarray(xyz).reshape(-1, 3)).T
    return map_coordinates(np.asarray(volume, dtype=np.float32), ijk, order=order, mode="constant", cval=cval)


def resample(volume: np.ndarray, src: Grid, dst: Grid, order: int = 1, cval: float = 0.0) -> np.ndarray:
    """Resample ``volume`` from grid ``src`` onto grid ``dst`` (order 0 nearest, 1 trilinear)."""
    from scipy.ndimage import affine_transform

    # dst index -> src index is diagonal: ijk_src = (zoom_dst/zoom_src) * ijk_dst + (o_dst - o_src)/zoom_src
    matrix = dst.zooms / src.zooms
    offset = (dst.origin - src.origin) / src.zooms
    volume = np.asarray(volume)
    out_dtype = volume.dtype if order == 0 else np.float32
    return affine_transform(
        volume.astype(out_dtype, copy=False), matrix, offset=offset, output_shape=dst.shape,
        order=order, mode="constant", cval=cval,
    )


def points_to_volume(xyz, values, grid: Grid, fill: float = np.nan, dtype=np.float32) -> np.ndarray:
    """Scatter per-point ``values`` (N,) or (N, K) at MNI points ``xyz`` (N, 3) onto ``grid``.

    Each point goes to its nearest voxel (points outside the grid are dropped); where
    several points share a voxel, their mean is taken. Returns ``shape`` or ``shape + (K,)``.
    """
    values = np.asarray(values)
    ijk, inside = grid.nearest_index(xyz)
    flat = np.ravel_multi_index(ijk[inside].T, grid.shape)
    vals = values[inside].reshape(flat.size, -1).astype(np.float64)
    k = vals.shape[1]
    acc = np.zeros((grid.n_points, k))
    cnt = np.zeros(grid.n_points)
    np.add.at(acc, flat, vals)
    np.add.at(cnt, flat, 1)
    out = np.full((grid.n_points, k), fill, dtype=np.float64)
    hit = cnt > 0
    out[hit] = acc[hit] / cnt[hit, None]
    out = out.astype(dtype).reshape(grid.shape + ((k,) if values.ndim > 1 else ()))
    return out


# ---- masks --------------------------------------------------------------------------
@functools.lru_cache(maxsize=4)
def _nilearn_template(kind: str, res: int):
    from nilearn import datasets

    loader = {
        "brain": datasets.load_mni152_brain_mask,
        "gm": datasets.load_mni152_gm_template,
        "template": datasets.load_mni152_template,
    }[kind]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        img = loader(resolution=res)
    data, grid = _canonical_array(img)
    return data.astype(np.float32), grid


DISK_CACHE_MAX_POINTS = 20_000_000  # grids larger than this (0.5 mm: 57 M points) are not stored


def _disk_cached(name: str, grid: Grid, compute, max_points: int = DISK_CACHE_MAX_POINTS) -> np.ndarray:
    """``compute()`` for ``grid``, stored as .npy under ``<cache>/space/`` and reused.

    Resampling nilearn's templates (and importing nilearn) takes seconds at every start
    of the viewer; the resampled arrays are small (235k voxels at 2 mm). The file name
    holds the nilearn version and the grid, so a change of either recomputes. Any
    problem with the cache folder falls back to computing.
    """
    if grid.n_points > max_points:
        return compute()
    try:
        from importlib.metadata import version

        from napari_nrf._cachedir import default_cache_dir

        g = "_".join(f"{v:g}" for v in (*grid.shape, *grid.origin, *grid.zooms))
        path = default_cache_dir() / "space" / f"{name}-nilearn{version('nilearn')}-{g}.npy"
        if path.is_file():
            arr = np.load(path, allow_pickle=False)
            if arr.shape == grid.shape:
                return arr
    except Exception:  # unreadable or foreign file: recompute
        path = None
    arr = compute()
    if path is not None:
        try:
            # atomic: concurrent viewers never read half a file
            with atomic_write(path, None, tmp_name=f"{path.stem}.{os.getpid()}.tmp.npy") as tmp:
                np.save(tmp, arr, allow_pickle=False)
        except OSError:
            pass
    return arr


def template(grid: Grid) -> np.ndarray:
    """The MNI152 (2009, nilearn's) T1 template resampled onto ``grid``, float32 in [0, 1]."""

    def compute():
        data, src = _nilearn_template("template", 1 if grid.resolution < 2 else 2)
        return resample(data, src, grid, order=1).astype(np.float32)

    return _disk_cached("template", grid, compute)


@functools.lru_cache(maxsize=16)
def _mask_cached(kind: str, grid: Grid, threshold: float) -> np.ndarray:
    def compute():
        data, src = _nilearn_template(kind, 1 if grid.resolution < 2 else 2)
        return resample(data, src, grid, order=1) >= threshold

    m = np.array(_disk_cached(f"{kind}-mask-{threshold:g}", grid, compute), dtype=bool)
    m.setflags(write=False)
    return m


def brain_mask(grid: Grid) -> np.ndarray:
    """Whole-brain mask (nilearn's MNI152 brain mask) on ``grid``, bool ``grid.shape``.

    About 235k voxels at 2 mm and 1.9M at 1 mm. Read-only (cached): copy before editing.
    """
    return _mask_cached("brain", grid, 0.5)


def brain_mask_at(grid: Grid, flat_index) -> np.ndarray:
    """``brain_mask(grid).reshape(-1)[flat_index]`` without resampling the whole grid: the
    same trilinear interpolation of nilearn's mask, at those points only (for a 0.5 mm
    grid, 57 M points and seconds of work, of which a query may need a few). Bool (N,)."""
    from scipy.ndimage import map_coordinates

    data, src = _template_cached("brain", 1 if grid.resolution < 2 else 2)
    ijk = np.stack(np.unravel_index(np.asarray(flat_index, np.int64), grid.shape), 0).astype(np.float64)
    # dst index -> src index, as resample() does it
    src_ijk = (grid.zooms / src.zooms)[:, None] * ijk + ((grid.origin - src.origin) / src.zooms)[:, None]
    return map_coordinates(data, src_ijk, order=1, mode="constant", cval=0.0) >= 0.5


@functools.lru_cache(maxsize=4)
def _template_cached(kind: str, res: int):
    return _nilearn_template(kind, res)


def gm_mask(grid: Grid, threshold: float = 0.5) -> np.ndarray:
    """Grey-matter mask (nilearn's MNI152 GM probability >= ``threshold``) on ``grid``."""
    return _mask_cached("gm", grid, float(threshold))


def gm_probability(grid: Grid) -> np.ndarray:
    """Grey-matter probability (float32 in [0, 1]) on ``grid``."""
    data, src = _nilearn_template("gm", 1 if grid.resolution < 2 else 2)
    return resample(data, src, grid, order=1)


def sphere_mask(grid: Grid, center, radius: float) -> np.ndarray:
    """Voxels of ``grid`` whose centres lie within ``radius`` mm of MNI point ``center``."""
    center = np.asarray(center, dtype=np.float64)
    axes = [grid.origin[a] + np.arange(grid.shape[a]) * grid.zooms[a] - center[a] for a in range(3)]
    d2 = axes[0][:, None, None] ** 2 + axes[1][None, :, None] ** 2 + axes[2][None, None, :] ** 2
    return d2 <= radius ** 2


def roi_mask(grid: Grid, labels, values=None, assume_mni: bool = False) -> np.ndarray:
    """Mask of ``grid`` from a label NIfTI (path or image), by nearest-neighbour resampling.

    ``values``: label values to keep (default: every non-zero label).
    """
    data, src = load_nifti(labels, assume_mni=assume_mni)
    where = labels if isinstance(labels, (str, os.PathLike)) else "the mask"
    data = np.asarray(data)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise SpaceError(f"{where}: a mask or label image is 3D, got shape {data.shape}; give one volume")
    if data.dtype.kind == "f":
        finite = np.isfinite(data)
        if not finite.any():
            raise SpaceError(f"{where}: every value of the mask is NaN or infinite; it selects nothing")
        data = np.where(finite, data, 0)  # NaN means "not in the mask", never "in it"
    lab = resample(data, src, grid, order=0)
    keep = lab != 0 if values is None else np.isin(lab, np.atleast_1d(values))
    if values is None and not keep.any():
        raise SpaceError(f"{where}: the mask selects no voxel of the {grid.shape} grid")
    return keep


def resolve_mask(spec, grid: Grid) -> np.ndarray | None:
    """Turn a mask spec into a bool mask on ``grid``.

    ``spec`` is None (no mask), "brain", "gm", a bool array of ``grid.shape``, or a path to
    a label/mask NIfTI (any MNI grid, nearest-neighbour resampled).
    """
    if spec is None or (isinstance(spec, str) and spec in ("", "none", "all")):
        return None
    if isinstance(spec, str) and spec == "brain":
        return brain_mask(grid)
    if isinstance(spec, str) and spec in ("gm", "grey", "gray"):
        return gm_mask(grid)
    if isinstance(spec, str) and spec in ("data", "coverage"):
        raise SpaceError("the mask 'data' (near the model's training voxels) needs the model: use "
                         "QueryEngine.volume(..., mask='data') or napari_nrf.query.coverage_mask(model, grid)")
    if isinstance(spec, (str, os.PathLike)):
        if not os.path.exists(spec) and not str(spec).endswith((".nii", ".nii.gz")):
            raise SpaceError(f"unknown mask {str(spec)!r}: use 'brain', 'gm', 'data' (in a query), 'none' or "
                             "the path of a mask/label NIfTI file")
        return roi_mask(grid, spec)
    return grid._check_mask(spec)


# ---- NIfTI --------------------------------------------------------------------------
def _canonical_array(img) -> tuple[np.ndarray, Grid]:
    import nibabel as nib

    can = nib.as_closest_canonical(img)
    aff = can.affine
    lin = aff[:3, :3]
    if not np.allclose(lin, np.diag(np.diag(lin)), atol=1e-3 * np.abs(lin).max()):
        raise SpaceError(
            "the image affine is oblique (rotated relative to the MNI axes); napari-nrf needs "
            "axis-aligned MNI volumes. Resample it first, e.g. nilearn.image.resample_img("
            "img, target_affine=np.diag([2, 2, 2]))."
        )
    data = np.asanyarray(can.dataobj)
    return data, Grid(can.shape[:3], aff[:3, 3], np.diag(lin))


# What nibabel raises when a NIfTI's data end early or are damaged (gzip's EOFError and
# zlib.error, "Whoops, not enough data in file" as an OSError/ValueError).
_TRUNCATED = (EOFError, OSError, ValueError, __import__("zlib").error)


def truncated_message(path, exc) -> str:
    """One line for a NIfTI whose data cannot be read (truncated or damaged)."""
    return (f"{path}: the NIfTI data are truncated or damaged ({type(exc).__name__}: "
            f"{' '.join(str(exc).split())[:100]}); copy the file again")


def load_nifti(img, assume_mni: bool = False) -> tuple[np.ndarray, Grid]:
    """Read a NIfTI (path or nibabel image) in MNI space as ``(data, grid)``.

    The data are reoriented to canonical RAS+ (``nib.as_closest_canonical``) so that FSL's
    grids (negative x step) and nilearn's grids give the same world placement. 4D data keep
    their last axis. Oblique affines and files whose sform/qform say scanner or Talairach
    space raise :class:`SpaceError` (``assume_mni=True`` skips the space check).
    """
    import nibabel as nib

    where = "the image"
    if isinstance(img, (str, os.PathLike)):
        path = Path(img)
        where = str(path)
        if not path.exists() and not path.is_symlink():
            raise FileNotFoundError(f"NIfTI file not found: {path}")
        from napari_nrf.guards import check_regular_file

        check_regular_file(path, "NIfTI")
        try:
            img = nib.load(str(path))
        except Exception as exc:  # nibabel raises several types for bad files
            raise SpaceError(f"could not read {path} as NIfTI: {exc}") from exc
    if not assume_mni:
        _check_xform(img, where)
    try:
        data, grid = _canonical_array(img)
    except SpaceError:
        raise
    except _TRUNCATED as exc:  # the header was fine, the data end early or are damaged
        raise SpaceError(truncated_message(where, exc)) from None
    if data.dtype.kind == "c":
        raise SpaceError(f"{where}: complex-valued data; give real (magnitude or real part) volumes")
    lo, hi = grid.extent
    if not assume_mni and (np.any(hi < MNI_BOX_MIN - 40) or np.any(lo > MNI_BOX_MAX + 40)):
        raise SpaceError(
            f"the image's field of view {lo.round(1)}..{hi.round(1)} mm does not overlap the MNI152 "
            "brain; is it in MNI space?"
        )
    return data, grid


# NIfTI intent codes written by napari-nrf (nifti1.h).
INTENT_NONE, INTENT_ESTIMATE, INTENT_LABEL = 0, 1001, 1002


def to_nifti(volume: np.ndarray, grid: Grid, dtype=None, description: str | None = None,
             intent: int | str | None = None, intent_name: str = ""):
    """A ``nibabel.Nifti1Image`` of ``volume`` (grid.shape [+ extra dims]) with MNI sform/qform.

    ``description`` goes to the header's 80-byte ``descrip`` field (cut to fit);
    ``intent`` is a NIfTI intent code or nibabel name ("estimate", "label"; default none)
    and ``intent_name`` its 16-byte name (e.g. "response").
    """
    import nibabel as nib

    volume = np.asarray(volume)
    if volume.shape[:3] != grid.shape:
        raise SpaceError(f"volume shape {volume.shape[:3]} does not match grid {grid.shape}")
    if dtype is not None:
        volume = volume.astype(dtype)
    elif volume.dtype == np.float64:
        volume = volume.astype(np.float32)
    elif volume.dtype == bool:
        volume = volume.astype(np.uint8)
    img = nib.Nifti1Image(volume, grid.affine)
    img.header.set_xyzt_units("mm", "sec")
    img.set_sform(grid.affine, code=XFORM_MNI)
    img.set_qform(grid.affine, code=XFORM_MNI)
    if description:
        img.header["descrip"] = description.encode("ascii", "replace")[:79]
    if intent is not None:
        img.header.set_intent(intent, name=intent_name[:15])
    return img


def nifti_stem(path) -> str:
    """File name without ``.nii``/``.nii.gz`` (``a/b.nii.gz`` -> ``b``)."""
    name = Path(path).name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return Path(name).stem


def sidecar_path(path) -> Path:
    """The JSON sidecar of a NIfTI file, BIDS style: ``x.nii.gz`` -> ``x.json``."""
    return Path(path).with_name(nifti_stem(path) + ".json")


def save_nifti(volume: np.ndarray, grid: Grid, path, dtype=None, description: str | None = None,
               intent: int | str | None = None, intent_name: str = "", sidecar: dict | None = None) -> Path:
    """Write ``volume`` on ``grid`` to ``path`` (.nii or .nii.gz) atomically; returns the path.

    ``description``, ``intent`` and ``intent_name`` go to the header (:func:`to_nifti`);
    ``sidecar`` (JSON-able dict) is written beside it as :func:`sidecar_path`, also atomically.
    """
    import json

    import nibabel as nib

    path = Path(path)
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else path.suffix or ".nii"
    with atomic_write(path, None, tmp_name=f".{path.name}.tmp{os.getpid()}{suffix}") as tmp:
        nib.save(to_nifti(volume, grid, dtype=dtype, description=description, intent=intent,
                          intent_name=intent_name), str(tmp))
    if sidecar is not None:
        from napari_nrf.guards import json_safe

        write_text_atomic(sidecar_path(path), json.dumps(json_safe(sidecar), indent=2, default=str))
    return path


def read_sidecar(path) -> dict:
    """The JSON sidecar of NIfTI ``path`` ({} when there is none or it is unreadable)."""
    import json

    try:
        out = json.loads(sidecar_path(path).read_text())
    except (OSError, ValueError):
        return {}
    return out if isinstance(out, dict) else {}


# ---- napari placement ---------------------------------------------------------------
def layer_data(volume: np.ndarray, grid: Grid) -> tuple[np.ndarray, dict]:
    """Volume on ``grid`` -> ``(data, kwargs)`` for a napari Image/Labels layer.

    ``data`` is ``volume.transpose(2, 1, 0)`` (z, y, x; a view, no copy) and
    ``kwargs = {"scale": zooms[::-1], "translate": origin[::-1]}``, so that napari world
    coordinates are MNI mm in (z, y, x) order; ``axis_labels`` ("z", "y", "x") and
    ``units`` (mm) name them. A 4D volume (X, Y, Z, T) becomes (T, z, y, x) with scale 1
    and translate 0 on the volume axis (napari's slider).
    """
    volume = np.asarray(volume)
    if volume.ndim not in (3, 4) or volume.shape[:3] != grid.shape:
        raise SpaceError(f"volume shape {volume.shape} does not match grid {grid.shape}")
    scale = tuple(float(v) for v in grid.zooms[::-1])
    translate = tuple(float(v) for v in grid.origin[::-1])
    labels, units = ("z", "y", "x"), ("mm", "mm", "mm")
    if volume.ndim == 4:
        return volume.transpose(3, 2, 1, 0), {"scale": (1.0,) + scale, "translate": (0.0,) + translate,
                                              "axis_labels": ("volume",) + labels, "units": ("pixel",) + units}
    return volume.transpose(2, 1, 0), {"scale": scale, "translate": translate, "axis_labels": labels, "units": units}


def layer_to_volume(data: np.ndarray, scale, translate) -> tuple[np.ndarray, Grid]:
    """Inverse of :func:`layer_data`: napari (z, y, x) or (T, z, y, x) data + scale/translate
    -> (volume (X, Y, Z) or (X, Y, Z, T), grid)."""
    data = np.asarray(data)
    if data.ndim not in (3, 4):
        raise SpaceError(f"expected a 3D layer (or 3D + volumes), got {data.ndim} dimensions")
    scale = np.asarray(scale, dtype=np.float64)[-3:]
    translate = np.asarray(translate, dtype=np.float64)[-3:]
    grid = Grid(data.shape[-3:][::-1], translate[::-1], scale[::-1])
    return data.transpose(tuple(range(data.ndim))[::-1]), grid


def world_to_mni(position) -> np.ndarray:
    """napari world position (..., z, y, x) -> MNI (x, y, z) mm, float64 (3,)."""
    p = np.asarray(position, dtype=np.float64)
    return p[-3:][::-1].copy()


def mni_to_world(xyz) -> np.ndarray:
    """MNI (x, y, z) mm -> napari world position (z, y, x)."""
    return np.asarray(xyz, dtype=np.float64)[::-1].copy()


# Camera orientation for napari >= 0.5 (depth, vertical, horizontal of the displayed z, y, x).
# 2D: anterior up and the subject's right on the screen's right in axial slices, superior
# up in coronal and sagittal ones: the neurological convention (nilearn's default), as
# seen from above / behind. 3D: "towards" keeps the rendering a rotation of the brain;
# "away" (the value used before) showed its mirror image (a right blob on the screen's
# right when seen from the front), see tests/test_view_gui.py.
NAPARI_CAMERA_ORIENTATION = ("towards", "up", "right")

# 3D camera angles of the plugin's views: from behind, left and above (the occipital and
# ventral visual cortex, where the demo's data are).
NAPARI_CAMERA_ANGLES = (-30.0, 0.0, 70.0)

# Letters of the MNI axes' negative and positive directions.
MNI_AXIS_LETTERS = (("L", "R"), ("P", "A"), ("I", "S"))


# ---- streaming 4D NIfTI (one volume chunk at a time) -------------------------------
def _check_xform(img, where: str) -> None:
    """Refuse headers whose sform/qform code says scanner or Talairach space."""
    s = int(img.header["sform_code"]) if "sform_code" in img.header else 0
    q = int(img.header["qform_code"]) if "qform_code" in img.header else 0
    code = s if s > 0 else q
    if code == 0:
        raise SpaceError(
            f"{where}: its header does not say which space it is in (sform and qform code 0), so its "
            "position in MNI space is unknown; pass --assume-mni (assume_mni=True) if it is MNI152")
    if code not in _ACCEPTED_XFORM:
        name = {XFORM_SCANNER: "scanner (native)", XFORM_TALAIRACH: "Talairach"}.get(code, str(code))
        raise SpaceError(
            f"{where} is in {name} space according to its header (sform/qform code {code}); "
            "napari-nrf needs MNI152 volumes. Normalise it to MNI first, or pass "
            "assume_mni=True if the header is wrong."
        )


class NiftiVolumes:
    """A NIfTI file (3D or 4D) in MNI space, read a few volumes at a time.

    Only the header is read on construction; :meth:`read` decompresses just the requested
    volumes (nibabel's array proxy) and reorients them to the canonical RAS+ :class:`Grid`
    exactly as :func:`load_nifti` does, so a 10 GB session of betas never sits in memory.
    Consecutive chunks are contiguous in the file, so with the file kept open a ``.nii.gz``
    is decompressed once from start to end.

    Attributes
    ----------
    grid : Grid
        Canonical grid of the spatial axes.
    n_volumes : int
        Length of the 4th axis (1 for a 3D file).
    dtype : numpy dtype
        On-disk data type (before any scaling by ``scl_slope``).
    """

    def __init__(self, path, assume_mni: bool = False):
        import nibabel as nib
        from nibabel import orientations as ornt_mod

        path = Path(path)
        if not path.exists() and not path.is_symlink():
            raise FileNotFoundError(f"NIfTI file not found: {path}")
        from napari_nrf.guards import check_regular_file

        check_regular_file(path, "NIfTI")
        try:
            img = nib.load(str(path), keep_file_open=True)
        except Exception as exc:  # nibabel raises several types for bad files
            raise SpaceError(f"could not read {path} as NIfTI: {exc}") from exc
        if len(img.shape) not in (3, 4):
            raise SpaceError(f"{path.name}: expected a 3D or 4D image, got shape {img.shape}")
        if not assume_mni:
            _check_xform(img, path.name)
        self.path = path
        self._img = img
        self._ornt = ornt_mod.io_orientation(img.affine)
        aff = img.affine @ ornt_mod.inv_ornt_aff(self._ornt, img.shape[:3])
        lin = aff[:3, :3]
        if not np.allclose(lin, np.diag(np.diag(lin)), atol=1e-3 * np.abs(lin).max()):
            raise SpaceError(
                f"{path.name}: the image affine is oblique (rotated relative to the MNI axes); "
                "napari-nrf needs axis-aligned MNI volumes. Resample it first, e.g. "
                "nilearn.image.resample_img(img, target_affine=np.diag([2, 2, 2]))."
            )
        # ornt[i, 0] is the canonical axis that input axis i becomes.
        shape = [0, 0, 0]
        for i, a in enumerate(self._ornt[:, 0]):
            shape[int(a)] = int(img.shape[i])
        self.grid = Grid(shape, aff[:3, 3], np.diag(lin))
        self.n_volumes = int(img.shape[3]) if len(img.shape) == 4 else 1
        self.dtype = img.get_data_dtype()
        lo, hi = self.grid.extent
        if not assume_mni and (np.any(hi < MNI_BOX_MIN - 40) or np.any(lo > MNI_BOX_MAX + 40)):
            raise SpaceError(
                f"{path.name}: the field of view {lo.round(1)}..{hi.round(1)} mm does not overlap "
                "the MNI152 brain; is it in MNI space?"
            )

    def read(self, start: int, stop: int, mask: np.ndarray | None = None) -> np.ndarray:
        """Volumes ``start:stop`` on the canonical grid.

        Returns ``grid.shape + (n,)`` or, with ``mask`` (bool, ``grid.shape``), ``(n, V)``
        with voxels in the C order of ``np.argwhere(mask)`` (as :meth:`Grid.coords`).
        The on-disk dtype is kept when the header has no scaling (int16 betas stay 2 bytes
        a value); scaled or float64 data come back as float32.
        """
        from nibabel import orientations as ornt_mod

        if self._img is None:
            raise SpaceError(f"{self.path.name}: the file was closed")
        if not 0 <= start < stop <= self.n_volumes:
            raise SpaceError(f"{self.path.name}: volumes {start}:{stop} outside 0:{self.n_volumes}")
        try:
            if len(self._img.shape) == 4:
                raw = np.asarray(self._img.dataobj[..., start:stop])
            else:
                raw = np.asarray(self._img.dataobj)[..., None]
        except _TRUNCATED as exc:
            raise SpaceError(truncated_message(self.path, exc)) from None
        if raw.dtype.kind == "c":
            raise SpaceError(f"{self.path.name}: complex-valued data; give real (magnitude or real part) volumes")
        data = ornt_mod.apply_orientation(raw, self._ornt)
        if data.dtype == np.float64:
            data = data.astype(np.float32)
        if mask is None:
            return data
        mask = self.grid._check_mask(mask)
        return np.ascontiguousarray(data[mask].T)

    def close(self) -> None:
        """Drop the image (its proxy closes the kept-open file when collected)."""
        self._img = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


COVERAGE_BLOCK = 65536  # grid points per KD-tree query of coverage_mask: a cancel is heard within ~0.2 s


def _check_coverage_cancel(cancel) -> None:
    if cancel is not None and cancel():
        raise Cancelled("coverage mask cancelled")


def coverage_mask(voxel_sets, grid: "Grid", cancel=None) -> np.ndarray:
    """Brain voxels of ``grid`` within reach of ``voxel_sets`` (iterable of (V, 3) MNI mm
    arrays: a model's training voxels, the mask ``"data"`` of queries).

    A continuous field answers everywhere, but away from its training voxels it only
    extrapolates; this is where its predictions rest on data. "Within reach": at most
    ``r`` mm from a training voxel, ``r`` the median distance between neighbouring
    training voxels (their spacing; at least half the grid's diagonal so that a coarse
    grid is not empty, at most 6 mm for sparse sets). Bool ``grid.shape``.

    ``cancel()`` returning True raises :class:`napari_nrf.errors.Cancelled` between steps
    (blocks of :data:`COVERAGE_BLOCK` candidate points; a 0.5 mm grid has 15 M brain points).
    """
    from scipy.spatial import cKDTree

    mask = np.zeros(grid.shape, bool)
    xyz = [np.asarray(v, np.float64).reshape(-1, 3) for v in voxel_sets]
    xyz = np.concatenate(xyz) if xyz else np.zeros((0, 3))
    if len(xyz) == 0:
        return mask
    tree = cKDTree(xyz)
    r = 0.5 * float(np.sqrt(3)) * grid.resolution
    if len(xyz) > 1:
        sample = xyz[:: max(1, len(xyz) // 2000)]
        d, _ = tree.query(sample, k=2)
        r = max(r, min(float(np.median(d[:, 1])), 6.0))
    # A grid too big for the disk cache (0.5 mm) would resample the whole brain mask first
    # (tens of seconds, deaf to Cancel): look it up at the candidates only, block by block.
    big = grid.n_points > DISK_CACHE_MAX_POINTS
    brain = None if big else brain_mask(grid)
    _check_coverage_cancel(cancel)
    # Candidates first, without listing the brain's points (15 M at 0.5 mm): a point within
    # r of a training voxel lies in that voxel's r-sized cell or a neighbouring one, and a
    # grid point's cell is per axis, so the candidates are one broadcast lookup.
    from scipy.ndimage import binary_dilation

    lo = xyz.min(0) - r
    n_cells = np.floor((xyz.max(0) + r - lo) / r).astype(int) + 1
    occ = np.zeros(n_cells, bool)
    occ[tuple(np.floor((xyz - lo) / r).astype(int).T)] = True
    occ = np.pad(binary_dilation(occ, np.ones((3, 3, 3), bool)), ((0, 1),) * 3)  # pad: "outside" cell
    cells = []
    for a in range(3):
        c = np.floor((grid.origin[a] + np.arange(grid.shape[a]) * grid.zooms[a] - lo[a]) / r).astype(int)
        cells.append(np.where((c >= 0) & (c < n_cells[a]), c, n_cells[a]))  # outside -> the empty pad
    cand, plane = [], grid.shape[1] * grid.shape[2]
    for i0 in range(0, grid.shape[0], 16):  # slabs of 16 planes: Cancel is heard between them
        _check_coverage_cancel(cancel)
        near = occ[np.ix_(cells[0][i0:i0 + 16], cells[1], cells[2])]
        if brain is not None:
            near &= brain[i0:i0 + 16]
        cand.append(np.flatnonzero(near) + i0 * plane)
    cand = np.concatenate(cand)
    keep = []
    for s in range(0, len(cand), COVERAGE_BLOCK):
        _check_coverage_cancel(cancel)
        block = cand[s:s + COVERAGE_BLOCK]
        if brain is None:
            block = block[brain_mask_at(grid, block)]
        pts = grid.index_to_world(np.stack(np.unravel_index(block, grid.shape), -1))
        d, _ = tree.query(pts, k=1, distance_upper_bound=r + 1e-6)
        keep.append(block[np.isfinite(d)])
    keep = np.concatenate(keep) if keep else np.zeros(0, np.int64)
    mask.reshape(-1)[keep] = True
    return mask
