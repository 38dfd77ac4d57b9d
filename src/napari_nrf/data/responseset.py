"""Response sets: one subject's stimuli, voxel responses and voxel MNI coordinates.

On disk a response set is one HDF5 file per subject::

    /images        (N, H, W, 3) uint8      stimuli (or absent, with /image_paths)
    /image_paths   (N,) str                optional: stimulus files instead of pixels
    /image_ids     (N,) int64              stimulus ids (shared across subjects that saw the same image)
    /responses     (N, V) float32          z-scored per session, repeats averaged
    /coords        (V, 3) float32          voxel centres, MNI mm (RAS+)
    /split         (N,) uint8              0 train, 1 val, 2 test (3: in no split)
    /roi           (V,) int32              optional ROI label per voxel (0 = none)
    /noise_ceiling (V,) float32            optional, in percent of explainable variance (NSD)
    /truth         (N, V) float32          optional noiseless response (virtual subjects only)
    /rest/maps     (S, X, Y, Z) float32    optional seed-based rest maps, one per session (Rest2Visual)
    /rest/sessions (S,) str                their session labels; attrs origin, zooms: the maps' MNI grid
    attrs: format ("napari-nrf-responses"), version, subject, roi_names (JSON {label: name}),
           source, and any JSON-able metadata.

``ResponseSet`` is the in-memory form; ``ResponseSet.load(path, lazy=True)`` keeps the
big arrays as h5py datasets so a 30k-image set is never read whole.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_nrf.errors import NapariNRFError, atomic_write

FORMAT = "napari-nrf-responses"
VERSION = 1
SPLITS = {"train": 0, "val": 1, "test": 2}
UNUSED = 3  # a row in no split (a subset experiment's left-out images); any other value is refused
# Coordinates are MNI mm: a brain fits in +-100 mm; beyond this a file is in voxel units or damaged.
MAX_ABS_MM = 500.0
# Stored stimuli: PIL's own decompression-bomb limit (2 x Image.MAX_IMAGE_PIXELS).
MAX_IMAGE_PIXELS = 178_956_970



def open_h5(path: Path, fmt: str, what: str, error: type):
    """Open a napari-nrf HDF5 file of format ``fmt`` for reading (an ``h5py.File``).

    Missing file: FileNotFoundError; not HDF5 or another format: ``error`` naming ``what``
    ("response set", "movie data set")."""
    import h5py

    from napari_nrf.guards import check_regular_file

    if not path.exists() and not path.is_symlink():
        raise FileNotFoundError(f"{what} not found: {path}")
    check_regular_file(path, what)
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise error(f"{path} is not a readable HDF5 file: {exc}") from None
    got = f.attrs.get("format")
    got = got.decode(errors="replace") if isinstance(got, bytes) else got
    if got != fmt:
        f.close()
        if got is None:
            raise error(f"{path} is not a napari-nrf {what} (attribute 'format' missing)")
        kind = KNOWN_FORMATS.get(str(got), f"a file of format {got!r}")
        raise error(f"{path} is {kind}, not a napari-nrf {what} (attribute 'format' is {got!r}, "
                    f"expected {fmt!r})")
    return f


# Other napari-nrf HDF5 formats, named when one is handed to the wrong command.
KNOWN_FORMATS = {"napari-nrf-responses": "a response set (train, finetune, evaluate)",
                 "napari-nrf-movie": "a movie data set (train-movie, evaluate-movie)"}


def _json_attr(f, path, name: str, default):
    """A JSON-valued attribute of an open HDF5 file, refused with the file and the field named."""
    raw = f.attrs.get(name)
    if raw is None:
        return default
    try:
        out = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
    except (TypeError, ValueError, UnicodeDecodeError) as exc:
        f.close()
        raise ResponseSetError(f"{path}: attribute '{name}' is not valid JSON ({type(exc).__name__})") from None
    if not isinstance(out, type(default)):
        f.close()
        raise ResponseSetError(f"{path}: attribute '{name}' must be a JSON object, got a {type(out).__name__}")
    return out

class ResponseSetError(NapariNRFError):
    """Raised for a malformed response set."""


@dataclass
class ResponseSet:
    """One subject's responses.

    Attributes
    ----------
    images : (N, H, W, 3) uint8 array, h5py dataset, or None (then ``image_paths``)
    responses : (N, V) float32
    coords : (V, 3) float32, MNI mm
    split : (N,) uint8, 0 train / 1 val / 2 test
    image_ids : (N,) int64, defaults to arange(N)
    roi : (V,) int32 or None
    noise_ceiling : (V,) float32 or None, percent (0-100) of variance explainable
    truth : (N, V) float32 or None, noiseless responses (simulated subjects)
    rest_maps : (S, X, Y, Z) float32 or None, seed-based rest maps per session (Rest2Visual,
        :mod:`napari_nrf.data.restmap`) on ``rest_grid`` (a :class:`napari_nrf.space.Grid`);
        ``rest_sessions`` their labels. Files without them read as before.
    """

    responses: object
    coords: np.ndarray
    split: np.ndarray
    images: object = None
    image_paths: list | None = None
    image_ids: np.ndarray | None = None
    roi: np.ndarray | None = None
    roi_names: dict = field(default_factory=dict)
    noise_ceiling: np.ndarray | None = None
    truth: object = None
    subject: str = "sub-01"
    meta: dict = field(default_factory=dict)
    rest_maps: np.ndarray | None = None
    rest_grid: object = None
    rest_sessions: list | None = None
    _h5: object = field(default=None, repr=False)

    def __post_init__(self):
        for name in ("responses", "coords", "truth", "noise_ceiling"):
            dt = getattr(getattr(self, name), "dtype", None)
            if dt is not None and np.dtype(dt).kind not in "fiub":
                what = "complex" if np.dtype(dt).kind == "c" else f"of type {np.dtype(dt)}"
                raise ResponseSetError(f"field '{name}' holds {what} values; responses, coordinates and "
                                       "noise ceilings are real numbers (take the magnitude or real part first)")
        shape = tuple(getattr(self.responses, "shape", ()))
        if len(shape) != 2:
            raise ResponseSetError(f"field 'responses' must be (images, voxels), got shape {shape}")
        raw_split = np.asarray(self.split)
        if raw_split.dtype.kind not in "iub":
            ok = raw_split.dtype.kind == "f" and np.isfinite(raw_split).all() and (raw_split == np.round(raw_split)).all()
            if not ok:
                raise ResponseSetError("field 'split' must hold whole numbers 0 (train), 1 (val), 2 (test) or "
                                       f"3 (unused); got {raw_split.dtype} values such as "
                                       f"{raw_split.ravel()[:3].tolist()}")
        if raw_split.size and (raw_split.min() < 0 or raw_split.max() > 255):
            raise ResponseSetError("field 'split' must hold 0 (train), 1 (val), 2 (test) or 3 (unused)")
        self.coords = np.asarray(self.coords, dtype=np.float32)
        self.split = raw_split.astype(np.uint8)
        n, v = self.responses.shape
        if self.coords.shape != (v, 3):
            raise ResponseSetError(f"coords must be (V, 3) = ({v}, 3), got {self.coords.shape}")
        if self.split.shape != (n,):
            raise ResponseSetError(f"split must be (N,) = ({n},), got {self.split.shape}")
        if self.images is None and self.image_paths is None:
            raise ResponseSetError("a response set needs images or image_paths")
        if self.images is not None and len(self.images) != n:
            raise ResponseSetError(f"{len(self.images)} images for {n} response rows")
        if self.image_paths is not None and len(self.image_paths) != n:
            raise ResponseSetError(f"{len(self.image_paths)} image paths for {n} response rows")
        if not np.isfinite(self.coords).all():
            bad = np.flatnonzero(~np.isfinite(self.coords).all(1))
            raise ResponseSetError(f"coords of {bad.size} voxel(s) are NaN or infinite (voxels {_some(bad)})")
        far = np.flatnonzero(np.abs(self.coords).max(1, initial=0) > MAX_ABS_MM) if v else np.zeros(0, int)
        if far.size:
            raise ResponseSetError(f"coords of {far.size} voxel(s) lie more than {MAX_ABS_MM:g} mm from the MNI origin "
                                   f"(voxels {_some(far)}, e.g. {self.coords[far[0]].tolist()}); coordinates are MNI mm")
        odd = np.flatnonzero(~np.isin(self.split, [*SPLITS.values(), UNUSED]))
        if odd.size:
            raise ResponseSetError(f"split values must be 0 (train), 1 (val), 2 (test) or 3 (unused); {odd.size} row(s) have "
                                   f"{sorted(set(self.split[odd].tolist()))[:5]} (rows {_some(odd)})")
        self.image_ids = np.arange(n, dtype=np.int64) if self.image_ids is None else np.asarray(self.image_ids, np.int64)
        if self.roi is not None:
            self.roi = np.asarray(self.roi, dtype=np.int32)
        if self.noise_ceiling is not None:
            self.noise_ceiling = np.asarray(self.noise_ceiling, dtype=np.float32)

        if self.rest_maps is not None:
            self.set_rest_maps(self.rest_maps, self.rest_grid, self.rest_sessions)

    def set_rest_maps(self, maps, grid, sessions=None) -> None:
        """Attach per-session rest maps (S, X, Y, Z) (or one (X, Y, Z)) on MNI ``grid``."""
        self.rest_maps, self.rest_grid, self.rest_sessions = check_rest_maps(maps, grid, sessions)

    # ---- sizes and splits -------------------------------------------------------------
    @property
    def n_images(self) -> int:
        return int(self.responses.shape[0])

    @property
    def n_voxels(self) -> int:
        return int(self.responses.shape[1])

    def indices(self, split: str) -> np.ndarray:
        """Row indices (sorted int64) of ``split`` in {"train", "val", "test"}."""
        return np.flatnonzero(self.split == SPLITS[split])

    def get_responses(self, rows) -> np.ndarray:
        """(len(rows), V) float32 for sorted or unsorted ``rows``."""
        rows = np.asarray(rows)
        order = np.argsort(rows)
        out = np.empty((rows.size, self.n_voxels), np.float32)
        out[order] = np.asarray(self.responses[np.sort(rows)], dtype=np.float32)
        return out

    def get_truth(self, rows) -> np.ndarray | None:
        if self.truth is None:
            return None
        rows = np.asarray(rows)
        order = np.argsort(rows)
        out = np.empty((rows.size, self.n_voxels), np.float32)
        out[order] = np.asarray(self.truth[np.sort(rows)], dtype=np.float32)
        return out

    def get_images(self, rows) -> list | np.ndarray:
        """Images of ``rows``: a (n, H, W, 3) uint8 array, or a list of paths."""
        rows = np.asarray(rows)
        if self.images is not None:
            order = np.argsort(rows)
            imgs = np.asarray(self.images[np.sort(rows)])
            out = np.empty_like(imgs)
            out[order] = imgs
            return out
        return [self.image_paths[i] for i in rows]

    def subset(self, rows=None, voxels=None) -> "ResponseSet":
        """An in-memory copy restricted to image ``rows`` and/or ``voxels`` (index arrays)."""
        rows = np.arange(self.n_images) if rows is None else np.asarray(rows)
        voxels = slice(None) if voxels is None else np.asarray(voxels)
        imgs = self.get_images(rows)
        truth = self.get_truth(rows)
        return ResponseSet(
            responses=self.get_responses(rows)[:, voxels],
            coords=self.coords[voxels],
            split=self.split[rows],
            images=imgs if not isinstance(imgs, list) else None,
            image_paths=imgs if isinstance(imgs, list) else None,
            image_ids=self.image_ids[rows],
            roi=None if self.roi is None else self.roi[voxels],
            roi_names=dict(self.roi_names),
            noise_ceiling=None if self.noise_ceiling is None else self.noise_ceiling[voxels],
            truth=None if truth is None else truth[:, voxels],
            subject=self.subject,
            meta=dict(self.meta),
            rest_maps=self.rest_maps,
            rest_grid=self.rest_grid,
            rest_sessions=None if self.rest_sessions is None else list(self.rest_sessions),
        )

    # ---- I/O --------------------------------------------------------------------------
    def save(self, path) -> Path:
        """Write to ``path`` (HDF5) atomically (temporary file + rename)."""
        import h5py

        from napari_nrf.guards import disk_guard

        path = Path(path)
        # HDF5 can crash the process when a full disk stops its flush: the space is
        # checked first (every array's bytes, as stored uncompressed).
        need = sum(_nbytes(a) for a in (self.responses, self.coords, self.split, self.images, self.truth,
                                        self.rest_maps, self.roi, self.noise_ceiling) if a is not None)
        need += sum(len(str(p)) + 16 for p in (self.image_paths or ()))
        with disk_guard(path, need, "writing the response set"), atomic_write(path, None) as tmp:
            with h5py.File(tmp, "w") as f:
                f.attrs["format"] = FORMAT
                f.attrs["version"] = VERSION
                f.attrs["subject"] = self.subject
                f.attrs["roi_names"] = json.dumps({str(k): v for k, v in self.roi_names.items()})
                f.attrs["meta"] = json.dumps(self.meta, default=_json_default)
                f.create_dataset("responses", data=np.asarray(self.responses, np.float32), chunks=True)
                f.create_dataset("coords", data=self.coords)
                f.create_dataset("split", data=self.split)
                f.create_dataset("image_ids", data=self.image_ids)
                if self.images is not None:
                    imgs = np.asarray(self.images)
                    f.create_dataset("images", data=imgs, chunks=(1,) + imgs.shape[1:])
                if self.image_paths is not None:
                    f.create_dataset("image_paths", data=np.array([str(p) for p in self.image_paths], dtype=object),
                                     dtype=h5py.string_dtype())
                if self.roi is not None:
                    f.create_dataset("roi", data=self.roi)
                if self.noise_ceiling is not None:
                    f.create_dataset("noise_ceiling", data=self.noise_ceiling)
                if self.truth is not None:
                    f.create_dataset("truth", data=np.asarray(self.truth, np.float32), chunks=True)
                if self.rest_maps is not None:
                    write_rest_group(f, self.rest_maps, self.rest_grid, self.rest_sessions)
        return path

    @classmethod
    def load(cls, path, lazy: bool = False) -> "ResponseSet":
        """Read a response set. ``lazy=True`` keeps images/responses/truth on disk (h5py)."""
        path = Path(path)
        f = open_h5(path, FORMAT, "response set", ResponseSetError)
        raw = f.attrs.get("version", 0)  # (read before any close: h5py objects die with the file)
        raw = raw.decode() if isinstance(raw, bytes) else raw
        try:
            version = int(raw)
        except (TypeError, ValueError):
            version = None
        if version is None or version > VERSION or version < 0:
            f.close()
            raw = raw.item() if hasattr(raw, "item") else raw
            raise ResponseSetError(f"{path} has response-set version {raw!r}; this napari-nrf "
                                   f"reads versions up to {VERSION} (a newer napari-nrf wrote it: update napari-nrf)")
        for key in ("responses", "coords", "split"):
            if key not in f or not hasattr(f[key], "shape"):
                f.close()
                raise ResponseSetError(f"{path} lacks the dataset '/{key}'")
        budget = _memory_budget()
        for key in ("coords", "split", "image_ids", "roi", "noise_ceiling", "image_paths"):
            # small per-voxel / per-image arrays are always read: refuse absurd declared sizes
            if key in f and _nbytes(f[key]) > budget:
                size = _nbytes_text(f, key)
                f.close()
                raise ResponseSetError(f"{path}: dataset '/{key}' declares {size}, more than this "
                                       "machine can hold; a damaged or crafted file")
        if "images" in f and len(f["images"].shape) == 4:
            h, w = f["images"].shape[1:3]
            if h * w > MAX_IMAGE_PIXELS:
                f.close()
                raise ResponseSetError(f"{path}: dataset '/images' declares images of {h}x{w} pixels (at most "
                                       f"{MAX_IMAGE_PIXELS:,}); a damaged or crafted file")
        kept_open = [False]

        def big(key):
            if key not in f:
                return None
            if lazy or _nbytes(f[key]) > budget:
                # Read lazily (rows on demand) when asked or when it would not fit in memory.
                kept_open[0] = True
                return f[key]
            return f[key][()]

        meta = _json_attr(f, path, "meta", {})
        roi_raw = _json_attr(f, path, "roi_names", {})
        try:
            roi_names = {int(k): v for k, v in roi_raw.items()}
        except (TypeError, ValueError):
            f.close()
            raise ResponseSetError(f"{path}: attribute 'roi_names' must map ROI numbers to names") from None
        resp = f["responses"]
        if len(resp.shape) != 2 or resp.dtype.kind not in "fiub":
            what = f"shape {tuple(resp.shape)} of type {resp.dtype}"
            f.close()
            raise ResponseSetError(f"{path}: dataset '/responses' must be (images, voxels) real numbers, got {what}")
        paths = None
        if "image_paths" in f:
            paths = [p.decode() if isinstance(p, bytes) else str(p) for p in f["image_paths"][()]]
        rs = cls(
            responses=big("responses"),
            coords=f["coords"][()],
            split=f["split"][()],
            images=big("images"),
            image_paths=paths,
            image_ids=f["image_ids"][()] if "image_ids" in f else None,
            roi=f["roi"][()] if "roi" in f else None,
            roi_names=roi_names,
            noise_ceiling=f["noise_ceiling"][()] if "noise_ceiling" in f else None,
            truth=big("truth"),
            subject=str(f.attrs.get("subject", path.stem)),
            meta=meta,
        )
        if "rest" in f and "maps" in f["rest"]:
            from napari_nrf.space import Grid

            g = f["rest"]
            maps = g["maps"][()]
            sess = [x.decode() if isinstance(x, bytes) else str(x) for x in g["sessions"][()]] if "sessions" in g else None
            try:
                rs.set_rest_maps(maps, Grid(maps.shape[1:], g.attrs["origin"], g.attrs["zooms"]), sess)
            except (KeyError, ValueError) as exc:
                f.close()
                raise ResponseSetError(f"{path}: its rest maps are malformed ({exc})") from None
        if kept_open[0]:
            rs._h5 = f
        else:
            f.close()
        return rs

    def close(self):
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None


def _some(idx, k: int = 8) -> str:
    """The first ``k`` of the indices ``idx`` as text, for messages."""
    idx = np.asarray(idx).tolist()
    return ", ".join(map(str, idx[:k])) + (f", ... ({len(idx)} in all)" if len(idx) > k else "")


def check_finite(values: np.ndarray, what: str, rows=None) -> None:
    """Raise :class:`ResponseSetError` when ``values`` (n, V) hold NaN or infinite entries,
    naming the rows (of ``rows``, the set's row numbers, when given) and voxels at fault."""
    values = np.asarray(values)
    ok = np.isfinite(values)
    if ok.all():
        return
    bad_r, bad_v = np.flatnonzero(~ok.all(1)), np.flatnonzero(~ok.all(0))
    rows = np.arange(values.shape[0]) if rows is None else np.asarray(rows)
    raise ResponseSetError(f"{what}: {int((~ok).sum())} value(s) are NaN or infinite, in rows {_some(rows[bad_r])} "
                           f"and voxels {_some(bad_v)}; drop those voxels or images (import-nifti drops "
                           "non-finite voxels itself)")


def _nbytes(ds) -> int:
    """Bytes of an array or dataset (4 per element when its dtype is unknown, e.g. a list)."""
    shape = getattr(ds, "shape", None)
    if shape is None:
        shape = np.shape(ds)
    item = getattr(getattr(ds, "dtype", None), "itemsize", 4)
    return int(np.prod(shape, dtype=np.float64) * item) if shape else 0


def _nbytes_text(f, key) -> str:
    return f"shape {tuple(f[key].shape)} ({_nbytes(f[key]) / 2 ** 30:.3g} GiB)"


def _memory_budget() -> int:
    """Bytes one dataset may take in memory when read whole: half the available memory."""
    import os

    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")) // 2
    except (ValueError, OSError, AttributeError):  # not on Linux
        return 8 << 30


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def check_rest_maps(maps, grid, sessions=None):
    """Validated per-session rest maps: ``(maps (S, X, Y, Z) float32, grid, labels)``.

    One (X, Y, Z) map is one session; labels default to ses-01, ses-02, ..."""
    from napari_nrf.space import Grid

    maps = np.asarray(maps, np.float32)
    if maps.ndim == 3:
        maps = maps[None]
    if not isinstance(grid, Grid):
        raise ResponseSetError("rest maps need their grid (napari_nrf.space.Grid)")
    if maps.ndim != 4 or maps.shape[1:] != tuple(grid.shape) or len(maps) == 0:
        raise ResponseSetError(f"rest maps must be (sessions, *grid.shape) = (S, {grid.shape}), got {maps.shape}")
    if not np.isfinite(maps).all():
        raise ResponseSetError("rest maps hold NaN or inf values")
    sessions = [f"ses-{i + 1:02d}" for i in range(len(maps))] if sessions is None else [str(x) for x in sessions]
    if len(sessions) != len(maps):
        raise ResponseSetError(f"{len(sessions)} session labels for {len(maps)} rest maps")
    return maps, grid, sessions


def write_rest_group(f, maps, grid, sessions) -> None:
    """Write the ``/rest`` group (maps, session labels, the maps' grid) into an open HDF5
    file ``f``: the one writer of rest maps (:meth:`ResponseSet.save` and the importers)."""
    import h5py

    maps, grid, sessions = check_rest_maps(maps, grid, sessions)
    g = f.create_group("rest")
    g.create_dataset("maps", data=maps, compression="gzip", compression_opts=1)
    g.create_dataset("sessions", data=np.array(sessions, dtype=object), dtype=h5py.string_dtype())
    g.attrs["origin"] = np.asarray(grid.origin, np.float64)
    g.attrs["zooms"] = np.asarray(grid.zooms, np.float64)
