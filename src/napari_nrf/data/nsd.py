"""Natural Scenes Dataset (NSD) importer: MNI-space single-trial betas -> response sets.

Reads an NSD root in the official layout::

    nsddata_betas/ppdata/subjXX/MNI/betas_fithrf_GLMdenoise_RR/betas_sessionNN.nii.gz
        (X, Y, Z, 750) int16 single-trial betas; value / 300 = percent signal change
    nsddata/ppdata/subjXX/MNI/roi/nsdgeneral.nii.gz
        ROI labels on the same grid (-1 outside the brain, 0 not in the ROI, >= 1 in it)
    nsddata/experiments/nsd/nsd_expdesign.mat
        masterordering (30000,)  1-based index into the subject's 10,000 images, per trial
        subjectim      (8, 10000) 1-based 73k stimulus ids of each subject's images
        sharedix       (1000,)   1-based 73k ids of the images every subject saw
    nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5
        imgBrick (73000, 425, 425, 3) uint8, row = 73k id - 1

and writes one :class:`~napari_nrf.data.responseset.ResponseSet` per subject: betas
divided by 300, z-scored per voxel within each session, repeats of an image averaged,
voxels inside the ROI with their MNI coordinates (mm), the shared 1,000 images as the
test split, and NSD's noise ceiling (percent) from the repeats.

Trial ``t`` (0-based) of session ``s`` (1-based) showed image
``subjectim[subj, masterordering[(s - 1) * T + t] - 1] - 1`` (0-based 73k id), with
``T`` the trials per session (750 in NSD). Image ids in the response set are the
0-based 73k ids, so the shared images line up across subjects.

One session is read at a time, a few volumes at a time; each processed session is kept
as a partial file in a work folder, so an interrupted import resumes where it stopped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ._importing import (ImportDataError, PartialStore, Progress, ResponseSetWriter, assemble, assign_split,
                         file_signature, fingerprint, resting_maps, zscore_session)

BETA_SCALE = 300.0
TRIALS_PER_SESSION = 750
DEFAULT_BETAS = "betas_fithrf_GLMdenoise_RR"
BETAS_DIR = "nsddata_betas/ppdata/{subj}/MNI/{betas}"
ROI_DIR = "nsddata/ppdata/{subj}/MNI/roi"
EXPDESIGN = "nsddata/experiments/nsd/nsd_expdesign.mat"
STIMULI = "nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5"
_SESSION_RE = re.compile(r"betas_session(\d+)\.nii(\.gz)?$")
#: Resting-state runs in MNI space (NSD ships them in func1pt8mm space: see find_rest_runs).
REST_DIR = "nsddata_timeseries/ppdata/{subj}/MNI/timeseries"
#: NSD's per-run design files (one 73k id per volume, 0 = no image): all zeros = a resting run.
DESIGN_DIRS = ("nsddata_timeseries/ppdata/{subj}/MNI/design", "nsddata_timeseries/ppdata/{subj}/func1pt8mm/design")
_RUN_RE = re.compile(r"timeseries_session(\d+)_run(\d+)\.nii(\.gz)?$")


class NSDError(ImportDataError):
    """An NSD tree is incomplete or inconsistent (the message says what and where)."""


def subject_dir_name(subject) -> str:
    """1, "1", "subj01", "sub-01" -> "subj01"."""
    m = re.fullmatch(r"(?:subj|sub-?)?0*(\d+)", str(subject).strip())
    if not m or not 1 <= int(m.group(1)) <= 99:
        raise NSDError(f"cannot read an NSD subject from {subject!r}; use 1..8 or 'subj01'")
    return f"subj{int(m.group(1)):02d}"


@dataclass
class NSDDesign:
    """The NSD experimental design, 0-based.

    masterordering : (n_trials,) int64, index into a subject's image list per trial
    subjectim : (n_subjects, n_images) int64, 73k stimulus ids of each subject's images
    sharedix : (n_shared,) int64, 73k ids shown to every subject
    """

    masterordering: np.ndarray
    subjectim: np.ndarray
    sharedix: np.ndarray

    def session_stimuli(self, subject: str, session: int, n_trials: int) -> np.ndarray:
        """0-based 73k ids (n_trials,) int64 of the trials of ``session`` (1-based)."""
        s = int(subject_dir_name(subject)[4:]) - 1
        if s >= self.subjectim.shape[0]:
            raise NSDError(f"nsd_expdesign.mat lists {self.subjectim.shape[0]} subjects; {subject} is not one of them")
        lo, hi = (session - 1) * n_trials, session * n_trials
        if hi > self.masterordering.size:
            raise NSDError(
                f"session {session} with {n_trials} trials needs trials {lo + 1}..{hi} of masterordering, "
                f"which has {self.masterordering.size}"
            )
        idx = self.masterordering[lo:hi]
        if idx.min() < 0 or idx.max() >= self.subjectim.shape[1]:
            raise NSDError("masterordering points outside subjectim; is nsd_expdesign.mat intact?")
        return self.subjectim[s, idx]


def read_expdesign(path) -> NSDDesign:
    """Read ``nsd_expdesign.mat`` (MATLAB v5 via scipy, or v7.3 via h5py) into 0-based arrays."""
    path = Path(path)
    if not path.exists():
        raise NSDError(f"NSD design file not found: {path} (expected at <root>/{EXPDESIGN})")
    need = ("masterordering", "subjectim", "sharedix")
    try:
        from scipy.io import loadmat

        raw = loadmat(str(path), variable_names=list(need))
        get = {k: np.asarray(raw[k]) for k in need if k in raw}
    except NotImplementedError:  # v7.3 files are HDF5 (and transposed)
        import h5py

        with h5py.File(path, "r") as f:
            get = {k: np.asarray(f[k][()]).T for k in need if k in f}
    except Exception as exc:
        raise NSDError(f"could not read {path}: {exc}") from exc
    missing = [k for k in need if k not in get]
    if missing:
        raise NSDError(f"{path.name} lacks the variable(s) {', '.join(missing)}")
    mo = get["masterordering"].astype(np.int64).ravel() - 1
    subjectim = get["subjectim"].astype(np.int64) - 1
    if subjectim.ndim != 2:
        raise NSDError(f"subjectim in {path.name} should be 2D (subjects x images), got {subjectim.shape}")
    shared = get["sharedix"].astype(np.int64).ravel() - 1
    return NSDDesign(mo, subjectim, shared)


def find_sessions(root, subject, betas: str = DEFAULT_BETAS) -> dict[int, Path]:
    """Session number (1-based) -> betas file of ``subject`` under an NSD ``root``."""
    subj = subject_dir_name(subject)
    folder = Path(root) / BETAS_DIR.format(subj=subj, betas=betas)
    if not folder.is_dir():
        raise NSDError(f"no MNI betas for {subj}: folder {folder} does not exist")
    found = {}
    for p in folder.iterdir():
        m = _SESSION_RE.match(p.name)
        if m:
            found[int(m.group(1))] = p
    if not found:
        raise NSDError(f"no betas_sessionNN.nii(.gz) files in {folder}")
    return dict(sorted(found.items()))


def find_rest_runs(root, subject, sessions: Sequence[int] | None = None) -> list[Path]:
    """The resting-state runs of ``subject`` (paths, sorted by session and run).

    NSD's time series are ``nsddata_timeseries/ppdata/subjXX/func1pt8mm/timeseries/
    timeseries_sessionNN_runMM.nii.gz`` in the subject's native 1.8 mm space, and a run's
    design file ``.../design/design_sessionNN_runMM.tsv`` lists one 73k image id per
    volume (0: no image): a design of zeros is a resting run. Rest maps need MNI, so the
    runs are read from ``.../subjXX/MNI/timeseries/`` under the same names (the native
    runs mapped to MNI by the user, e.g. with NSD's ``nsd_mapdata`` and its
    ``func1pt8-to-MNI`` transform); the design files from ``.../MNI/design/`` or
    ``.../func1pt8mm/design/``. ``sessions``: only those (1-based).
    """
    subj = subject_dir_name(subject)
    root = Path(root)
    folder = root / REST_DIR.format(subj=subj)
    if not folder.is_dir():
        raise NSDError(f"no MNI resting-state time series for {subj}: folder {folder} does not exist "
                       "(NSD ships them in func1pt8mm space: map them to MNI into that folder, or give the files "
                       "with --rest-glob)")
    runs = []
    for p in sorted(folder.iterdir()):
        m = _RUN_RE.match(p.name)
        if not m or (sessions is not None and int(m.group(1)) not in set(sessions)):
            continue
        ses, run = int(m.group(1)), int(m.group(2))
        name = f"design_session{ses:02d}_run{run:02d}.tsv"
        design = next((root / d.format(subj=subj) / name for d in DESIGN_DIRS
                       if (root / d.format(subj=subj) / name).exists()), None)
        if design is None:
            raise NSDError(f"{p.name}: its design file {name} (which says whether the run is a resting run) is in "
                           f"neither {' nor '.join(d.format(subj=subj) for d in DESIGN_DIRS)}")
        try:
            ids = np.loadtxt(design, ndmin=1)
        except ValueError:
            raise NSDError(f"{design}: not a column of image ids") from None
        if ids.size and not np.any(ids != 0):
            runs.append(p)
    if not runs:
        raise NSDError(f"{subj}: no resting-state run (a run whose design file is all zeros) in {folder}")
    return runs


def rest_glob(root, subject, pattern: str) -> list[Path]:
    """Files matching ``pattern`` (relative to ``root``, ``{subj}`` -> subjXX), sorted."""
    subj = subject_dir_name(subject)
    pat = pattern.replace("{subj}", subj)
    import glob

    found = sorted(Path(f) for f in glob.glob(str(Path(root) / pat)))  # an absolute pattern stays absolute
    if not found:
        raise NSDError(f"{subj}: no file matches --rest-glob {pat!r} under {root}")
    return found


def roi_path(root, subject, roi: str = "nsdgeneral") -> Path:
    """The ROI file of ``subject``: a name in the subject's MNI roi folder or a path."""
    p = Path(roi)
    if p.suffix in (".nii", ".gz") or p.exists():
        if not p.exists():
            raise NSDError(f"ROI file not found: {p}")
        return p
    folder = Path(root) / ROI_DIR.format(subj=subject_dir_name(subject))
    for name in (f"{roi}.nii.gz", f"{roi}.nii"):
        if (folder / name).exists():
            return folder / name
    have = sorted(q.name.split(".")[0] for q in folder.glob("*.nii*")) if folder.is_dir() else []
    raise NSDError(f"ROI {roi!r} not found in {folder}" + (f"; available: {', '.join(have)}" if have else ""))


def _roi_mask(path: Path, values):
    from napari_nrf import space

    labels, grid = space.load_nifti(path, assume_mni=True)
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise NSDError(f"ROI file {path.name} should be 3D, got shape {labels.shape}")
    labels = np.rint(np.nan_to_num(labels)).astype(np.int32)
    mask = labels > 0 if values is None else np.isin(labels, np.atleast_1d(values))
    if not mask.any():
        raise NSDError(f"ROI file {path.name} selects no voxel (labels {values or '> 0'})")
    return mask, labels, grid


def import_nsd_subject(root, subject, out, roi: str = "nsdgeneral", roi_values=None,
                       sessions: Sequence[int] | None = None, betas: str = DEFAULT_BETAS,
                       work_dir=None, val_fraction: float = 0.1, seed: int = 0, image_size: int | None = None,
                       chunk: int = 50, keep_work: bool = False, progress=None, rest=None, rest_tr=None,
                       rest_seed="pcc", rest_band="default") -> Path:
    """Import one NSD subject into a response set at ``out`` (HDF5); returns the path.

    Parameters
    ----------
    root : path
        NSD root folder (the official layout, see the module docstring).
    subject : int or str
        1..8 or "subj01".
    roi : str
        ROI name in ``nsddata/ppdata/subjXX/MNI/roi`` (e.g. "nsdgeneral",
        "prf-visualrois") or a path to a label NIfTI on the betas' grid.
    roi_values : int or list of int, optional
        Labels to keep (default: every label > 0). Labels are kept per voxel in ``roi``.
    sessions : list of int, optional
        1-based sessions to import (default: every ``betas_sessionNN`` file found; a
        gap in their numbering is an error).
    work_dir : path, optional
        Folder for the per-session partial files (default: ``out`` + ".parts"); rerunning
        after an interruption skips the sessions already there.
    val_fraction, seed
        Random validation share of the non-shared images (the shared 1,000 are test).
    image_size : int, optional
        Resize the stored images to this square size (default: NSD's 425 px as is).
    chunk : int
        Volumes read at once (memory: chunk x one int16 volume).
    keep_work : bool
        Keep the partial files after a successful import.
    progress : None, True (tqdm bar) or callable(done, total)
    rest : None, "nsd" (the resting runs found by :func:`find_rest_runs`, in the imported
        sessions), a glob pattern string (:func:`rest_glob`) or a list of paths
        Resting BOLD runs in MNI space: a seed rest map per session (runs of one session
        averaged; ``rest_tr`` s, default the header's; ``rest_seed``; ``rest_band``), stored
        as the response set's ``/rest`` group as ``attach-rest`` does. Made before the
        betas are read, after every run's header is checked.

    Voxels with a non-finite beta or constant betas in any imported session are
    dropped; their number is in ``meta["n_dropped_voxels"]``.
    """
    from napari_nrf import space

    root = Path(root)
    if not root.is_dir():
        raise NSDError(f"NSD root folder not found: {root}")
    subj = subject_dir_name(subject)
    design = read_expdesign(root / EXPDESIGN)
    stim_path = root / STIMULI
    if not stim_path.exists():
        raise NSDError(f"NSD stimuli not found: {stim_path}")
    found = find_sessions(root, subj, betas)
    if sessions is None:
        sessions = list(found)
        gaps = sorted(set(range(1, max(sessions) + 1)) - set(sessions))
        if gaps:
            raise NSDError(
                f"{subj}: session file(s) {', '.join(f'betas_session{g:02d}' for g in gaps)} missing from "
                f"{found[sessions[0]].parent}; pass sessions=[...] (--sessions) to import only some sessions"
            )
    else:
        sessions = sorted({int(s) for s in sessions})
        missing = [s for s in sessions if s not in found]
        if missing:
            raise NSDError(f"{subj}: session(s) {missing} requested but not found in {found[min(found)].parent}")
    rpath = roi_path(root, subj, roi)
    mask, labels, mgrid = _roi_mask(rpath, roi_values)
    n_mask = int(mask.sum())
    out = Path(out)
    store = PartialStore(work_dir if work_dir is not None else out.with_name(out.name + ".parts"))
    settings = dict(subject=subj, betas=betas, roi=file_signature(rpath), roi_values=roi_values, n_mask=n_mask,
                    scale=BETA_SCALE)
    keys = [f"{s:03d}" for s in sessions]

    try:
        # Headers first: every session must be on the ROI's grid and have the same trial count,
        # so a bad file fails in seconds, not after an hour of reading.
        n_trials = None
        for s in sessions:
            vol = space.NiftiVolumes(found[s], assume_mni=True)
            if vol.grid != mgrid:
                raise NSDError(
                    f"{subj}: the ROI {rpath.name} is on another grid than betas_session{s:02d} "
                    f"({mgrid} vs {vol.grid}); "
                    "use the ROI of the same space and resolution (MNI 1 mm for NSD), or resample it first"
                )
            if n_trials is None:
                n_trials = vol.n_volumes
            elif vol.n_volumes != n_trials:
                raise NSDError(f"{subj}: betas_session{s:02d} has {vol.n_volumes} trials, earlier sessions {n_trials}")
            vol.close()
        for s in sessions:  # validates masterordering coverage before any heavy work
            design.session_stimuli(subj, s, n_trials)
        if rest is None:
            rest_files = None
        elif isinstance(rest, str) and rest == "nsd":
            rest_files = find_rest_runs(root, subj, sessions)
        elif isinstance(rest, str):
            rest_files = rest_glob(root, subj, rest)
        else:
            rest_files = [Path(p) for p in rest]
        rest_set, rest_meta = resting_maps(rest_files, t_r=rest_tr, seed=rest_seed, band=rest_band,
                                           progress=progress)

        n_chunks = -(-n_trials // chunk)
        with Progress(progress, total=len(sessions) * n_chunks + 1, desc=f"{subj} sessions") as bar:
            for s, key in zip(sessions, keys):
                fp = fingerprint(session=file_signature(found[s]), **settings)
                if store.is_done(key, fp):
                    bar.update(n_chunks, desc=f"{subj} session {s:02d} (done before)")
                    continue
                vol = space.NiftiVolumes(found[s], assume_mni=True)
                b = np.empty((n_trials, n_mask), np.float32)
                for start in range(0, n_trials, chunk):
                    stop = min(start + chunk, n_trials)
                    b[start:stop] = vol.read(start, stop, mask=mask)
                    bar.update(1, desc=f"{subj} session {s:02d}")
                vol.close()
                b /= BETA_SCALE  # int16 -> percent signal change (no effect on z, kept for clarity)
                z, invalid = zscore_session(b)
                store.save(key, fp, z, design.session_stimuli(subj, s, n_trials), invalid, session=s)
                del b, z

            invalid_any = np.zeros(n_mask, bool)
            for key in keys:
                invalid_any[store.load(key)[1]["invalid"]] = True
            if invalid_any.all():
                raise NSDError(f"{subj}: every ROI voxel is constant or non-finite in some session; nothing to import")
            coords = mgrid.coords(mask)[~invalid_any]
            roi_lab = labels[mask][~invalid_any]

            def writer_factory(n, v, chunk_v):
                return ResponseSetWriter(out, n, v, subject=subj, chunk_voxels=chunk_v)

            writer, stim_ids, counts, nc = assemble(store, keys, writer_factory, ~invalid_any)
            with writer:
                _copy_images(stim_path, stim_ids, writer, image_size)
                split = assign_split(stim_ids, test_ids=design.sharedix, val_fraction=val_fraction, seed=seed)
                rname = rpath.name.split(".")[0]
                labs = [int(v) for v in np.unique(roi_lab)]
                names = {1: rname} if labs == [1] else {v: f"{rname}-{v}" for v in labs}
                meta = {
                    "source": "nsd", "nsd_root": str(root.resolve()), "betas": betas, "sessions": list(sessions),
                    "trials_per_session": int(n_trials), "beta_scale": BETA_SCALE, "roi_file": str(rpath),
                    "n_roi_voxels": n_mask, "n_dropped_voxels": int(invalid_any.sum()),
                    "repeats": {str(k): int(v) for k, v in zip(*np.unique(counts, return_counts=True))},
                    "image_ids": "0-based NSD 73k ids", "grid": {"shape": list(mgrid.shape),
                                                                "zooms": mgrid.zooms.tolist(),
                                                                "origin": mgrid.origin.tolist()},
                    "val_fraction": val_fraction, "seed": seed,
                }
                if rest_meta is not None:
                    meta["rest"] = rest_meta
                path = writer.finish(coords, split, stim_ids, roi=roi_lab, roi_names=names, noise_ceiling=nc, meta=meta,
                                     commit=True, rest=rest_set)
            bar.update(1, desc=f"{subj} written")
    except BaseException:  # a failure or Ctrl-C: keep finished sessions only (a rerun resumes)
        store.clean_unfinished()
        raise
    if not keep_work:
        store.remove(keys)
    return path


def _copy_images(stim_path: Path, stim_ids: np.ndarray, writer: ResponseSetWriter, image_size: int | None,
                 batch: int = 32) -> None:
    """Copy the stimuli ``stim_ids`` (sorted, 0-based) from imgBrick into the response set."""
    import h5py

    with h5py.File(stim_path, "r") as f:
        if "imgBrick" not in f:
            raise NSDError(f"{stim_path.name} has no 'imgBrick' dataset")
        brick = f["imgBrick"]
        if brick.ndim != 4 or brick.shape[-1] != 3:
            raise NSDError(f"imgBrick should be (n, H, W, 3), got {brick.shape}")
        if stim_ids.max() >= brick.shape[0]:
            raise NSDError(f"stimulus id {stim_ids.max() + 1} is beyond imgBrick's {brick.shape[0]} images")
        hw = tuple(brick.shape[1:3]) if image_size is None else (int(image_size), int(image_size))
        dst = writer.create_images(hw + (3,))
        for start in range(0, stim_ids.size, batch):
            ids = stim_ids[start:start + batch]
            imgs = np.asarray(brick[ids])  # h5py needs increasing indices: stim_ids are sorted
            if image_size is not None:
                imgs = _resize(imgs, int(image_size))
            dst[start:start + ids.size] = imgs


def _resize(imgs: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.BICUBIC)) for im in imgs])


def import_nsd(root, subjects, out_dir, progress=None, **kwargs) -> list[Path]:
    """Import several subjects; writes ``out_dir/subjXX.h5`` each. See :func:`import_nsd_subject`."""
    out_dir = Path(out_dir)
    paths = []
    for s in subjects:
        name = subject_dir_name(s)
        paths.append(import_nsd_subject(root, name, out_dir / f"{name}.h5", progress=progress, **kwargs))
    return paths
