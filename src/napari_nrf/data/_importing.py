"""Shared machinery of the response-set importers (NSD, generic NIfTI).

Both importers work in two passes so that memory never holds more than one session:

1. **per session**: read the betas a few volumes at a time, keep the masked voxels,
   z-score every voxel over the session's trials and store the result as a partial file
   in a work folder (``session-XXX.npy`` (T, V) float32 + ``session-XXX.json``, both
   written atomically; the JSON is written last and marks the session as done, so an
   interrupted import resumes at the first unfinished session);
2. **assembly**: average the repeats of each stimulus, streaming over voxel blocks of the
   memory-mapped partial files, straight into the response-set HDF5 file.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from napari_nrf.errors import NapariNRFError, atomic_write, write_text_atomic

from .responseset import FORMAT, SPLITS, VERSION, _json_default


class ImportDataError(NapariNRFError):
    """Base class of the importers' input errors (a message written for the user)."""


# ---- progress --------------------------------------------------------------------------
class Progress:
    """Progress reporting: ``progress`` is None, True (a tqdm bar) or ``callable(done, total)``."""

    def __init__(self, progress, total: int, desc: str):
        self.total = int(total)
        self.done = 0
        self._cb = progress if callable(progress) else None
        self._bar = None
        if progress is True:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total, desc=desc, unit="step")

    def update(self, n: int = 1, desc: str | None = None) -> None:
        self.done += n
        if self._bar is not None:
            if desc:
                self._bar.set_description(desc, refresh=False)
            self._bar.update(n)
        if self._cb is not None:
            self._cb(self.done, self.total)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---- per-session statistics ----------------------------------------------------------------
def zscore_session(betas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Z-score (T, V) betas per voxel over the T trials of one session, in place.

    Returns ``(z, invalid)``: ``z`` (T, V) float32 and ``invalid`` (V,) bool marking voxels
    with a non-finite beta or no variance in this session (their z values are set to 0).
    """
    b = np.asarray(betas, dtype=np.float32)
    finite = np.isfinite(b).all(axis=0)
    b[:, ~finite] = 0.0
    mean = b.mean(axis=0, dtype=np.float64)
    std = b.std(axis=0, dtype=np.float64)
    # A voxel with (numerically) constant betas carries no signal: NSD writes 0 outside
    # the brain, and z-scoring would divide by zero.
    flat = std <= 1e-6 * np.maximum(1.0, np.abs(mean))
    invalid = ~finite | flat
    b -= mean.astype(np.float32)
    b /= np.where(invalid, 1.0, std).astype(np.float32)
    b[:, invalid] = 0.0
    return b, invalid


def fingerprint(**items) -> str:
    """A short stable hash of JSON-able settings (what a partial result depends on)."""
    return hashlib.sha1(json.dumps(items, sort_keys=True, default=_json_default).encode()).hexdigest()[:16]


def file_signature(path) -> dict:
    st = Path(path).stat()
    return {"path": str(Path(path).resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


# ---- partial files -------------------------------------------------------------------------
def _atomic_save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_write(path, "wb") as f:
        np.save(f, array)


_atomic_write_text = write_text_atomic


class PartialStore:
    """Per-session partial results of one import in ``folder`` (resumable).

    Each session ``key`` has ``session-{key}.npy`` (T, V) float32 z-scored responses and
    ``session-{key}.json`` with the trial stimulus ids, the invalid voxels and the
    fingerprint of the settings. A session counts as done only when its JSON exists and
    its fingerprint matches (changed inputs or settings are recomputed).
    """

    def __init__(self, folder):
        self.folder = Path(folder)  # created by the first save: a failed check leaves no folder

    def _paths(self, key: str) -> tuple[Path, Path]:
        return self.folder / f"session-{key}.npy", self.folder / f"session-{key}.json"

    def is_done(self, key: str, fp: str) -> bool:
        npy, js = self._paths(key)
        if not (npy.exists() and js.exists()):
            return False
        try:
            info = json.loads(js.read_text())
        except (OSError, json.JSONDecodeError):
            return False
        return info.get("fingerprint") == fp

    def save(self, key: str, fp: str, z: np.ndarray, stim_ids: np.ndarray, invalid: np.ndarray, **extra) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        npy, js = self._paths(key)
        _atomic_save_npy(npy, np.ascontiguousarray(z, dtype=np.float32))
        info = {"fingerprint": fp, "stim_ids": np.asarray(stim_ids).tolist(),
                "invalid": np.flatnonzero(invalid).tolist(), "n_voxels": int(z.shape[1]), **extra}
        # Written last: its presence marks the session as finished.
        _atomic_write_text(js, json.dumps(info, default=_json_default))

    def load(self, key: str) -> tuple[np.ndarray, dict]:
        """(memory-mapped (T, V) float32, info dict)."""
        npy, js = self._paths(key)
        return np.load(npy, mmap_mode="r"), json.loads(js.read_text())

    def clean_unfinished(self) -> int:
        """After a failure or a cancel: remove what no later run can use (a session's
        responses without its JSON, temporary files), then the folder when nothing is
        left. Finished sessions stay (a rerun resumes from them). Returns the number of
        finished sessions kept."""
        if not self.folder.is_dir():
            return 0
        kept = 0
        for p in list(self.folder.iterdir()):
            if p.name.startswith(".") and ".tmp" in p.name:
                p.unlink(missing_ok=True)
            elif p.suffix == ".npy" and not p.with_suffix(".json").exists():
                p.unlink(missing_ok=True)
            elif p.suffix == ".json" and p.name.startswith("session-"):
                kept += 1
        try:
            self.folder.rmdir()
        except OSError:
            pass
        return kept

    def remove(self, keys: Sequence[str]) -> None:
        for key in keys:
            for p in self._paths(key):
                if p.exists():
                    p.unlink()
        try:
            self.folder.rmdir()
        except OSError:
            pass


# ---- splits -------------------------------------------------------------------------------
def assign_split(stim_ids: np.ndarray, test_ids=None, val_fraction: float = 0.1, seed: int = 0,
                 test_fraction: float = 0.0) -> np.ndarray:
    """(N,) uint8 split of unique stimuli: ids in ``test_ids`` are test, a seeded random
    ``val_fraction`` of the rest is validation (and ``test_fraction`` test when no
    ``test_ids`` are given), everything else train."""
    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1:
        raise ImportDataError(f"val_fraction and test_fraction must be in [0, 1), got {val_fraction}, {test_fraction}")
    stim_ids = np.asarray(stim_ids)
    split = np.full(stim_ids.shape[0], SPLITS["train"], np.uint8)
    rng = np.random.default_rng(seed)
    if test_ids is not None:
        split[np.isin(stim_ids, np.asarray(test_ids))] = SPLITS["test"]
    elif test_fraction > 0:
        pick = rng.permutation(stim_ids.shape[0])[: int(round(test_fraction * stim_ids.shape[0]))]
        split[pick] = SPLITS["test"]
    rest = np.flatnonzero(split == SPLITS["train"])
    n_val = int(round(val_fraction * rest.size))
    split[rng.permutation(rest)[:n_val]] = SPLITS["val"]
    return split


# ---- assembly -----------------------------------------------------------------------------
def nsd_noise_ceiling(sum_sq_dev: np.ndarray, dof: int, counts: np.ndarray) -> np.ndarray:
    """Noise ceiling (V,) in percent, as NSD defines it from z-scored single trials.

    ``sum_sq_dev`` (V,) is the sum over stimuli of squared deviations of the repeats from
    their mean, with ``dof`` = sum over stimuli of (repeats - 1). The noise sd is
    sqrt(pooled variance), the signal sd sqrt(max(0, 1 - noise var)), ncsnr = signal/noise
    and NC = 100 ncsnr^2 / (ncsnr^2 + (A/3 + B/2 + C/1) / (A + B + C)) with A, B, C the
    stimuli seen 3, 2, 1 times (counts above 3 weigh as 1/n).
    """
    counts = np.asarray(counts)
    if dof <= 0:
        return None
    noise_var = np.asarray(sum_sq_dev, np.float64) / dof
    signal_sd = np.sqrt(np.clip(1.0 - noise_var, 0.0, None))
    ncsnr = signal_sd / np.sqrt(np.maximum(noise_var, 1e-12))
    frac = float(np.mean(1.0 / counts))
    return (100.0 * ncsnr ** 2 / (ncsnr ** 2 + frac)).astype(np.float32)


class ResponseSetWriter:
    """Write a response set (the layout of :mod:`napari_nrf.data.responseset`) piece by piece.

    Opened on a temporary file next to ``path``; :meth:`commit` (or :meth:`finish` with
    ``commit=True``) renames it over ``path`` (atomic), :meth:`abort` deletes it. As a
    context manager it aborts when its block raises.
    """

    def __init__(self, path, n_images: int, n_voxels: int, subject: str, chunk_voxels: int | None = None):
        import h5py

        from napari_nrf.guards import check_free_disk

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # HDF5 can crash the process on a full disk: the responses' bytes are checked first.
        check_free_disk(self.path, 4 * int(n_images) * int(n_voxels), f"writing {self.path.name}")
        self.tmp = self.path.with_name(f".{self.path.name}.tmp{os.getpid()}")
        self.f = h5py.File(self.tmp, "w")
        self.f.attrs["format"] = FORMAT
        self.f.attrs["version"] = VERSION
        self.f.attrs["subject"] = subject
        self.n, self.v = int(n_images), int(n_voxels)
        # ~1 MB chunks of 64 images: readers take batches of images x all voxels; the
        # assembler writes whole chunk columns (chunk_voxels divides its blocks), so no
        # chunk is ever read back and rewritten.
        chunk_v = min(self.v, max(1, 2 ** 20 // 4 // max(1, min(self.n, 64))))
        if chunk_voxels:
            chunk_v = max(1, min(chunk_v, int(chunk_voxels)))
        self.responses = self.f.create_dataset("responses", shape=(self.n, self.v), dtype="f4",
                                               chunks=(min(self.n, 64), chunk_v))

    def write_block(self, cols: slice, values: np.ndarray) -> None:
        self.responses[:, cols] = values

    def create_images(self, shape_hw3: tuple):
        from napari_nrf.guards import check_free_disk

        check_free_disk(self.path, self.n * int(np.prod(shape_hw3)) + 4 * self.n * self.v,
                        f"writing {self.path.name} with its images")
        return self.f.create_dataset("images", shape=(self.n,) + tuple(shape_hw3), dtype="u1",
                                     chunks=(1,) + tuple(shape_hw3))

    def set_image_paths(self, paths) -> None:
        import h5py

        self.f.create_dataset("image_paths", data=np.array([str(p) for p in paths], dtype=object),
                              dtype=h5py.string_dtype())

    def __enter__(self) -> "ResponseSetWriter":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is not None:
            self.abort()

    def finish(self, coords, split, image_ids, roi=None, roi_names=None, noise_ceiling=None, meta=None,
               commit: bool = False, rest=None) -> Path | None:
        """Write the per-voxel and per-image arrays and the metadata (and ``rest`` =
        ``(maps, grid, sessions)``, per-session rest maps, as ``attach-rest`` stores them);
        then :meth:`commit` when ``commit`` (returns the path)."""
        if rest is not None:
            from .responseset import write_rest_group

            write_rest_group(self.f, *rest)
        self.f.create_dataset("coords", data=np.asarray(coords, np.float32))
        self.f.create_dataset("split", data=np.asarray(split, np.uint8))
        self.f.create_dataset("image_ids", data=np.asarray(image_ids, np.int64))
        if roi is not None:
            self.f.create_dataset("roi", data=np.asarray(roi, np.int32))
        if noise_ceiling is not None:
            self.f.create_dataset("noise_ceiling", data=np.asarray(noise_ceiling, np.float32))
        self.f.attrs["roi_names"] = json.dumps({str(k): v for k, v in (roi_names or {}).items()})
        self.f.attrs["meta"] = json.dumps(meta or {}, default=_json_default)
        return self.commit() if commit else None

    def commit(self) -> Path:
        self.f.close()
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        try:
            self.f.close()
        finally:
            if self.tmp.exists():
                self.tmp.unlink()


def assemble(store: PartialStore, keys: Sequence[str], writer_factory: Callable[..., ResponseSetWriter],
             voxel_keep: np.ndarray, block_bytes: int = 256 * 2 ** 20, progress: Progress | None = None):
    """Average repeats over the sessions ``keys`` of ``store`` into a response-set writer.

    ``voxel_keep`` (V,) bool selects the voxels written. Rows are the sorted unique
    stimulus ids. ``writer_factory(n_images, n_voxels, chunk_voxels)`` opens the output. Streams voxel blocks of about ``block_bytes`` of (N, block) float32.
    Returns ``(writer, stim_ids (N,), counts (N,), noise_ceiling (V_kept,) or None)``.
    """
    import scipy.sparse as sp

    infos = [store.load(k)[1] for k in keys]
    all_ids = np.concatenate([np.asarray(i["stim_ids"], np.int64) for i in infos])
    stim_ids, counts = np.unique(all_ids, return_counts=True)
    n = stim_ids.size
    # One sparse (N x T) indicator per session: rows @ betas sums the repeats.
    indicators = []
    for info in infos:
        rows = np.searchsorted(stim_ids, np.asarray(info["stim_ids"], np.int64))
        t = rows.size
        indicators.append(sp.csr_matrix((np.ones(t, np.float32), (rows, np.arange(t))), shape=(n, t)))
    kept = np.flatnonzero(voxel_keep)
    block = max(1, int(block_bytes // (28 * n)))  # float64 sums, squares, means + float32 out
    chunk_v = min(block, 2 ** 20 // 4 // max(1, min(n, 64)))
    block = max(chunk_v, block // chunk_v * chunk_v)
    writer = writer_factory(n, kept.size, chunk_v)
    dof = int(np.sum(counts - 1))
    ssd = np.zeros(kept.size, np.float64)
    try:
        for start in range(0, kept.size, block):
            cols = kept[start:start + block]
            # Kept voxels of a block are usually contiguous: slice (cheap) when they are.
            lo, hi = int(cols[0]), int(cols[-1]) + 1
            sel = slice(None) if hi - lo == cols.size else cols - lo
            s = np.zeros((n, cols.size), np.float64)
            sq = np.zeros((n, cols.size), np.float64)
            for key, ind in zip(keys, indicators):
                arr = np.asarray(store.load(key)[0][:, lo:hi], dtype=np.float32)[:, sel]
                s += ind @ arr
                sq += ind @ (arr.astype(np.float64) ** 2)
            mean = s / counts[:, None]
            ssd[start:start + cols.size] = np.sum(sq - counts[:, None] * mean ** 2, axis=0)
            writer.write_block(slice(start, start + cols.size), mean.astype(np.float32))
            del s, sq, mean
            if progress is not None:
                progress.update(0)
    except BaseException:
        writer.abort()
        raise
    nc = nsd_noise_ceiling(np.clip(ssd, 0, None), dof, counts) if dof > 0 else None
    return writer, stim_ids, counts, nc


def resting_maps(files, sessions=None, t_r=None, seed="pcc", band="default", progress=None):
    """The importers' ``--rest``: per-session rest maps from resting BOLD runs, made and
    grouped as ``attach-rest`` makes them (:func:`napari_nrf.data.restmap.session_rest_maps`,
    4D runs only), for :meth:`ResponseSetWriter.finish`'s ``rest``; and their provenance.

    ``band``: (high-pass, low-pass) Hz, None for no band-pass, "default" for restmap's.
    Returns ``((maps, grid, labels), meta)`` or ``(None, None)`` without files."""
    from napari_nrf.data.restmap import DEFAULT_BAND, check_rest_files, session_rest_maps

    if not files:
        return None, None
    check_rest_files(files, sessions, t_r, runs_only=True)  # before a progress bar: a bad run fails in one line
    band = DEFAULT_BAND if isinstance(band, str) and band == "default" else band
    bar = Progress(progress, total=len(files), desc="rest maps")

    def cb(done, total, msg=""):
        bar.update(done - bar.done, desc=f"rest map {msg}")

    with bar:
        rest = session_rest_maps(files, sessions, t_r=t_r, seed=seed, band=band, runs_only=True, progress=cb)
    meta = {"files": [str(f) for f in files], "sessions": rest[2], "t_r": t_r, "seed": str(seed),
            "band": None if band is None else list(band)}
    return rest, meta
