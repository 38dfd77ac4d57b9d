"""``import-movie``: a movie data set from 4D BOLD NIfTI runs and the film they watched.

Each run (one per subject, the same film from the same onset, on one MNI grid) is read a
block of volumes at a time (:class:`napari_nrf.space.NiftiVolumes`) inside the mask (a mask
or atlas NIfTI; default: grey matter), detrended, high-passed and z-scored per voxel
(:func:`.dataset.zscore`). With several runs the data set holds their average (re-z-scored),
the paper's "group brain", and each voxel's SNR (:func:`.dataset.snr_selection`: variance
over time of the subject mean / mean across-subject variance); ``snr_top`` keeps the top
fraction (the paper: 0.3). The film is decoded a TR at a time into chunks of
``frames_per_tr`` frames (a film shorter than the runs is refused before anything is
written) and everything is written atomically: an error leaves no file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_nrf import space

from .dataset import MovieDataset, movie_splits, write_movie_dataset, zscore
from .video import MovieError, film_info, iter_chunks, n_chunks

BLOCK = 32  # volumes read at a time
VOXEL_BLOCK = 8192  # voxels cleaned at a time (float64 temporaries of T x 8192)


def _read_run(nv: space.NiftiVolumes, mask: np.ndarray, progress=None) -> np.ndarray:
    n = nv.n_volumes
    v = int(mask.sum())
    out = np.empty((n, v), np.float32)
    for s in range(0, n, BLOCK):
        out[s:s + BLOCK] = nv.read(s, min(n, s + BLOCK), mask)
        if progress is not None:
            progress(min(n, s + BLOCK), n)
    return out


def import_movie(film, bold, *, tr: float, out=None, onset: float = 0.0, fps: float | None = None, mask=None,
                 snr_top: float | None = None, frames_per_tr: int = 32, size: int = 112, name: str | None = None,
                 held_out: bool = False, assume_mni: bool = False, progress=None) -> MovieDataset:
    """Build (and with ``out`` write) the movie data set of ``film`` watched in the runs ``bold``
    (a path or a list of 4D NIfTI paths, one per subject). Returns the :class:`MovieDataset`
    (frames in memory only when ``out`` is None)."""
    runs = [bold] if isinstance(bold, (str, Path)) else list(bold)
    if not runs:
        raise MovieError("import-movie needs at least one BOLD run")
    if snr_top is not None and not 0 < snr_top <= 1:
        raise MovieError(f"snr_top must be a fraction in (0, 1], got {snr_top}")
    if snr_top is not None and len(runs) < 2:
        raise MovieError("the SNR selection needs runs of at least 2 subjects")
    vols = [space.NiftiVolumes(r, assume_mni=assume_mni) for r in runs]
    try:
        grid, n = vols[0].grid, vols[0].n_volumes
        for r, nv in zip(runs, vols):
            if nv.grid != grid:
                raise MovieError(f"{Path(r).name}: grid {nv.grid} differs from {Path(runs[0]).name}'s {grid}; "
                                 "resample the runs to one MNI grid")
            if nv.n_volumes != n:
                raise MovieError(f"{Path(r).name}: {nv.n_volumes} volumes, {Path(runs[0]).name} {n}")
        if n < 8:
            raise MovieError(f"{Path(runs[0]).name}: {n} volumes; a run needs at least 8")
        info = film_info(film, fps)  # the film must cover the runs: checked before reading them
        if n_chunks(info, tr, onset) < n:
            raise MovieError(f"{Path(film).name}: the film lasts {info.duration:.2f} s; {n} volumes of TR {tr:g} s "
                             f"after an onset of {onset:g} s need {onset + n * tr:.2f} s")
        m = space.resolve_mask(mask if mask is not None else "gm", grid)
        if m is None:
            m = np.ones(grid.shape, bool)
        if not m.any():
            raise MovieError("the mask keeps no voxel of the runs' grid")
        labels = None
        if mask is not None and str(mask) not in ("brain", "gm", "none"):
            data, src = space.load_nifti(mask, assume_mni=assume_mni)
            lab = space.resample(np.asarray(data), src, grid, order=0)
            if np.allclose(lab, np.round(lab)):
                labels = lab[m].astype(np.int32)
        coords = grid.coords(m)
        total = sum(nv.n_volumes for nv in vols)
        # float32 accumulators; each run is z-scored in place a block of voxels at a time, so
        # the peak is about three (T, V) float32 arrays (2 mm whole brain, 600 TR: ~0.4 GB each)
        s_sum = np.zeros((n, len(coords)), np.float32)
        s_sq = np.zeros((n, len(coords)), np.float32) if len(runs) > 1 else None
        done = 0
        for r, nv in zip(runs, vols):
            y = _read_run(nv, m)
            if not np.isfinite(y).all():
                raise MovieError(f"{Path(r).name}: NaN or inf inside the mask")
            for c in range(0, y.shape[1], VOXEL_BLOCK):
                y[:, c:c + VOXEL_BLOCK] = zscore(y[:, c:c + VOXEL_BLOCK], tr)[0]
            s_sum += y
            if s_sq is not None:
                np.square(y, out=y)
                s_sq += y
            del y
            done += nv.n_volumes
            if progress is not None:
                progress(done, total, Path(r).name)
    finally:
        for nv in vols:
            nv.close()
    k = len(runs)
    mean = s_sum
    mean /= k
    snr = None
    keep = np.ones(len(coords), bool)
    if s_sq is not None:
        s_sq /= k
        s_sq -= mean * mean  # across-subject variance (biased), then the unbiased factor
        np.maximum(s_sq, 0, out=s_sq)
        snr = (mean.var(0) / np.maximum(s_sq.mean(0) * k / (k - 1), 1e-12)).astype(np.float32)
        if snr_top is not None:
            kk = max(1, int(round(snr_top * len(snr))))
            keep[:] = False
            keep[np.argsort(-snr, kind="stable")[:kk]] = True
        del s_sq
    resp = mean[:, keep] if not keep.all() else mean
    resp -= resp.mean(0)
    sd = resp.std(0)
    resp /= np.where(sd > 0, sd, 1)
    name = name or Path(film).stem
    split = movie_splits({name: n}, held_out=name if held_out else None)[name]
    roi = None if labels is None else labels[keep]
    meta = {"source": "import-movie", "film": str(film), "runs": [str(r) for r in runs], "onset": onset,
            "frames_per_tr": frames_per_tr, "snr_top": snr_top, "held_out": name if held_out else None,
            "n_subjects": k}
    subject = "group" if k > 1 else Path(runs[0]).name.split(".")[0]
    chunks = iter_chunks(film, tr=tr, frames_per_tr=frames_per_tr, size=size, onset=onset, n_trs=n, fps=fps)
    films = {name: {"frames": chunks, "responses": resp, "split": split}}
    if out is None:
        films[name]["frames"] = np.stack(list(chunks))
        return MovieDataset(films, coords[keep], tr, subject, roi, None, None if snr is None else snr[keep], meta)
    write_movie_dataset(out, films, coords[keep], tr, subject=subject, roi=roi,
                        snr=None if snr is None else snr[keep], meta=meta)
    return MovieDataset.load(out)
