"""Write simulated subjects as an NSD-like file tree (what the NSD importer reads).

Layout (paths as in the official NSD release, see :mod:`napari_nrf.data.nsd`)::

    nsddata_betas/ppdata/subjXX/MNI/betas_fithrf_GLMdenoise_RR/betas_sessionNN.nii
        (X, Y, Z, T) int16 single-trial betas x 300 (percent signal change), on the
        subject's own MNI grid (its voxel size and origin offset), 0 outside its voxels
    nsddata/ppdata/subjXX/MNI/roi/nsdgeneral.nii.gz   -1 outside the brain, 0 / 1 the ROI
    nsddata/ppdata/subjXX/MNI/roi/simareas.nii.gz     the simulator's area labels (0 none)
    nsddata/experiments/nsd/nsd_expdesign.mat         masterordering, subjectim, sharedix (1-based)
    nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5      imgBrick (n_stimuli, H, W, 3) uint8

Trial betas are the simulator's trials with a per-session, per-voxel gain and offset
(as real sessions drift), in percent signal change: z-scoring each session, as NSD
users do, gives back the simulated responses up to the repeat averaging.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from napari_nrf.errors import atomic_write

from .. import space
from .subjects import SimulationError, subject_from_meta

BETAS = "nsddata_betas/ppdata/{subj}/MNI/betas_fithrf_GLMdenoise_RR"
ROI = "nsddata/ppdata/{subj}/MNI/roi"
EXPDESIGN = "nsddata/experiments/nsd/nsd_expdesign.mat"
STIMULI = "nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5"
PSC_PER_UNIT = 1.5  # percent signal change of one (about z-scored) response unit


def _trials_per_session(n_trials: int, max_per_session: int = 750) -> int:
    for t in range(min(max_per_session, n_trials), 0, -1):
        if n_trials % t == 0:
            return t
    return n_trials


def write_nsd_tree(response_sets, root, max_trials_per_session: int = 750, seed: int = 0, progress=None) -> Path:
    """Write response sets from :func:`~napari_nrf.simulate.simulate` (called with
    ``return_trials=True``) as an NSD-like tree under ``root``; returns ``root``.

    Every subject must have the same number of images and repeats (NSD's design has one
    ``masterordering`` for all subjects). ``progress(done, total)``: optional.
    """
    import h5py
    from scipy.io import savemat

    rs_list = list(response_sets)
    if not rs_list:
        raise SimulationError("no response sets to write")
    for r in rs_list:
        if "_trials" not in r.meta:
            raise SimulationError("write_nsd_tree needs the trials: call simulate(..., return_trials=True)")
    n, reps = rs_list[0].meta["_trials"].shape[:2]
    if any(r.meta["_trials"].shape[:2] != (n, reps) for r in rs_list):
        raise SimulationError("every subject needs the same number of images and repeats for an NSD-like tree")
    root = Path(root)
    rng = np.random.default_rng([int(seed), 21])
    # One trial order for every subject: each image index appears `reps` times.
    order = rng.permutation(np.repeat(np.arange(n), reps))
    n_trials = order.size
    per = _trials_per_session(n_trials, max_trials_per_session)
    # Stimulus brick: every stimulus id any subject saw (ids are 0..max).
    n_stim = int(max(r.image_ids.max() for r in rs_list)) + 1
    first = rs_list[0].images
    brick = np.zeros((n_stim,) + tuple(np.asarray(first).shape[1:]), np.uint8)
    for r in rs_list:
        brick[r.image_ids] = np.asarray(r.images)
    _write_h5(root / STIMULI, {"imgBrick": brick})
    subjectim = np.stack([r.image_ids + 1 for r in rs_list]).astype(np.float64)
    shared = np.flatnonzero(rs_list[0].split == 2)
    design = {"masterordering": (order + 1)[None].astype(np.float64), "subjectim": subjectim,
              "sharedix": (rs_list[0].image_ids[shared] + 1)[None].astype(np.float64)}
    p = root / EXPDESIGN
    with atomic_write(p, "wb") as f:
        savemat(f, design)
    total = len(rs_list) * (n_trials // per)
    done = 0
    for si, r in enumerate(rs_list):
        subj = f"subj{si + 1:02d}"
        vs = subject_from_meta(r.meta)
        grid = vs.grid
        ijk, inside = grid.nearest_index(r.coords)
        if not inside.all():
            raise SimulationError(f"{r.subject}: voxels outside the subject's grid")
        flat = np.ravel_multi_index(ijk.T, grid.shape)
        brain = space.brain_mask(grid)
        roi = np.where(brain, 0, -1).astype(np.int16)
        roi.flat[flat] = 1
        space.save_nifti(roi, grid, root / ROI.format(subj=subj) / "nsdgeneral.nii.gz", dtype=np.int16)
        areas = np.zeros(grid.shape, np.int16)
        areas.flat[flat] = r.roi
        space.save_nifti(areas, grid, root / ROI.format(subj=subj) / "simareas.nii.gz", dtype=np.int16)
        (root / ROI.format(subj=subj) / "simareas.json").write_text(json.dumps({str(k): v for k, v in r.roi_names.items()}))
        trials = r.meta["_trials"]  # (n, reps, V)
        seen = np.zeros(n, np.int64)
        rep_of = np.empty(n_trials, np.int64)
        for t, i in enumerate(order):
            rep_of[t] = seen[i]
            seen[i] += 1
        srng = np.random.default_rng([int(seed), si, 22])
        for s in range(n_trials // per):
            sl = slice(s * per, (s + 1) * per)
            vals = trials[order[sl], rep_of[sl]]  # (per, V)
            gain = srng.uniform(0.8, 1.25, r.n_voxels).astype(np.float32)
            offset = srng.normal(0.3, 0.5, r.n_voxels).astype(np.float32)
            psc = (vals * gain + offset) * PSC_PER_UNIT
            vol = np.zeros((grid.n_points, per), np.int16)
            vol[flat] = np.clip(np.rint(psc * 300), -32767, 32767).astype(np.int16).T
            space.save_nifti(vol.reshape(grid.shape + (per,)), grid,
                             root / BETAS.format(subj=subj) / f"betas_session{s + 1:02d}.nii", dtype=np.int16)
            done += 1
            if progress is not None:
                progress(done, total)
    return root


def _write_h5(path: Path, arrays: dict):
    import h5py

    with atomic_write(path, None) as tmp, h5py.File(tmp, "w") as f:
        for k, v in arrays.items():
            f.create_dataset(k, data=v, chunks=(1,) + v.shape[1:] if v.ndim > 1 else True)
