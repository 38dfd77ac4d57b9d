"""Generic importer: betas as NIfTI on any MNI grid + a mask + a CSV -> a response set.

Inputs
------
betas
    One 4D NIfTI (X, Y, Z, T), one volume per trial, or a list of T 3D NIfTI files, on an
    axis-aligned MNI grid at any resolution (FSL's or nilearn's grids, any orientation
    that is a flip/permutation of RAS+). Oblique affines and headers that say scanner or
    Talairach space are refused with a clear error (``assume_mni=True`` trusts the
    header's space but still refuses oblique grids).
mask
    A NIfTI on the same grid; non-zero voxels are imported and their integer labels kept
    as the ROI labels. A mask on another MNI grid is an error unless
    ``resample_mask=True`` (nearest-neighbour resampling onto the betas' grid).
events
    A CSV file with a header row and the columns ``volume`` (0-based index of the volume
    in the 4D file or in the list of 3D files), ``image`` (path of the stimulus; relative
    paths are relative to the CSV's folder) and optionally ``session``. Volumes not listed
    are ignored (e.g. blank trials).

Processing (as for NSD): per session, every voxel is z-scored over the session's listed
trials; repeats of the same image path are averaged; voxels with non-finite or constant
values in any session are dropped and counted (``meta["n_dropped_voxels"]``). Rows are
the unique image paths in sorted order (``image_ids`` 0..N-1). Only one session's masked
betas are in memory at a time; the per-session partial files make an interrupted import
resume where it stopped.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from napari_nrf.errors import NapariNRFError

from ._importing import (ImportDataError, PartialStore, Progress, ResponseSetWriter, assemble, assign_split,
                         file_signature, fingerprint, resting_maps, zscore_session)


class NiftiImportError(ImportDataError):
    """Inputs of the generic NIfTI importer are missing or inconsistent."""


def read_events(path) -> tuple[np.ndarray, list[str], list[str]]:
    """Read the events CSV -> ``(volume (T,) int64, image paths (T,), session labels (T,))``.

    Relative image paths are resolved against the CSV's folder. Without a ``session``
    column every row is in session "1".
    """
    import io

    from napari_nrf.guards import read_text_table

    path = Path(path)
    if not path.exists():
        raise NiftiImportError(f"events CSV not found: {path}")
    text = read_text_table(path, "events CSV")  # a BOM or Latin-1 (Excel's exports) handled
    with io.StringIO(text, newline="") as f:
        reader = csv.DictReader(f)
        cols = [c.strip().lower() for c in (reader.fieldnames or [])]
        if "volume" not in cols or "image" not in cols:
            raise NiftiImportError(
                f"{path.name} needs a header row with the columns 'volume' and 'image' (and optionally "
                f"'session'); found {reader.fieldnames}"
            )
        key = {c.strip().lower(): c for c in reader.fieldnames}
        vols, imgs, sess = [], [], []
        for line, row in enumerate(reader, start=2):
            v, im = (row.get(key["volume"]) or "").strip(), (row.get(key["image"]) or "").strip()
            if not v and not im:
                continue
            try:
                vol = int(v)
            except ValueError:
                raise NiftiImportError(f"{path.name} line {line}: volume {v!r} is not an integer") from None
            if vol < 0:
                raise NiftiImportError(f"{path.name} line {line}: volume {vol} is negative (volumes count from 0)")
            if not im:
                raise NiftiImportError(f"{path.name} line {line}: empty image path")
            p = Path(im)
            imgs.append(str(p if p.is_absolute() else (path.parent / p).resolve()))
            vols.append(vol)
            s = (row.get(key["session"]) or "1").strip() if "session" in key else "1"
            sess.append(s or "1")
    if not vols:
        raise NiftiImportError(f"{path.name} lists no trials")
    vols = np.asarray(vols, np.int64)
    uniq, counts = np.unique(vols, return_counts=True)
    if (counts > 1).any():
        raise NiftiImportError(f"{path.name}: volume {int(uniq[counts > 1][0])} is listed more than once")
    return vols, imgs, sess


class _Volumes:
    """One 4D NIfTI or a list of 3D files behind ``read(indices, mask) -> (n, V)``."""

    def __init__(self, betas, assume_mni: bool):
        from napari_nrf import space

        if isinstance(betas, (str, Path)):
            self.files = [space.NiftiVolumes(betas, assume_mni=assume_mni)]
            self.n = self.files[0].n_volumes
            self.files[0].close()  # header checked; read() reopens for each session
            self.is_4d = True
        else:
            paths = list(betas)
            if not paths:
                raise NiftiImportError("no betas files given")
            self.files = []
            for p in paths:
                v = space.NiftiVolumes(p, assume_mni=assume_mni)
                if v.n_volumes != 1:
                    raise NiftiImportError(f"{Path(p).name} has {v.n_volumes} volumes; a list of betas must be 3D files")
                if self.files and v.grid != self.files[0].grid:
                    raise NiftiImportError(f"{Path(p).name} is on {v.grid}, the first file on {self.files[0].grid}")
                v.close()
                self.files.append(v)
            self.n = len(paths)
            self.is_4d = False
        self.grid = self.files[0].grid
        self.signature = [file_signature(f.path) for f in self.files]

    def read(self, indices: np.ndarray, mask: np.ndarray, chunk: int, tick) -> np.ndarray:
        """(len(indices), V) float32 of the volumes ``indices`` (any order), ``chunk`` at a time."""
        from napari_nrf import space

        out = np.empty((indices.size, int(mask.sum())), np.float32)
        order = np.argsort(indices)
        srt = indices[order]
        if self.is_4d:
            vol = space.NiftiVolumes(self.files[0].path, assume_mni=True)  # header checked in __init__
            # Read contiguous runs of at most `chunk` volumes, forward through the file.
            i = 0
            while i < srt.size:
                lo = srt[i]
                j = i
                while j + 1 < srt.size and srt[j + 1] < lo + chunk:
                    j += 1
                block = vol.read(int(lo), int(srt[j]) + 1, mask=mask)
                out[order[i:j + 1]] = block[srt[i:j + 1] - lo]
                tick(j + 1 - i)
                i = j + 1
            vol.close()
        else:
            for k, idx in enumerate(srt):
                vol = space.NiftiVolumes(self.files[idx].path, assume_mni=True)
                out[order[k]] = vol.read(0, 1, mask=mask)[0]
                vol.close()
                tick(1)
        return out


def _session_key(label: str, k: int) -> str:
    safe = re.sub(r"[^A-Za-z0-9_-]+", "_", label)[:40]
    return f"{k:03d}-{safe}"


MIN_STORE_IMAGES, MAX_STORE_IMAGES = 1, 2048


def import_nifti(betas, mask, events, out, subject: str = "sub-01", resample_mask: bool = False,
                 assume_mni: bool = False, test_images: Sequence[str] | None = None, test_fraction: float = 0.1,
                 val_fraction: float = 0.1, seed: int = 0, store_images: int | None = None, chunk: int = 50,
                 work_dir=None, keep_work: bool = False, progress=None, rest=None, rest_sessions=None,
                 rest_tr: float | None = None, rest_seed="pcc", rest_band="default") -> Path:
    """Import betas + mask + events CSV into a response set at ``out`` (HDF5); returns the path.

    Parameters
    ----------
    betas : path or list of paths
        A 4D NIfTI, or 3D NIfTI files (one per volume, in volume order).
    mask : path
        Mask/label NIfTI (non-zero voxels kept, labels stored as ``roi``).
    events : path
        CSV with columns ``volume`` (0-based), ``image`` and optional ``session``.
    out : path
        Output ``.h5`` response set.
    resample_mask : bool
        Resample a mask on another MNI grid by nearest neighbour (else an error).
    assume_mni : bool
        Trust the files to be in MNI space whatever the header's sform/qform code says.
    test_images : list of str, optional
        Image paths that form the test split (default: a random ``test_fraction``).
    val_fraction, seed
        Random validation share of the remaining images.
    store_images : int, optional
        Store the images as (N, S, S, 3) uint8 pixels resized to S (default: store paths).
    chunk : int
        Volumes read at once.
    progress : None, True (tqdm bar) or callable(done, total)
    rest : list of paths, optional
        Resting-state BOLD runs (4D, MNI, e.g. BIDS ``*_task-rest_bold.nii.gz``): a seed
        rest map per session (labels from ``ses-XX`` in the names, or ``rest_sessions``;
        runs of one session averaged) stored as the response set's ``/rest`` group, as
        ``attach-rest`` does. ``rest_tr`` (s; default each header's), ``rest_seed``,
        ``rest_band`` as :func:`napari_nrf.data.restmap.rest_map`. Every run's header is checked
        and the maps are made before the betas are read; an error leaves no output.
    """
    from napari_nrf import space
    from napari_nrf.features.images import probe_image_file

    if store_images is not None and not MIN_STORE_IMAGES <= int(store_images) <= MAX_STORE_IMAGES:
        raise NiftiImportError(f"--store-images {store_images}: the stored image size must be "
                               f"{MIN_STORE_IMAGES}..{MAX_STORE_IMAGES} px (NSD's stimuli are 425 px)")
    vols, img_paths, sess = read_events(events)
    src = _Volumes(betas, assume_mni)
    if vols.max() >= src.n:
        raise NiftiImportError(
            f"the events CSV refers to volume {int(vols.max())} but the betas have {src.n} volumes (0..{src.n - 1})"
        )
    grid = src.grid
    labels, mgrid = space.load_nifti(mask, assume_mni=assume_mni)
    labels = np.asarray(labels)
    if labels.ndim == 4 and labels.shape[3] == 1:
        labels = labels[..., 0]
    if labels.ndim != 3:
        raise NiftiImportError(f"the mask should be a 3D NIfTI, got shape {labels.shape}")
    if mgrid != grid:
        if not resample_mask:
            raise NiftiImportError(
                f"the mask is on another grid than the betas ({mgrid} vs {grid}); pass resample_mask=True "
                "(--resample-mask) to resample it by nearest neighbour, or give a mask on the betas' grid"
            )
        labels = space.resample(labels, mgrid, grid, order=0)
    labels = np.rint(np.nan_to_num(labels.astype(np.float64))).astype(np.int32)
    m = labels != 0
    n_mask = int(m.sum())
    if n_mask == 0:
        raise NiftiImportError("the mask selects no voxel of the betas' grid")

    missing = [p for p in dict.fromkeys(img_paths) if not Path(p).exists()]
    if missing:
        raise NiftiImportError(f"{len(missing)} image file(s) listed in the events CSV do not exist, e.g. {missing[0]}")
    uniq_paths = sorted(set(img_paths))
    unreadable = [(p, why) for p in uniq_paths for why in [probe_image_file(p)] if why]
    if unreadable:  # found now, not when training fails on them later
        p, why = unreadable[0]
        raise NiftiImportError(f"{len(unreadable)} image file(s) listed in the events CSV cannot be read as images, "
                               f"e.g. {p} ({why})")
    if store_images:
        import shutil

        need = len(uniq_paths) * int(store_images) ** 2 * 3
        parent = next(q for q in Path(out).absolute().parents if q.exists())
        free = shutil.disk_usage(parent).free
        if need > free:
            raise NiftiImportError(f"--store-images {store_images}: {len(uniq_paths)} images need {need / 2 ** 30:.1f} GiB, "
                                   f"{parent} has {free / 2 ** 30:.1f} GiB free; choose a smaller size or store paths")
    path_id = {p: i for i, p in enumerate(uniq_paths)}
    stim = np.array([path_id[p] for p in img_paths], np.int64)
    rest_set, rest_meta = resting_maps(rest, rest_sessions, t_r=rest_tr, seed=rest_seed, band=rest_band,
                                       progress=progress)

    labels_order = list(dict.fromkeys(sess))
    keys = [_session_key(s, k) for k, s in enumerate(labels_order)]
    out = Path(out)
    store = PartialStore(work_dir if work_dir is not None else out.with_name(out.name + ".parts"))
    settings = dict(betas=src.signature, mask=file_signature(mask), resample=resample_mask, n_mask=n_mask,
                    events=file_signature(events))
    try:
        with Progress(progress, total=vols.size + 1, desc=f"{subject} volumes") as bar:
            for label, key in zip(labels_order, keys):
                rows = np.flatnonzero(np.asarray(sess) == label)
                if rows.size < 2:
                    raise NiftiImportError(f"session {label!r} has {rows.size} trial; z-scoring needs at least 2")
                fp = fingerprint(session=label, rows=rows.tolist(), **settings)
                if store.is_done(key, fp):
                    bar.update(rows.size, desc=f"session {label} (done before)")
                    continue
                b = src.read(vols[rows], m, chunk, lambda n: bar.update(n, desc=f"session {label}"))
                z, invalid = zscore_session(b)
                store.save(key, fp, z, stim[rows], invalid, session=label)
                del b, z

            invalid_any = np.zeros(n_mask, bool)
            for key in keys:
                invalid_any[store.load(key)[1]["invalid"]] = True
            if invalid_any.all():
                raise NiftiImportError("every mask voxel is constant or non-finite in some session; nothing to import")

            writer, stim_ids, counts, nc = assemble(store, keys, lambda n, v, c: ResponseSetWriter(out, n, v, subject, c),
                                                    ~invalid_any)
            with writer:
                paths = [uniq_paths[i] for i in stim_ids]
                if store_images:
                    from napari_nrf.features.images import load_image_file
                    from PIL import Image

                    s = int(store_images)
                    dst = writer.create_images((s, s, 3))
                    for k, p in enumerate(paths):
                        dst[k] = np.asarray(Image.fromarray(load_image_file(p)).resize((s, s), Image.BICUBIC))
                else:
                    writer.set_image_paths(paths)
                test_ids = None
                if test_images is not None:
                    wanted = {str(Path(t).resolve()) for t in test_images}
                    test_ids = [i for i, p in zip(stim_ids, paths) if str(Path(p).resolve()) in wanted]
                    if not test_ids:
                        raise NiftiImportError("none of the test images appears in the events CSV")
                split = assign_split(stim_ids, test_ids=test_ids, val_fraction=val_fraction, seed=seed,
                                     test_fraction=0.0 if test_images is not None else test_fraction)
                roi = labels[m][~invalid_any]
                meta = {
                    "source": "nifti", "betas": [s["path"] for s in src.signature], "mask": str(mask),
                    "events": str(events), "sessions": labels_order, "n_trials": int(vols.size),
                    "n_mask_voxels": n_mask, "n_dropped_voxels": int(invalid_any.sum()),
                    "repeats": {str(k): int(v) for k, v in zip(*np.unique(counts, return_counts=True))},
                    "grid": {"shape": list(grid.shape), "zooms": grid.zooms.tolist(), "origin": grid.origin.tolist()},
                    "image_ids": "index into the sorted unique image paths",
                    "val_fraction": val_fraction, "test_fraction": test_fraction, "seed": seed,
                }
                if rest_meta is not None:
                    meta["rest"] = rest_meta
                path = writer.finish(grid.coords(m)[~invalid_any], split, stim_ids, roi=roi,
                                     roi_names={int(v): f"label-{int(v)}" for v in np.unique(roi)}, noise_ceiling=nc,
                                     meta=meta, commit=True, rest=rest_set)
            bar.update(1, desc=f"{subject} written")
    except NapariNRFError as exc:  # a refusal of the inputs: nothing of this import stays
        from napari_nrf.guards import ResourceError

        if not isinstance(exc, ResourceError):  # (a full disk: finished sessions stay for the rerun)
            store.remove(keys)
        store.clean_unfinished()
        raise
    except BaseException:  # a failure or Ctrl-C: keep finished sessions only (a rerun resumes)
        store.clean_unfinished()
        raise
    if not keep_work:
        store.remove(keys)
    return path
