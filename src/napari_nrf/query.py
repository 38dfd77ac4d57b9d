"""The query engine: response volumes on any MNI grid, and predictions at any points.

>>> eng = QueryEngine(model)                     # CUDA when available, else CPU
>>> feats = eng.image_features(images)           # backbone once per image (cached by pixel hash)
>>> vols = eng.volume(feats, Grid.mni(2.0), mask="brain")   # (B, 91, 109, 91) float32, NaN outside
>>> vals = eng.points(feats, xyz)                # (B, N) at MNI points (N, 3) mm

The engine speaks only the model contract (:mod:`napari_nrf.models.base`). For a
continuous model it asks the model for an image state once per query
(``query_images``), a point state once per grid (``query_points``, kept in a small
cache when it fits ``coord_cache_bytes``) and the responses per chunk of points
(``query_predict``). The defaults work for any continuous model; NRF's split first layer
(image half once per image, coordinate half once per grid) and an ensemble's
interpolated weights live in those models' own files. Points are streamed in chunks
whose activations stay under ``chunk_bytes`` (the model says its bytes per point), so
memory is bounded by the output volumes plus one chunk, even for a 0.5 mm whole brain
(56M grid points). On CUDA the chunks run under bf16 autocast
with TF32 matmuls; on a CUDA out-of-memory error the chunk halves and the query goes on
(and a point state that does not fit is not cached). On a CPU the chunks run in fp32,
or under bf16 autocast where :mod:`napari_nrf.precision` finds the CPU's matrix units
fast in bf16 (AMX, AVX-512 BF16); ``NAPARI_NRF_PRECISION`` forces either.

A model's calibration (:mod:`napari_nrf.calibration`, per-voxel gains fitted after
training) is applied here to every answer: at a continuous model's grid points the gain
interpolated from its calibrated voxels (kept with the grid's point state), at a voxel
model's voxels their own. A model without one answers as trained.

Models that are not continuous (``model.continuous`` False, e.g. the Universal encoder)
are evaluated at their subject's voxels (``model.subjects[subject]``) and each voxel's
prediction is placed in the nearest grid cell (cells hit by several voxels take their
mean; cells hit by none stay NaN), see :func:`napari_nrf.space.points_to_volume`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from collections import OrderedDict
from contextlib import contextmanager, nullcontext

import numpy as np
import torch

from napari_nrf import calibration as calib
from napari_nrf import space
from napari_nrf._docs import fill_doc
from napari_nrf.errors import Cancelled, NapariNRFError
from napari_nrf.models.base import cat_points, points_nbytes, slice_points
from napari_nrf.space import Grid


class QueryCancelled(Cancelled):
    """Raised when the ``cancel`` callable of a query returns True (checked between chunks)."""


class QueryError(NapariNRFError):
    """Bad query input (unknown subject, bad point array, ...)."""


def default_device() -> torch.device:
    """CUDA when available, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _oom_errors():
    errs = [getattr(torch, "OutOfMemoryError", None), getattr(torch.cuda, "OutOfMemoryError", None)]
    return tuple(e for e in errs if e is not None) or (RuntimeError,)


class QueryEngine:
    """Fast, bounded-memory predictions of an encoding model on grids and points.

    Parameters
    ----------
    model : EncodingModel
        Moved to ``device`` and put in eval mode (in place).
    device : str, torch.device or None
        Default: CUDA when available, else the CPU.
    chunk_bytes : int or None
        Budget for the hidden activations of one chunk (B x n x width float32). Default:
        32 MiB on the CPU (64k points of a width-128 model), 2 GiB on CUDA.
    coord_cache_bytes : int
        The coordinate half of a grid (N x width float32) is kept for the next query of the
        same grid and mask when it is at most this size.
    mixed_precision : bool or None
        bf16 autocast. Default: :func:`napari_nrf.precision.use_bf16` for the device (CUDA:
        on; CPU: on where bf16 is fast, see :mod:`napari_nrf.precision`).
    feature_cache : FeatureCache or None
        On-disk backbone feature cache used by :meth:`image_features`.
    """

    def __init__(self, model, device=None, chunk_bytes: int | None = None, coord_cache_bytes: int = 512 << 20,
                 mixed_precision: bool | None = None, feature_cache=None, max_cached_images: int = 256):
        self.device = torch.device(device) if device is not None else default_device()
        if self.device.type == "cuda" and not torch.cuda.is_available():
            self.device = torch.device("cpu")  # CPU fallback
        self.model = model.to(self.device).eval()
        cuda = self.device.type == "cuda"
        self.chunk_bytes = int(chunk_bytes or ((2 << 30) if cuda else (32 << 20)))
        self.coord_cache_bytes = int(coord_cache_bytes)
        if mixed_precision is None:
            from napari_nrf import precision

            mixed_precision = precision.use_bf16(self.device)
        self.mixed_precision = bool(mixed_precision) and self.device.type in ("cuda", "cpu")
        self.feature_cache = feature_cache
        self.max_cached_images = int(max_cached_images)
        self._image_cache: OrderedDict[str, dict] = OrderedDict()
        self._coord_cache: OrderedDict[tuple, tuple] = OrderedDict()
        self._gain_cache: OrderedDict[tuple, tuple] = OrderedDict()  # (grid key, subject) -> (gain, offset)
        self.last_chunk: int | None = None  # points per chunk of the last query (after any OOM halving)

    # ---- images ---------------------------------------------------------------------------
    def image_features(self, images, progress=None) -> dict:
        """Backbone features of ``images`` (anything the features module accepts).

        Returns dict name -> tensor (B, ...) on the engine's device. Each image's features
        are kept in memory by pixel hash (and in ``feature_cache`` on disk when given), so
        asking again for the same image costs no network pass.
        """
        from napari_nrf.features import as_image_list, image_hash

        imgs = as_image_list(images)
        hashes = [image_hash(im) for im in imgs]
        todo = [i for i, h in enumerate(hashes) if h not in self._image_cache]
        if todo:
            feats = self.model.encode_images([imgs[i] for i in todo], cache=self.feature_cache, progress=progress)
            for j, i in enumerate(todo):
                self._image_cache[hashes[i]] = {k: v[j:j + 1].detach() for k, v in feats.items()}
        for h in hashes:
            self._image_cache.move_to_end(h)
        out = {k: torch.cat([self._image_cache[h][k] for h in hashes]).to(self.device)
               for k in self._image_cache[hashes[0]]}
        while len(self._image_cache) > self.max_cached_images:
            self._image_cache.popitem(last=False)
        return out

    def _features(self, features_or_images) -> dict:
        if isinstance(features_or_images, dict):
            return {k: torch.as_tensor(v).to(self.device, torch.float32) for k, v in features_or_images.items()}
        return self.image_features(features_or_images)

    # ---- precision / OOM -------------------------------------------------------------------
    @contextmanager
    def _precision(self):
        if self.device.type != "cuda":
            amp = torch.autocast("cpu", dtype=torch.bfloat16) if self.mixed_precision else nullcontext()
            with torch.inference_mode(), amp:
                yield
            return
        old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        amp = torch.autocast("cuda", dtype=torch.bfloat16) if self.mixed_precision else nullcontext()
        try:
            with torch.inference_mode(), amp:
                yield
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old

    def _chunk_points(self, n_images: int) -> int:
        return max(256, self.chunk_bytes // max(1, int(self.model.query_bytes_per_point(n_images))))

    def _stream(self, n_total: int, chunk: int, run, progress, cancel):
        """Call ``run(start, stop)`` over [0, n_total) in chunks, halving on CUDA OOM."""
        start = 0
        oom = _oom_errors()
        while start < n_total:
            if cancel is not None and cancel():
                raise QueryCancelled("query cancelled")
            stop = min(start + chunk, n_total)
            try:
                run(start, stop)
            except oom:
                if self.device.type != "cuda" or chunk <= 64:
                    raise
                torch.cuda.empty_cache()
                chunk //= 2
                continue
            start = stop
            if progress is not None:
                progress(start, n_total)
        self.last_chunk = chunk

    # ---- continuous models ----------------------------------------------------------------
    def _points_cached(self, key, xyz_fn, n: int, chunk: int):
        """The model's point state for a grid+mask key, computed once when it fits the cache."""
        if key is not None and key in self._coord_cache:
            self._coord_cache.move_to_end(key)
            return self._coord_cache[key]
        if key is None or n == 0:
            return None
        step = max(chunk, 65536)
        try:
            parts = [self.model.query_points(xyz_fn(0, min(step, n)))]
            if points_nbytes(parts[0]) * n / min(step, n) > self.coord_cache_bytes:
                return None
            for s in range(step, n, step):
                parts.append(self.model.query_points(xyz_fn(s, min(s + step, n))))
            state = cat_points(parts) if len(parts) > 1 else parts[0]
        except _oom_errors():
            if self.device.type != "cuda":
                raise
            parts = None  # free the parts first; each chunk then computes its own state
            torch.cuda.empty_cache()
            return None
        self._coord_cache[key] = state
        total = sum(points_nbytes(v) for v in self._coord_cache.values())
        while total > self.coord_cache_bytes and len(self._coord_cache) > 1:
            _, old = self._coord_cache.popitem(last=False)
            total -= points_nbytes(old)
        return state

    def _gains(self, key, xyz_fn, n: int, subject):
        """(gain, offset) (n,) float32 of the calibration at a grid's points, kept per grid
        key (up to 4M points); None when the model has no calibration or they are not kept
        (then each chunk computes its own)."""
        cal = self.model.calibration
        if cal is None or key is None or n > (4 << 20):
            return None
        k = (key, subject, id(cal))
        if k not in self._gain_cache:
            parts = [cal.at_points(xyz_fn(s, min(s + 262144, n)).cpu().numpy(), subject)
                     for s in range(0, n, 262144)]
            self._gain_cache[k] = (np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.float32),
                                   np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.float32))
            while len(self._gain_cache) > 2:  # at most 2 x 32 MB
                self._gain_cache.popitem(last=False)
        return self._gain_cache[k]

    def _continuous(self, feats, n, xyz_fn, key, out_fn, progress, cancel, subject=None):
        model = self.model
        cal = model.calibration
        if cal is not None:  # the calibrated answer: the gain at each point
            kept = self._gains(key, xyz_fn, n, subject)
            raw_out = out_fn

            def out_fn(s, e, vals):
                g, c = (kept[0][s:e], kept[1][s:e]) if kept is not None else \
                    cal.at_points(xyz_fn(s, e).cpu().numpy(), subject)
                raw_out(s, e, calib.apply(vals.float(), g, c))
        with self._precision():
            if model.conditioned:  # a field per subject (Rest2Visual's rest map)
                state = model.query_images(feats, subject=self._conditioned_subject(subject))
            else:
                state = model.query_images(feats)
            b = next(iter(feats.values())).shape[0]
            chunk = self._chunk_points(b)
            cached = self._points_cached(key, xyz_fn, n, chunk)

            def run(s, e):
                pts = slice_points(cached, s, e) if cached is not None else model.query_points(xyz_fn(s, e))
                out_fn(s, e, model.query_predict(state, pts))

            self._stream(n, chunk, run, progress, cancel)

    def _conditioned_subject(self, subject):
        """The subject a conditioned model answers for (None: the model's default)."""
        subs = {**(self.model.subjects or {}), **dict.fromkeys(self.model.pseudo_subjects)}
        if subject is not None and subject not in subs:
            raise QueryError(f"unknown subject {subject!r}; the model has {sorted(subs)}")
        return subject

    # ---- voxel-indexed models -------------------------------------------------------------
    def _subject(self, subject):
        subs = self.model.subjects or {}
        if subject is None:
            if len(subs) != 1:
                raise QueryError(f"this model predicts at the voxels of its subjects; pass subject= one of {sorted(subs)}")
            return next(iter(subs))
        if subject not in subs:
            raise QueryError(f"unknown subject {subject!r}; the model has {sorted(subs)}")
        return subject

    def _voxels(self, feats, subject, progress, cancel) -> np.ndarray:
        """Predictions (B, V) at every voxel of ``subject``."""
        v = len(self.model.subjects[subject])
        b = next(iter(feats.values())).shape[0]
        out = np.empty((b, v), np.float32)
        cal = self.model.calibration

        def run(s, e):
            idx = torch.arange(s, e, device=self.device)
            out[:, s:e] = self.model.predict(feats, voxels=idx, subject=subject).float().cpu().numpy()
            if cal is not None:
                out[:, s:e] = calib.apply(out[:, s:e], *cal.at_voxels(subject, np.arange(s, e)))

        with self._precision():
            self._stream(v, max(1024, self._chunk_points(b)), run, progress, cancel)
        return out

    def _coverage(self, grid: Grid, cancel=None) -> np.ndarray:
        """:func:`coverage_mask` of this engine's model on ``grid``, kept for the last few
        grids (a 0.5 mm one takes tens of seconds; a second render or step reuses it)."""
        key = (hash(grid), grid.shape)
        cache = self.__dict__.setdefault("_coverage_cache", OrderedDict())
        if key not in cache:
            cache[key] = coverage_mask(self.model, grid, cancel=cancel)
            cache[key].setflags(write=False)
            while len(cache) > 4:
                cache.popitem(last=False)
        cache.move_to_end(key)
        return cache[key]

    # ---- public queries -------------------------------------------------------------------
    @fill_doc
    def volume(self, features_or_images, grid: Grid, mask=None, subject: str | None = None,
               progress=None, cancel=None) -> np.ndarray:
        """Response volumes (B, *grid.shape) float32 on ``grid``, NaN outside ``mask``.

        Parameters
        ----------
        features_or_images : dict of features (B, ...) or images
        grid : space.Grid
            Any axis-aligned MNI grid (e.g. ``Grid.mni(1.0)``).
        %(mask)s
            ("data": :func:`coverage_mask`)
        %(subject)s
            Voxel-indexed models place that subject's voxels on the grid.
        %(progress)s
            Called after each chunk (points for continuous models, voxels otherwise).
        %(cancel)s
            Polled between chunks (:class:`QueryCancelled`).
        """
        if not isinstance(grid, Grid):
            raise QueryError(f"grid must be a space.Grid, got {type(grid).__name__}")
        feats = self._features(features_or_images)
        b = next(iter(feats.values())).shape[0]
        m = self._coverage(grid, cancel) if _is_data_spec(mask) else space.resolve_mask(mask, grid)
        if m is not None and not m.any():  # an all-NaN volume is never what was asked for
            what = mask if isinstance(mask, (str, Path)) else "the mask"
            raise QueryError(f"{what} selects no point of the {grid.zooms[0]:g} mm grid: nothing to render "
                             "(an empty mask, or one in another space)")
        out = np.full((b, grid.n_points), np.nan, np.float32)
        if self.model.continuous:
            flat = np.flatnonzero(m) if m is not None else None
            n = flat.size if flat is not None else grid.n_points
            shape = np.array(grid.shape)

            def xyz_fn(s, e):
                idx = flat[s:e] if flat is not None else np.arange(s, e, dtype=np.int64)
                ijk = np.stack(np.unravel_index(idx, tuple(shape)), -1)
                return torch.from_numpy(grid.index_to_world(ijk).astype(np.float32)).to(self.device)

            def out_fn(s, e, vals):
                dst = flat[s:e] if flat is not None else slice(s, e)
                out[:, dst] = vals.float().cpu().numpy()

            key = (hash(grid), grid.shape, _mask_key(mask, m))
            self._continuous(feats, n, xyz_fn, key, out_fn, progress, cancel, subject=subject)
            return out.reshape((b,) + grid.shape)
        subject = self._subject(subject)
        vals = self._voxels(feats, subject, progress, cancel)
        vol = space.points_to_volume(self.model.subjects[subject], vals.T, grid)  # shape + (B,)
        vol = np.moveaxis(vol.reshape(grid.shape + (b,)), -1, 0)
        if m is not None:
            vol[:, ~m] = np.nan
        if vol.size and not np.isfinite(vol).any():
            import warnings

            warnings.warn(f"no voxel of subject {subject} lies inside the mask on this grid: the volume is all NaN",
                          stacklevel=2)
        return np.ascontiguousarray(vol, dtype=np.float32)

    def points(self, features_or_images, xyz, subject: str | None = None, progress=None, cancel=None) -> np.ndarray:
        """Predictions (B, N) float32 at MNI points ``xyz`` (N, 3) mm, streamed in chunks.

        Voxel-indexed models answer with the nearest voxel of ``subject`` (NaN farther than
        the model's own ``max_distance``).
        """
        xyz = np.asarray(xyz, np.float32)
        if xyz.ndim != 2 or xyz.shape[1] != 3:
            raise QueryError(f"xyz must be (N, 3) MNI mm, got shape {xyz.shape}")
        feats = self._features(features_or_images)
        b = next(iter(feats.values())).shape[0]
        out = np.empty((b, len(xyz)), np.float32)
        if self.model.continuous:
            def xyz_fn(s, e):
                return torch.from_numpy(xyz[s:e]).to(self.device)

            def out_fn(s, e, vals):
                out[:, s:e] = vals.float().cpu().numpy()

            self._continuous(feats, len(xyz), xyz_fn, None, out_fn, progress, cancel, subject=subject)
            return out
        if not self.model.supports_points:
            raise self.model.unsupported("predictions at MNI points",
                                         "it predicts at its subjects' voxels: use QueryEngine.volume")
        subject = self._subject(subject)

        cal = self.model.calibration

        def run(s, e):
            out[:, s:e] = self.model.predict(feats, coords=xyz[s:e], subject=subject).float().cpu().numpy()
            if cal is not None:
                out[:, s:e] = calib.apply(out[:, s:e], *cal.at_points(xyz[s:e], subject))

        with self._precision():
            self._stream(len(xyz), max(1024, self._chunk_points(b)), run, progress, cancel)
        return out

    def clear_cache(self) -> None:
        """Forget cached image features and grid coordinate halves."""
        self._image_cache.clear()
        self._coord_cache.clear()
        self._gain_cache.clear()


def _is_data_spec(spec) -> bool:
    return isinstance(spec, str) and spec in ("data", "coverage")


def _mask_key(spec, m):
    if m is None:
        return "all"
    if isinstance(spec, str):
        return spec
    return hashlib.blake2b(np.packbits(m).tobytes(), digest_size=16).hexdigest()


def coverage_mask(model, grid: Grid, cancel=None) -> np.ndarray:
    """Brain voxels of ``grid`` within reach of the voxels the model was trained on (the
    mask ``"data"`` of :meth:`QueryEngine.volume` and ``napari-nrf query --mask data``):
    :func:`napari_nrf.space.coverage_mask` of the model's subjects' voxels. Bool ``grid.shape``.

    ``cancel()`` returning True raises :class:`QueryCancelled` between steps."""
    try:
        return space.coverage_mask(model.subjects.values(), grid, cancel=cancel)
    except Cancelled as exc:
        if isinstance(exc, QueryCancelled):
            raise
        raise QueryCancelled("query cancelled") from None


def volume_file_names(paths, style: str = "plain", resolution: float = 2.0, subject=None) -> list[str]:
    """One distinct file name per image path, in order.

    ``style="plain"``: ``<name>.nii.gz``, the file name without its extensions; images that
    share it (``a/cat.png``, ``b/cat.jpg``) get their folder's name in front (``a_cat``),
    and a number after when that still collides, so no volume overwrites another.
    ``style="bids"``: the same names as the ``desc-`` label of a BIDS derivative,
    ``[sub-<subject>_]space-MNI152NLin6Asym_res-<mm>mm_desc-<name>_response.nii.gz``
    (:func:`napari_nrf.bids.derivative_name`).
    """
    if style == "bids":
        from napari_nrf.bids import derivative_name, label

        labels = [label(n[: -len(".nii.gz")]) for n in volume_file_names(paths)]
        seen: dict[str, int] = {}
        out = []
        for lab in labels:  # letters and digits only: "a_cat" and "acat" would meet
            seen[lab] = seen.get(lab, 0) + 1
            out.append(derivative_name(lab if labels.count(lab) == 1 else f"{lab}{seen[lab]}", resolution,
                                       subject=subject))
        return out
    stems = [Path(p).name.split(".")[0] or "image" for p in paths]
    names = [s if stems.count(s) == 1 else f"{Path(p).resolve().parent.name}_{s}" for p, s in zip(paths, stems)]
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if names.count(n) == 1 else f"{n}-{seen[n]}")
    return [f"{n}.nii.gz" for n in out]


def query_volumes(model, images, resolution: float = 2.0, mask="brain", device=None, subject=None,
                  progress=None, cancel=None) -> tuple[np.ndarray, Grid]:
    """One-call helper: volumes (B, *grid.shape) of ``images`` on the MNI grid at ``resolution`` mm."""
    grid = Grid.mni(resolution)
    eng = QueryEngine(model, device=device)
    return eng.volume(images, grid, mask=mask, subject=subject, progress=progress, cancel=cancel), grid
