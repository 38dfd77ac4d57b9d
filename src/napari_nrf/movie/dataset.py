"""Movie data sets: films chunked per TR with the fMRI responses recorded while people watched.

On disk one HDF5 file per subject (or per group average)::

    /films/<name>/frames     (T, F, S, S, 3) uint8   one chunk of F frames per TR (chunked per TR)
    /films/<name>/responses  (T, V) float32          detrended, z-scored per film and voxel
    /films/<name>/truth      (T, V) float32          optional: the noiseless part (simulated data)
    /films/<name>/split      (T,) uint8              0 train, 1 val, 2 test, per TR
    /coords                  (V, 3) float32          voxel centres, MNI mm (RAS+)
    /roi                     (V,) int32              ROI label per voxel (0 none)
    /snr                     (V,) float32            optional: the voxel's SNR (see snr_selection)
    attrs: format "napari-nrf-movie", version, subject, tr (s), frames_per_tr, frame_size,
           roi_names (JSON), meta (JSON: held-out film, the simulated delay, source, ...)

Splits follow the paper: one film is held out whole (every TR test); in each other film the
last 20 % of TRs are test and every fifth remaining TR validation (:func:`movie_splits`).

:meth:`MovieDataset.training_set` turns it into a :class:`~napari_nrf.data.ResponseSet`
for the one training loop: row ``i`` pairs the chunk of TR ``t`` with the response of
TR ``t + delay`` (the haemodynamic delay, in TRs) of the same film. Its images are a
:class:`ChunkView`, read from the file a batch at a time, so the film is never in memory
(and never as float32: about 1.2 MB a TR as uint8 at 32 x 112 x 112, 4.8 MB as float32).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from napari_nrf.errors import atomic_write

from .video import MovieError

FORMAT = "napari-nrf-movie"
VERSION = 1
SPLITS = {"train": 0, "val": 1, "test": 2}


def movie_splits(lengths: dict, held_out: str | None = None, test_frac: float = 0.2, val_every: int = 5) -> dict:
    """Split per TR for films ``lengths`` (name -> T): film ``held_out`` all test (2); in the
    others the last ``test_frac`` of TRs test and every ``val_every``-th remaining TR
    validation (1), the rest training (0)."""
    out = {}
    for name, n in lengths.items():
        s = np.zeros(int(n), np.uint8)
        if name == held_out:
            s[:] = 2
        else:
            n_test = int(round(test_frac * n))
            s[n - n_test:] = 2
            s[: n - n_test][val_every - 1::val_every] = 1
        out[name] = s
    return out


def zscore(y: np.ndarray, tr: float, high_pass: float | None = 1 / 128.0) -> tuple[np.ndarray, np.ndarray]:
    """Detrend, high-pass (Hz; None: none) and z-score a film's responses (T, V) per voxel.

    Returns (z (T, V) float32, sd (V,)): sd is the cleaned signal's standard deviation, so
    a noiseless part can be put in the same units (:func:`clean`, ``standardize=False``)."""
    c = clean(y, tr, high_pass)
    sd = c.std(0)
    sd[sd == 0] = 1.0
    return (c / sd).astype(np.float32), sd


def clean(y: np.ndarray, tr: float, high_pass: float | None = 1 / 128.0) -> np.ndarray:
    """Linear detrending + Butterworth high-pass of (T, V) (nilearn.signal.clean), mean 0."""
    from nilearn.signal import clean as nclean

    y = np.asarray(y, np.float64)
    hp = high_pass if high_pass is not None and len(y) * tr > 2.0 / high_pass else None
    out = nclean(y, detrend=True, standardize=None, high_pass=hp, t_r=tr, filter="butterworth" if hp else False)
    return out - out.mean(0)


def snr_selection(subject_responses: np.ndarray, top: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """The paper's voxel SNR and selection from single-subject responses (S, T, V).

    SNR per voxel = temporal variance of the subject-mean time course / mean over TRs of
    the across-subject variance (how much of a voxel's group response is shared by the
    subjects rather than each one's noise). Returns (snr (V,) float32, keep (V,) bool: the
    top ``top`` fraction)."""
    y = np.asarray(subject_responses, np.float64)
    if y.ndim != 3 or y.shape[0] < 2:
        raise MovieError(f"SNR needs responses of >= 2 subjects (S, T, V), got shape {y.shape}")
    sig = y.mean(0).var(0)
    noise = y.var(0, ddof=1).mean(0)
    snr = (sig / np.maximum(noise, 1e-12)).astype(np.float32)
    k = max(1, int(round(top * len(snr))))
    keep = np.zeros(len(snr), bool)
    keep[np.argsort(-snr, kind="stable")[:k]] = True
    return snr, keep


def model_voxels(model, ds) -> np.ndarray:
    """Indices of data set ``ds``'s voxels that ``model`` predicts, in the model's order
    (matched by MNI coordinates to 1 um); a model voxel not in the data set is an error."""
    xyz = np.asarray(next(iter(model.subjects.values())), np.float32)
    key = {tuple(np.round(c, 3)): i for i, c in enumerate(ds.coords)}
    idx = [key.get(tuple(np.round(c, 3))) for c in xyz]
    missing = sum(i is None for i in idx)
    if missing:
        raise MovieError(f"{missing} of the model's {len(xyz)} voxels are not in the data set (another grid?)")
    return np.asarray(idx, np.int64)


class ChunkView:
    """Lazy (N, F, S, S, 3) uint8 rows drawn from per-film chunk arrays ((T, F, S, S, 3)
    h5py datasets or arrays; row i is film ``film[i]``'s chunk of TR ``t[i]``). Indexing
    with a slice or an index array gives another view; ``np.asarray`` (or an int index)
    reads the rows. ``still=True`` repeats each chunk's middle frame F times (a
    middle-frame model's input). ``frame=k`` gives one frame per row instead, shape
    (N, S, S, 3), read as a hyperslab of frame k (never the whole chunks)."""

    lazy_rows = True

    def __init__(self, sources: list, film: np.ndarray, t: np.ndarray, still: bool = False,
                 frame: int | None = None):
        self.sources = sources
        self.film = np.asarray(film, np.int64)
        self.t = np.asarray(t, np.int64)
        self.still = bool(still)
        self.frame = None if frame is None else int(frame)
        s0 = sources[0].shape if sources else (0, 2, 16, 16, 3)
        self.shape = (len(self.t),) + tuple(s0[1:] if self.frame is None else s0[2:])
        self.dtype = np.dtype(np.uint8)
        self.ndim = len(self.shape)

    def __len__(self):
        return len(self.t)

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            return np.asarray(self[np.array([int(key)])])[0]
        return ChunkView(self.sources, self.film[key], self.t[key], self.still, self.frame)

    def _read(self, source, rows: np.ndarray) -> np.ndarray:
        """TRs ``rows`` (increasing, as h5py wants) of one film's chunk array."""
        return np.asarray(source[rows] if self.frame is None else source[rows, self.frame])

    def __array__(self, dtype=None, copy=None):
        out = np.empty(self.shape, np.uint8)
        for f in np.unique(self.film):
            pos = np.flatnonzero(self.film == f)
            uniq, inv = np.unique(self.t[pos], return_inverse=True)
            out[pos] = self._read(self.sources[f], uniq)[inv]
        if self.still and self.frame is None:
            mid = self.shape[1] // 2
            out[:] = out[:, mid:mid + 1]
        return out if dtype is None else out.astype(dtype)


class MovieDataset:
    """A movie data set (see the module doc), in memory or lazily on disk.

    Attributes
    ----------
    films : dict name -> dict with "frames" (T, F, S, S, 3) uint8 (array or h5py dataset),
        "responses" (T, V) float32, "split" (T,) uint8 and optionally "truth" (T, V)
    coords : (V, 3) float32 MNI mm; roi (V,) int32; roi_names {label: name}; snr (V,) or None
    subject : "group" or a subject name; tr : s; frames_per_tr, frame_size : int
    meta : dict (held_out, delay_tr of a simulation, source, ...)
    """

    def __init__(self, films: dict, coords, tr: float, subject: str = "group", roi=None, roi_names=None,
                 snr=None, meta=None, _h5=None):
        self.films = films
        self.coords = np.asarray(coords, np.float32)
        self.tr = float(tr)
        if not (np.isfinite(self.tr) and self.tr > 0):
            raise MovieError(f"attribute 'tr' is {tr!r}; the repetition time must be a positive number of seconds")
        self.subject = str(subject)
        v = len(self.coords)
        self.roi = np.zeros(v, np.int32) if roi is None else np.asarray(roi, np.int32)
        self.roi_names = dict(roi_names or {})
        self.snr = None if snr is None else np.asarray(snr, np.float32)
        self.meta = dict(meta or {})
        self._h5 = _h5
        if not films:
            raise MovieError("a movie data set needs at least one film")
        shapes = set()
        for name, f in films.items():
            fr, resp, sp = f["frames"], f["responses"], f["split"]
            if len(fr) != len(resp) or len(sp) != len(resp):
                raise MovieError(f"film {name!r}: {len(fr)} chunks, {len(resp)} responses, {len(sp)} split rows")
            if resp.shape[1] != v:
                raise MovieError(f"film {name!r}: responses have {resp.shape[1]} voxels, coords {v}")
            if fr.ndim != 5 or fr.shape[-1] != 3 or fr.shape[2] != fr.shape[3]:
                raise MovieError(f"film {name!r}: frames must be (T, F, S, S, 3), got {tuple(fr.shape)}")
            shapes.add(tuple(fr.shape[1:]))
        if len(shapes) != 1:
            raise MovieError(f"films differ in frames per TR or size: {sorted(shapes)}")
        self.frames_per_tr, self.frame_size = int(next(iter(shapes))[0]), int(next(iter(shapes))[1])

    # ---- sizes ----------------------------------------------------------------------------
    @property
    def n_voxels(self) -> int:
        return len(self.coords)

    @property
    def film_names(self) -> list[str]:
        return list(self.films)

    @property
    def held_out(self) -> str | None:
        return self.meta.get("held_out")

    def n_trs(self, film: str) -> int:
        return int(len(self.films[film]["responses"]))

    # ---- the training view ---------------------------------------------------------------
    def training_set(self, delay: int = 4, films=None, voxels=None, still: bool = False):
        """A :class:`~napari_nrf.data.ResponseSet` for :func:`napari_nrf.train.fit`: row i =
        (chunk of TR t, response of TR t + ``delay``) of one film, its split that of TR
        t + delay; images a lazy :class:`ChunkView`. ``films`` (default all), ``voxels``
        (index array) restrict it; ``still``: middle frame only. ``meta["rows"]`` holds
        (film index, t) per row."""
        from napari_nrf.data.responseset import ResponseSet

        delay = int(delay)
        if delay < 0:
            raise MovieError(f"the delay must be >= 0 TR, got {delay}")
        names = self.film_names if films is None else [films] if isinstance(films, str) else list(films)
        for n in names:
            if n not in self.films:
                raise MovieError(f"no film {n!r}; films: {self.film_names}")
        vox = slice(None) if voxels is None else np.asarray(voxels)
        fi, ts, resp, split, truth = [], [], [], [], []
        have_truth = all("truth" in self.films[n] for n in names)
        for n in names:
            f = self.films[n]
            T = len(f["responses"])
            if T <= delay:
                raise MovieError(f"film {n!r} has {T} TR, not more than the delay of {delay} TR")
            k = self.film_names.index(n)
            fi.append(np.full(T - delay, k))
            ts.append(np.arange(T - delay))
            resp.append(np.asarray(f["responses"][delay:], np.float32)[:, vox])
            split.append(np.asarray(f["split"])[delay:])
            if have_truth:
                truth.append(np.asarray(f["truth"][delay:], np.float32)[:, vox])
        sources = [self.films[n]["frames"] for n in self.film_names]
        view = ChunkView(sources, np.concatenate(fi), np.concatenate(ts), still=still)
        coords = self.coords[vox]
        return ResponseSet(responses=np.concatenate(resp), coords=coords, split=np.concatenate(split), images=view,
                           truth=np.concatenate(truth) if have_truth else None, subject=self.subject,
                           roi=self.roi[vox], roi_names=dict(self.roi_names),
                           image_ids=np.concatenate(fi) * 1_000_000 + np.concatenate(ts),
                           meta={"movie": True, "delay": delay, "films": names, "tr": self.tr,
                                 "rows": np.stack([np.concatenate(fi), np.concatenate(ts)], 1).tolist()
                                 if len(fi) else []})

    def select_voxels(self, keep) -> "MovieDataset":
        """An in-memory copy with voxels ``keep`` (bool mask or index array); frames stay lazy."""
        keep = np.asarray(keep)
        films = {}
        for n, f in self.films.items():
            g = {"frames": f["frames"], "split": np.asarray(f["split"]),
                 "responses": np.asarray(f["responses"], np.float32)[:, keep]}
            if "truth" in f:
                g["truth"] = np.asarray(f["truth"], np.float32)[:, keep]
            films[n] = g
        return MovieDataset(films, self.coords[keep], self.tr, self.subject, self.roi[keep], self.roi_names,
                            None if self.snr is None else self.snr[keep], dict(self.meta), _h5=self._h5)

    # ---- I/O ------------------------------------------------------------------------------
    def save(self, path) -> Path:
        """Write to ``path`` (HDF5) atomically, a chunk at a time."""
        return write_movie_dataset(path, {n: dict(f) for n, f in self.films.items()}, self.coords, self.tr,
                                   subject=self.subject, roi=self.roi, roi_names=self.roi_names, snr=self.snr,
                                   meta=self.meta)

    @classmethod
    def load(cls, path, lazy: bool = True) -> "MovieDataset":
        """Read a movie data set; ``lazy`` keeps the frames on disk (responses are read)."""
        from napari_nrf.data.responseset import open_h5

        path = Path(path)
        f = open_h5(path, FORMAT, "movie data set", MovieError)
        try:
            ds = cls._from_h5(f, path, lazy)
        except MovieError as exc:
            f.close()
            msg = str(exc)
            raise MovieError(msg if str(path) in msg else f"{path}: {msg}") from None
        except (KeyError, TypeError, ValueError, AttributeError, OSError) as exc:
            f.close()
            raise MovieError(f"{path}: a malformed movie data set ({type(exc).__name__}: "
                             f"{' '.join(str(exc).split())[:160]})") from None
        if not lazy:
            f.close()
        return ds

    @classmethod
    def _from_h5(cls, f, path, lazy: bool) -> "MovieDataset":
        from napari_nrf.data.responseset import _json_attr

        if "film_order" not in f.attrs:
            raise MovieError("attribute 'film_order' is missing")
        order = _json_attr(f, path, "film_order", [])
        if not order or not all(isinstance(n, str) for n in order):
            raise MovieError(f"attribute 'film_order' must be a non-empty list of film names, got {order!r}")
        if "films" not in f:
            raise MovieError("group '/films' is missing")
        missing = [n for n in order if n not in f["films"]]
        if missing:
            raise MovieError(f"attribute 'film_order' names film(s) {missing} that group '/films' lacks "
                             f"(it holds {sorted(f['films'])})")
        films = {}
        for name in order:
            g = f["films"][name]
            for key in ("frames", "responses", "split"):
                if key not in g:
                    raise MovieError(f"film {name!r} lacks the dataset '/films/{name}/{key}'")
            if g["responses"].dtype.kind not in "fiub":
                raise MovieError(f"dataset '/films/{name}/responses' holds {g['responses'].dtype} values, "
                                 "not real numbers")
            d = {"frames": g["frames"] if lazy else np.asarray(g["frames"]),
                 "responses": np.asarray(g["responses"], np.float32), "split": np.asarray(g["split"])}
            if "truth" in g:
                d["truth"] = np.asarray(g["truth"], np.float32)
            films[name] = d
        roi_names = {int(k): v for k, v in _json_attr(f, path, "roi_names", {}).items()}
        for key in ("coords", ):
            if key not in f:
                raise MovieError(f"dataset '/{key}' is missing")
        for key in ("tr", "subject"):
            if key not in f.attrs:
                raise MovieError(f"attribute '{key}' is missing")
        return cls(films, np.asarray(f["coords"]), float(f.attrs["tr"]), str(f.attrs["subject"]),
                   np.asarray(f["roi"]) if "roi" in f else None, roi_names,
                   np.asarray(f["snr"]) if "snr" in f else None, _json_attr(f, path, "meta", {}),
                   _h5=f if lazy else None)

    def close(self):
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None


def write_movie_dataset(path, films: dict, coords, tr: float, *, subject: str = "group", roi=None, roi_names=None,
                        snr=None, meta=None, progress=None) -> Path:
    """Write a movie data set atomically (temporary file + rename: an error leaves nothing).

    ``films``: name -> {"frames": (T, F, S, S, 3) uint8 array / h5py dataset, or an
    iterable of (F, S, S, 3) chunks with "n_trs" given; "responses" (T, V); "split" (T,);
    optional "truth" (T, V)}. Frames are written one TR at a time.
    """
    import h5py

    path = Path(path)
    coords = np.asarray(coords, np.float32)
    if coords.ndim != 2 or coords.shape[1] != 3:
        raise MovieError(f"coords must be (V, 3) MNI mm, got {coords.shape}")
    if not (np.isfinite(float(tr)) and float(tr) > 0):
        raise MovieError(f"tr {tr!r}: the repetition time must be a positive number of seconds")
    from napari_nrf.guards import disk_guard

    need = 0
    for d in films.values():
        fr, resp = d["frames"], d["responses"]
        n_t = len(resp)
        per = int(np.prod(fr.shape[1:])) if hasattr(fr, "shape") else 0
        need += n_t * per + 8 * n_t * len(coords) + n_t
    with disk_guard(path, need, "writing the movie data set"), atomic_write(path, None) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = FORMAT
            f.attrs["version"] = VERSION
            f.attrs["subject"] = str(subject)
            f.attrs["tr"] = float(tr)
            f.attrs["film_order"] = json.dumps(list(films))
            f.attrs["roi_names"] = json.dumps({str(k): v for k, v in (roi_names or {}).items()})
            f.attrs["meta"] = json.dumps(meta or {}, default=str)
            f.create_dataset("coords", data=coords)
            f.create_dataset("roi", data=np.zeros(len(coords), np.int32) if roi is None else np.asarray(roi, np.int32))
            if snr is not None:
                f.create_dataset("snr", data=np.asarray(snr, np.float32))
            grp = f.create_group("films")
            shape = None
            for name, d in films.items():
                g = grp.create_group(name)
                resp = np.asarray(d["responses"], np.float32)
                if resp.ndim != 2 or resp.shape[1] != len(coords):
                    raise MovieError(f"film {name!r}: responses must be (T, {len(coords)}), got {resp.shape}")
                if not np.isfinite(resp).all():
                    raise MovieError(f"film {name!r}: the responses hold NaN or inf")
                T = len(resp)
                split = np.asarray(d["split"], np.uint8)
                if split.shape != (T,):
                    raise MovieError(f"film {name!r}: split must be ({T},), got {split.shape}")
                g.create_dataset("responses", data=resp, chunks=True)
                g.create_dataset("split", data=split)
                if d.get("truth") is not None:
                    g.create_dataset("truth", data=np.asarray(d["truth"], np.float32), chunks=True)
                fr = d["frames"]
                it = iter(fr) if not hasattr(fr, "shape") else (fr[i] for i in range(len(fr)))
                ds = None
                n = 0
                for chunk in it:
                    chunk = np.asarray(chunk)
                    if chunk.dtype != np.uint8 or chunk.ndim != 4 or chunk.shape[-1] != 3:
                        raise MovieError(f"film {name!r}: chunks must be (F, S, S, 3) uint8, "
                                         f"got {chunk.shape} {chunk.dtype}")
                    if ds is None:
                        if shape is not None and chunk.shape != shape:
                            raise MovieError(f"film {name!r}: chunks {chunk.shape}, other films {shape}")
                        shape = chunk.shape
                        ds = g.create_dataset("frames", shape=(T,) + chunk.shape, dtype=np.uint8,
                                              chunks=(1,) + chunk.shape)
                    if n >= T:
                        raise MovieError(f"film {name!r}: more chunks than its {T} responses")
                    ds[n] = chunk
                    n += 1
                    if progress is not None:
                        progress(n, T, name)
                if n != T:
                    raise MovieError(f"film {name!r}: {n} chunks of frames for {T} TR of responses")
    return path
