"""Seed-based rest maps from resting-state BOLD (Rest2Visual's rest input; Qt-free).

Rest2Visual (arXiv 2509.13612, section 3.1) conditions its prediction on one
seed-based map per (subject, session): the mean time series of a posterior-cingulate
seed, band-passed (and, in the paper, convolved with the canonical HRF), a voxelwise GLM
``x(t, v) = beta(v) r(t) + e(t, v)`` and ``beta`` z-scored over the MNI152 brain mask.
The paper gives neither the seed, the band nor the HRF; our defaults:

* seed: a sphere of radius 8 mm at MNI (0, -52, 18) mm in the posterior cingulate, the
  default-mode seed of nilearn's seed-to-voxel correlation example
  (``plot_seed_to_voxel_correlation``, "one seed sphere in the Posterior Cingulate
  Cortex, considered part of the Default Mode Network"); any label/mask NIfTI instead;
* band 0.01-0.1 Hz (linear detrend, 5th-order zero-phase Butterworth as nilearn designs
  it, applied to all voxels at once), then :func:`nilearn.signal.clean` regresses out the
  optional confounds (band-passed the same way) and z-scores over time;
* the extra convolution of the seed series with the canonical HRF
  (:func:`nilearn.glm.first_level.spm_hrf` or ``glover_hrf``) is a switch, off by
  default: the BOLD is already haemodynamic, and on the virtual subjects the extra
  convolution weakens the map (docs/rest2visual.md).

Memory: the masked run is held once, in its on-disk type when that is int16/uint8 or
float32 (T x V: 0.47 GB for 1,000 int16 volumes of a 2 mm brain, 0.94 GB in float32); volumes are read a chunk at a time (:class:`napari_nrf.space.NiftiVolumes`,
so a ``.nii.gz`` is decompressed once) and voxels are cleaned and regressed a chunk at a
time (float64 only per chunk). Outputs are written atomically.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_nrf import space
from napari_nrf.errors import NapariNRFError, Cancelled

#: The default seed: MNI mm centre and radius of the PCC sphere (see the module doc).
PCC_SEED_MNI = (0.0, -52.0, 18.0)
PCC_RADIUS_MM = 8.0
PCC_SOURCE = ("posterior cingulate sphere, radius 8 mm at MNI (0, -52, 18) mm: the default-mode seed of "
              "nilearn's seed-to-voxel correlation example")
DEFAULT_BAND = (0.01, 0.1)
#: Fewest volumes accepted: a 0.01 Hz high-pass needs a run several times 100 s long.
MIN_VOLUMES = 30
#: Fewest in-brain voxels in the seed.
MIN_SEED_VOXELS = 1


class RestMapError(NapariNRFError):
    """Bad resting-state input (3D file, too few volumes, no TR, a seed outside the brain...)."""


@dataclass
class RestMap:
    """A seed-based rest map.

    Attributes
    ----------
    volume : (X, Y, Z) float32 on ``grid``: beta z-scored over ``mask``, 0 outside
    grid : the run's (canonical RAS+) MNI grid
    mask : (X, Y, Z) bool: brain voxels with signal (where the map is defined)
    info : dict: t_r (s), n_volumes, band (Hz), seed (description), n_seed_voxels, hrf, ...
    """

    volume: np.ndarray
    grid: space.Grid
    mask: np.ndarray
    info: dict = field(default_factory=dict)

    def save(self, path, overwrite: bool = True) -> Path:
        """Write the map as a NIfTI (MNI sform/qform) atomically, with a JSON sidecar."""
        from napari_nrf.errors import check_output

        p = check_output(path, overwrite=overwrite)
        space.save_nifti(self.volume.astype(np.float32), self.grid, p,
                         description="napari-nrf rest map (seed beta, z over brain)",
                         sidecar={"kind": "rest-map", "units": "z (beta z-scored over the brain mask)",
                                  **{k: v for k, v in self.info.items()}})
        return p


def _tr_from_header(path) -> float | None:
    import nibabel as nib

    try:
        hdr = nib.load(str(path)).header
    except Exception:  # noqa: BLE001 - read errors are raised by NiftiVolumes
        return None
    zooms = hdr.get_zooms()
    if len(zooms) < 4 or not zooms[3] or not np.isfinite(zooms[3]) or zooms[3] <= 0:
        return None
    unit = hdr.get_xyzt_units()[1] if hasattr(hdr, "get_xyzt_units") else "sec"
    tr = float(zooms[3])
    if unit == "msec":
        tr /= 1000.0
    elif unit == "usec":
        tr /= 1e6
    elif unit not in ("sec", "unknown"):
        return None
    if unit == "unknown" and tr > 20:  # an unlabelled 2000 is milliseconds
        tr /= 1000.0
    return tr


def read_confounds(confounds, n_volumes: int) -> np.ndarray | None:
    """Confounds (T, K) float64 from a TSV/CSV with a header row (fMRIPrep style; ``n/a``
    becomes the column mean) or an array; None passes through."""
    if confounds is None:
        return None
    if isinstance(confounds, (str, Path)):
        from napari_nrf.guards import read_text_table

        p = Path(confounds)
        if not p.exists():
            raise FileNotFoundError(f"confounds file not found: {p}")
        lines = [ln for ln in read_text_table(p, "--confounds").splitlines() if ln.strip()]
        if len(lines) < 2:
            raise RestMapError(f"{p.name}: a confounds table needs a header row and one row per volume")
        sep = "\t" if "\t" in lines[0] else ","
        rows = []
        for i, ln in enumerate(lines[1:], start=2):
            vals = []
            for v in ln.split(sep):
                v = v.strip()
                try:
                    vals.append(float("nan") if v.lower() in ("n/a", "na", "nan", "") else float(v))
                except ValueError:
                    raise RestMapError(f"{p.name} line {i}: {v!r} is not a number") from None
            rows.append(vals)
        try:
            arr = np.array(rows, np.float64)
        except ValueError:
            raise RestMapError(f"{p.name}: rows of different lengths") from None
        name = p.name
    else:
        arr, name = np.asarray(confounds, np.float64), "confounds"
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or len(arr) != n_volumes:
        raise RestMapError(f"{name}: {arr.shape[0] if arr.ndim else 0} rows of confounds for {n_volumes} volumes")
    col_mean = np.nanmean(np.where(np.isfinite(arr), arr, np.nan), axis=0)
    col_mean = np.where(np.isfinite(col_mean), col_mean, 0.0)
    arr = np.where(np.isfinite(arr), arr, col_mean[None])
    keep = arr.std(0) > 0
    return arr[:, keep] if keep.any() else None


def seed_mask(seed, grid: space.Grid) -> tuple[np.ndarray, str]:
    """The seed on ``grid``: "pcc" (default sphere), ("sphere", (x, y, z), r) in MNI mm,
    or a label/mask NIfTI path (non-zero voxels, nearest-neighbour resampled)."""
    if seed is None or (isinstance(seed, str) and seed.lower() == "pcc"):
        return space.sphere_mask(grid, PCC_SEED_MNI, PCC_RADIUS_MM), PCC_SOURCE
    if isinstance(seed, (tuple, list)) and len(seed) == 3 and seed[0] == "sphere":
        c, r = np.asarray(seed[1], float), float(seed[2])
        return space.sphere_mask(grid, c, r), f"sphere, radius {r:g} mm at MNI {tuple(np.round(c, 1))} mm"
    p = Path(seed)
    if not p.exists():
        raise RestMapError(f"seed {str(seed)!r}: use 'pcc' or the path of a seed mask NIfTI (file not found)")
    return space.roi_mask(grid, p), f"mask file {p.name}"


def _bandpass(t_r: float, band):
    """Second-order sections of the 5th-order Butterworth band (nilearn's filter design), or None."""
    from scipy.signal import butter

    lo, hi = band
    fs = 1.0 / t_r
    if lo and hi:
        return butter(5, [lo, hi], btype="bandpass", fs=fs, output="sos")
    if hi:
        return butter(5, hi, btype="lowpass", fs=fs, output="sos")
    if lo:
        return butter(5, lo, btype="highpass", fs=fs, output="sos")
    return None


def _detrend_rows(x: np.ndarray) -> np.ndarray:
    """Remove each row's least-squares line (in place; ``x`` (n, T) float64).

    The closed form of scipy's ``detrend(type="linear")`` (the same projection onto
    [1, t]): a mean and one dot product per row instead of a least-squares solve."""
    n_t = x.shape[1]
    t = np.arange(n_t, dtype=np.float64) - (n_t - 1) / 2.0
    x -= x.mean(1, keepdims=True)
    tt = float(t @ t)
    if tt > 0:
        x -= np.outer(x @ (t / tt), t)
    return x


def _filter_rows(x: np.ndarray, sos) -> np.ndarray:
    """Linear detrend and zero-phase band-pass along the last axis: (n, T) -> (n, T) float64.

    Rows are contiguous in time, which is the layout scipy's ``sosfiltfilt`` filters
    without copying to another axis order."""
    from scipy.signal import sosfiltfilt

    x = _detrend_rows(np.array(x, np.float64, order="C", copy=True))
    if sos is not None:
        # scipy's default edge padding (3 x the filter length) exceeds a short run: cap it
        x = sosfiltfilt(sos, x, axis=-1, padlen=min(3 * (2 * len(sos) + 1), x.shape[1] - 1))
    return x


def _filter(x: np.ndarray, sos) -> np.ndarray:
    """Linear detrend and zero-phase band-pass along time (axis 0): (T, n) -> (T, n) float64."""
    return _filter_rows(np.asarray(x).T, sos).T


def _clean(x: np.ndarray, sos, t_r: float, confounds) -> np.ndarray:
    """Detrended, band-passed, confound-regressed and z-scored series (T, n) float64.

    The regression and z-scoring are :func:`nilearn.signal.clean`'s (confounds filtered
    with the same band first, so the two steps commute); the detrending and the
    Butterworth band-pass are applied here to every column at once with scipy, because
    nilearn's Butterworth filters one voxel at a time (about 100x slower on a brain).
    """
    from nilearn import signal

    x = _filter(x, sos)
    return signal.clean(x, detrend=False, standardize="zscore_sample", confounds=confounds,
                        standardize_confounds=True, filter=False, t_r=t_r)


def _betas(x: np.ndarray, r: np.ndarray, rr: float, sos, t_r: float, conf) -> np.ndarray:
    """GLM slopes ``beta = r . z(v) / r . r`` of a chunk of voxels, ``x`` (T, n) raw.

    Without confounds the z-scoring of :func:`nilearn.signal.clean` (``zscore_sample``:
    mean 0, sd with ddof 1) is folded into the slope, ``beta = r . y / (sd(y) r . r)``
    with ``y`` the filtered series (``r`` has mean 0), so no z-scored copy is made; with
    confounds the chunk goes through :func:`_clean`. (n,) float64."""
    if conf is not None:
        return (r @ _clean(x, sos, t_r, conf)) / rr
    y = _filter_rows(np.asarray(x).T, sos)  # (n, T)
    y -= y.mean(1, keepdims=True)
    sd = np.sqrt(np.einsum("ij,ij->i", y, y) / max(1, y.shape[1] - 1))
    sd[sd < np.finfo(np.float64).eps] = 1.0  # nilearn's guard for constant series
    return (y @ r) / (sd * rr)


def hrf_kernel(t_r: float, model: str = "spm") -> np.ndarray:
    """The canonical HRF sampled at the TR (nilearn's ``spm_hrf`` or ``glover_hrf``), unit sum."""
    from nilearn.glm.first_level import glover_hrf, spm_hrf

    fn = {"spm": spm_hrf, "glover": glover_hrf}.get(model)
    if fn is None:
        raise RestMapError(f"HRF model {model!r}: use 'spm' or 'glover'")
    h = np.asarray(fn(t_r, oversampling=1), np.float64)
    return h / h.sum()


def _masked(vols: np.ndarray, brain_f: np.ndarray) -> np.ndarray:
    """(X, Y, Z, n) volumes -> (n, V) brain voxels in the C order of ``np.argwhere(mask)``.

    ``brain_f`` are the voxels' Fortran-order flat indices: a NIfTI block is Fortran
    ordered, so its transpose is a C-ordered (n, Z * Y * X) view and one ``take`` per row
    gathers the voxels (2.5x less CPU than boolean indexing of the 4D block)."""
    n = vols.shape[3]
    return np.take(vols.transpose(3, 2, 1, 0).reshape(n, -1), brain_f, axis=1)


def open_run(path, t_r: float | None = None):
    """Open a resting BOLD NIfTI (header only): ``(space.NiftiVolumes, t_r)``, the TR from
    the header when ``t_r`` is None (None when the header has none). A 3D file is refused."""
    try:
        reader = space.NiftiVolumes(path)
    except space.SpaceError as exc:
        raise RestMapError(str(exc)) from None
    if len(reader._img.shape) == 3 or reader.n_volumes == 1:
        reader.close()
        raise RestMapError(f"{Path(path).name} is a 3D image: a rest map needs a 4D resting-state BOLD run "
                           "(x, y, z, time)")
    return reader, (_tr_from_header(path) if t_r is None else t_r)


def _check_run(name: str, n_t: int, t_r) -> float:
    """The TR (s) of a run of ``n_t`` volumes, or a RestMapError (no TR, a TR out of range,
    too few volumes)."""
    if t_r is None:
        raise RestMapError(f"{name}: no repetition time in the header; give it (--tr SECONDS)")
    t_r = float(t_r)
    if not (np.isfinite(t_r) and 0.05 <= t_r <= 20):
        raise RestMapError(f"{name}: repetition time {t_r} s: must be between 0.05 and 20 s")
    if n_t < MIN_VOLUMES:
        raise RestMapError(f"{name} has {n_t} volumes; a rest map needs at least {MIN_VOLUMES}")
    return t_r


def check_run(path, t_r: float | None = None) -> tuple[int, float]:
    """Header-only checks of a resting BOLD run (4D, enough volumes, a TR): ``(n_volumes,
    t_r)``, or a one-line RestMapError. Importers call it on every run before any work."""
    reader, t_r = open_run(path, t_r)
    n_t = reader.n_volumes
    reader.close()
    return n_t, _check_run(Path(path).name, n_t, t_r)


def session_label(path, k: int) -> str:
    """``ses-XX`` from a BIDS-like name (``sub-01_ses-02_task-rest_bold.nii.gz``) or NSD's
    ``timeseries_session02_run01`` (``ses-02``), else ``ses-{k + 1:02d}``."""
    import re

    name = Path(path).name
    hit = re.search(r"ses-([A-Za-z0-9]+)", name)
    if hit:
        return f"ses-{hit.group(1)}"
    hit = re.search(r"session(\d+)", name)  # NSD's timeseries_sessionNN_runMM
    return f"ses-{int(hit.group(1)):02d}" if hit else f"ses-{k + 1:02d}"


def check_rest_files(files, sessions=None, t_r: float | None = None, runs_only: bool = False):
    """Header checks of :func:`session_rest_maps`'s inputs, in seconds and before any work:
    ``(paths, session labels, is_run flags)`` or a one-line error naming the file."""
    import nibabel as nib

    files = [Path(f) for f in files]
    if not files:
        raise RestMapError("no resting-state runs or rest maps given")
    if sessions is not None and len(sessions) != len(files):
        raise RestMapError(f"{len(sessions)} session labels for {len(files)} files")
    labels = [str(x) for x in sessions] if sessions is not None else [session_label(f, k) for k, f in enumerate(files)]
    is_run = []
    for f in files:
        if not f.exists():
            raise FileNotFoundError(f"resting-state file not found: {f}")
        try:
            shape = nib.load(str(f)).shape
        except Exception as exc:  # noqa: BLE001 - nibabel raises several types
            raise RestMapError(f"could not read {f.name} as NIfTI: {exc}") from None
        run = len(shape) == 4 and shape[3] > 1
        if runs_only and not run:
            raise RestMapError(f"{f.name} is a 3D image: a resting-state run must be 4D (x, y, z, time); "
                               "add ready-made rest maps with napari-nrf attach-rest")
        if run:
            check_run(f, t_r)
        is_run.append(run)
    return files, labels, is_run


def session_rest_maps(files, sessions=None, t_r: float | None = None, seed="pcc", band=DEFAULT_BAND,
                      runs_only: bool = False, progress=None, cancel=None):
    """Per-session rest maps from resting BOLD runs (4D: made by :func:`rest_map`) and/or
    ready-made rest maps (3D), for a response set's ``/rest`` group (``attach-rest`` and
    the importers' ``--rest``).

    Parameters
    ----------
    files : paths; sessions : their session labels (default :func:`session_label`)
    t_r, seed, band : for the runs, as :func:`rest_map`
    runs_only : refuse 3D files (the importers take resting runs, not maps)
    progress : callable(done, total, message) over the files

    Returns ``(maps (S, X, Y, Z) float32, grid, labels)`` on the first file's grid (the
    others resampled, trilinear). Files that share a session label (two resting runs in
    one session, as in NSD) are averaged and the mean z-scored again over its voxels.
    Every run's header is checked before the first map is made, so a bad file fails in
    seconds with its name.
    """
    files, labels, is_run = check_rest_files(files, sessions, t_r, runs_only)
    grid, per_file = None, []
    for k, (f, run) in enumerate(zip(files, is_run)):
        if progress is not None:
            progress(k, len(files), f.name)
        if run:
            r = rest_map(f, t_r, seed=seed, band=band, cancel=cancel)
            v = r.volume if grid is None else space.resample(r.volume, r.grid, grid).astype(np.float32)
            grid = grid or r.grid
        else:
            v, g = load_rest_map(f, grid)
            grid = grid or g
        per_file.append(v)
    if progress is not None:
        progress(len(files), len(files), "done")
    order = list(dict.fromkeys(labels))
    maps = []
    for lab in order:
        vs = [v for v, l2 in zip(per_file, labels) if l2 == lab]
        if len(vs) == 1:
            maps.append(vs[0])
            continue
        m = np.mean(vs, axis=0)
        inside = np.any([v != 0 for v in vs], axis=0)
        z = np.zeros_like(m)
        z[inside] = (m[inside] - m[inside].mean()) / (m[inside].std() + 1e-12)
        maps.append(z.astype(np.float32))
    return np.stack(maps).astype(np.float32), grid, order


def rest_map(bold, t_r: float | None = None, *, grid: space.Grid | None = None, seed="pcc",
             band=DEFAULT_BAND, confounds=None, hrf: bool = False, hrf_model: str = "spm",
             mask=None, chunk_volumes: int = 32, chunk_voxels: int = 8192, workers: int = 1,
             progress=None, cancel=None) -> RestMap:
    """The seed-based rest map of a resting BOLD run.

    Parameters
    ----------
    bold : path of a 4D NIfTI in MNI space (any axis-aligned grid), or a (X, Y, Z, T)
        array with ``grid``
    t_r : repetition time in s (default: the header's, when it has one)
    seed : "pcc", ("sphere", centre MNI mm, radius mm), or a seed mask NIfTI path
    band : (high-pass, low-pass) Hz; None for either end skips it
    confounds : TSV/CSV path or (T, K) array, regressed out with the band-pass
    hrf : convolve the cleaned seed series with the canonical HRF (``hrf_model``)
    mask : brain mask on the run's grid (default: the MNI152 brain mask)
    chunk_volumes, chunk_voxels : streaming sizes (memory)
    workers : threads for the voxel chunks (default 1: one core already meets the speed
        target, and each thread's malloc arena raised the peak memory by up to 0.6 GB);
        chunks of 8,192 voxels (64 MB a 1,000-volume chunk in float64) stay above glibc's
        mmap threshold, so freed chunks go back to the system
    progress : callable(done, total, message); cancel : callable() -> bool

    Returns
    -------
    RestMap (volume float32 on the run's grid, z over the brain voxels with signal)
    """
    reader = None
    if isinstance(bold, (str, Path)):
        reader, t_r = open_run(bold, t_r)
        g, n_t, name = reader.grid, reader.n_volumes, Path(bold).name
    else:
        arr = np.asarray(bold)
        if arr.ndim != 4:
            raise RestMapError(f"a resting BOLD run must be 4D (x, y, z, time), got shape {arr.shape}")
        if grid is None or tuple(grid.shape) != arr.shape[:3]:
            raise RestMapError("an array run needs its grid (space.Grid of its first three axes)")
        g, n_t, name = grid, arr.shape[3], "the run"
    try:
        t_r = _check_run(name, n_t, t_r)
    except RestMapError:
        if reader is not None:
            reader.close()
        raise
    lo, hi = (None, None) if band is None else band
    nyq = 0.5 / t_r
    if hi is not None and hi >= nyq:
        hi = None  # the low-pass is above Nyquist: nothing to remove
    if lo is not None and hi is not None and not lo < hi:
        raise RestMapError(f"band {band}: the high-pass must be below the low-pass (Hz)")
    conf = read_confounds(confounds, n_t)

    brain = space.brain_mask(g) if mask is None else g._check_mask(np.asarray(mask, bool))
    if not brain.any():
        raise RestMapError(f"{name}: the grid {g} does not cover the MNI152 brain")
    n_v = int(brain.sum())
    # the brain voxels' indices in the volume's Fortran order, listed in C order (as Grid.coords)
    brain_f = np.ravel_multi_index(np.nonzero(brain), g.shape, order="F")
    # Pass 1: read the masked run a chunk of volumes at a time (T x V, the on-disk dtype
    # when it is int16/uint8 or float32: an int16 run stays 2 bytes a value), and
    # accumulate each voxel's moments (shifted by its first value: no cancellation) for
    # the "voxels with signal" test, so the run is not read a second time for it.
    data = None
    total = n_t + n_v
    s1 = np.zeros(n_v)
    s2 = np.zeros(n_v)
    fin = np.ones(n_v, bool)
    x0 = None
    for s in range(0, n_t, chunk_volumes):
        if cancel is not None and cancel():
            raise Cancelled("rest map cancelled")
        e = min(n_t, s + chunk_volumes)
        block = _masked(reader.read(s, e) if reader is not None else arr[..., s:e], brain_f)
        if data is None:
            keep = block.dtype if block.dtype in (np.int16, np.uint16, np.int8, np.uint8, np.float32) else np.float32
            data = np.empty((n_t, n_v), keep)
        data[s:e] = block
        b = np.asarray(block, np.float64)
        if block.dtype.kind == "f":
            ok = np.isfinite(b)
            fin &= ok.all(0)
            b = np.where(ok, b, 0.0)
        if x0 is None:
            x0 = b[0].copy()
        b -= x0
        s1 += b.sum(0)
        s2 += np.einsum("ij,ij->j", b, b)
        del block, b  # before the next read: one block in memory at a time
        if progress is not None:
            progress(e, total, "reading")
    if reader is not None:
        reader.close()
    m1 = s1 / n_t
    sd = np.where(fin, np.sqrt(np.maximum(s2 / n_t - m1 * m1, 0.0)), 0.0)
    valid = sd > 1e-6 * max(1.0, float(sd.max()) if sd.size else 1.0)
    if valid.sum() < 10:
        raise RestMapError(f"{name}: fewer than 10 brain voxels carry signal")
    smask, sdesc = seed_mask(seed, g)
    seed_sel = smask[brain] & valid
    if seed_sel.sum() < MIN_SEED_VOXELS:
        raise RestMapError(f"the seed ({sdesc}) has no voxel inside the brain with signal on this grid; "
                           "check the seed mask's space and the run's field of view")
    sos = _bandpass(t_r, (lo, hi))
    if conf is not None:
        conf = _filter(conf, sos)
        conf = conf[:, conf.std(0) > 1e-12] if (conf.std(0) > 1e-12).any() else None
    r = _clean(data[:, seed_sel].mean(1, dtype=np.float64)[:, None], sos, t_r, conf)[:, 0]
    if hrf:
        k = hrf_kernel(t_r, hrf_model)
        r = np.convolve(r, k)[:n_t]
        r = (r - r.mean()) / (r.std() + 1e-12)
    rr = float(r @ r)
    if not rr > 0:
        raise RestMapError("the seed's time series is constant after filtering")
    # Pass 2: slopes a contiguous chunk of voxels at a time (a column slice of the run,
    # no fancy-index copy); voxels without signal are zeroed after (their NaNs first, so
    # the filter stays finite). With workers > 1 chunks run on a thread pool (scipy's
    # sosfiltfilt and NumPy's products release the GIL).
    from concurrent.futures import ThreadPoolExecutor

    beta = np.zeros(n_v, np.float64)
    has_nan = not fin.all()
    starts = list(range(0, n_v, chunk_voxels))

    def work(s):
        if cancel is not None and cancel():
            raise Cancelled("rest map cancelled")
        x = data[:, s:s + chunk_voxels]
        if has_nan and not fin[s:s + chunk_voxels].all():
            x = np.where(fin[None, s:s + chunk_voxels], x, 0)
        beta[s:s + chunk_voxels] = _betas(x, r, rr, sos, t_r, conf)
        return min(n_v, s + chunk_voxels)

    n_workers = max(1, min(int(workers), 4, len(starts)))
    if n_workers == 1:  # the default: in this thread (no second malloc arena)
        for s in starts:
            done = work(s)
            if progress is not None:
                progress(n_t + done, total, "regressing")
    else:
        with ThreadPoolExecutor(n_workers) as pool:
            futures = [pool.submit(work, s) for s in starts]
            try:
                for f in futures:
                    done = f.result()
                    if progress is not None:
                        progress(n_t + done, total, "regressing")
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
    beta[~valid] = 0.0
    del data
    b = beta[valid]
    z = (beta - b.mean()) / (b.std() + 1e-12)
    vol = np.zeros(g.shape, np.float32)
    full_valid = np.zeros(g.shape, bool)
    full_valid[brain] = valid
    vol[full_valid] = z[valid].astype(np.float32)
    info = {"t_r": t_r, "n_volumes": int(n_t), "band": [lo, hi], "seed": sdesc, "n_seed_voxels": int(seed_sel.sum()),
            "hrf": hrf_model if hrf else None, "n_confounds": 0 if conf is None else int(conf.shape[1]),
            "n_brain_voxels": int(valid.sum()), "source": name}
    return RestMap(vol, g, full_valid, info)


def load_rest_map(path, grid: space.Grid | None = None) -> tuple[np.ndarray, space.Grid]:
    """A rest map NIfTI as ``(volume float32, grid)``; with ``grid``, resampled onto it
    (trilinear, 0 outside). A 4D file is refused (it is a BOLD run: make its map first)."""
    vol, g = space.load_nifti(path)
    vol = np.asarray(vol, np.float32)
    if vol.ndim == 4 and vol.shape[3] == 1:
        vol = vol[..., 0]
    if vol.ndim != 3:
        raise RestMapError(f"{Path(path).name}: a rest map is a 3D volume, got shape {vol.shape} "
                           "(a BOLD run? make its map with napari-nrf rest-map)")
    finite = np.isfinite(vol)
    if not finite.any():
        raise RestMapError(f"{Path(path).name}: every value of the rest map is NaN or infinite; it carries no map")
    vol = np.where(finite, vol, 0.0).astype(np.float32)
    if not np.any(vol != 0) or float(np.nanstd(vol[finite])) == 0.0:
        raise RestMapError(f"{Path(path).name}: the rest map is constant ({float(vol[finite].flat[0]):g} everywhere); "
                           "it carries no map (an empty or failed rest-map output?)")
    if grid is not None and g != grid:
        vol = space.resample(vol, g, grid, order=1, cval=0.0).astype(np.float32)
        g = grid
    return vol, g
