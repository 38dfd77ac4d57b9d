"""Peak memory of the NSD importer on an NSD-like tree (issue 6).

Builds an NSD-like tree in the official layout -- ``--subjects`` x ``--sessions`` sessions
of ``--trials`` int16 single-trial betas (x 300) on FSL's MNI152 grid at ``--resolution``
mm (91 x 109 x 91 at 2 mm), zero outside the brain as in NSD, an nsdgeneral-like ROI
(the posterior half of nilearn's grey-matter mask), ``nsd_expdesign.mat`` with NSD's
structure (30,000 trials, 10,000 images per subject, 1,000 shared) and a 73k ``imgBrick``
of tiny 16 x 16 images (the image copy streams 32 images at a time, so the image size
does not change the peak) -- then runs ``napari-nrf import-nsd`` in a child process per
repeat and reports the child's peak RSS against one session's int16 betas + 2 GB.

To keep disk and time bounded, the distinct session files are shared between subjects by
hard links (every subject still reads and decompresses its own 10 sessions).

    .venv/bin/python benchmarks/bench_import_nsd.py --repeats 3            # full size
    .venv/bin/python benchmarks/bench_import_nsd.py --tiny                 # seconds (tests)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def build_tree(root: Path, n_subjects: int, n_sessions: int, n_trials: int, resolution: float,
               n_brick: int = 73000, n_images: int = 10000, n_shared: int = 1000, seed: int = 0,
               verbose: bool = True) -> dict:
    import h5py
    import nibabel as nib
    from scipy.io import savemat

    from napari_nrf import space
    from napari_nrf.data import nsd

    rng = np.random.default_rng(seed)
    grid = space.Grid.mni(resolution)
    # FSL's orientation on disk: negative x step (the importer must flip it back).
    aff = grid.affine.copy()
    aff[0, 0] = -grid.zooms[0]
    aff[0, 3] = grid.origin[0] + (grid.shape[0] - 1) * grid.zooms[0]

    def save(data, path):
        img = nib.Nifti1Image(data[::-1], aff)  # canonical array -> file order (x flipped)
        img.set_sform(aff, code=4)
        img.set_qform(aff, code=4)
        path.parent.mkdir(parents=True, exist_ok=True)
        nib.save(img, str(path))

    brain = space.brain_mask(grid)
    roi = np.where(brain, 0, -1).astype(np.int16)
    gm = space.gm_mask(grid)
    yy = grid.coords()[:, 1].reshape(grid.shape)
    roi[gm & (yy < -40)] = 1  # nsdgeneral-like: posterior grey matter
    shared = rng.choice(n_brick, n_shared, replace=False)
    pool = rng.permutation(np.setdiff1d(np.arange(n_brick), shared))
    subjectim = np.stack([np.concatenate([shared, pool[s * (n_images - n_shared):(s + 1) * (n_images - n_shared)]])
                          for s in range(8)])
    order = np.tile(np.arange(n_images), 3)
    rng.shuffle(order)
    p = root / nsd.EXPDESIGN
    p.parent.mkdir(parents=True, exist_ok=True)
    savemat(str(p), {"masterordering": (order + 1)[None].astype(np.float64),
                     "subjectim": (subjectim + 1).astype(np.float64),
                     "sharedix": (np.sort(shared) + 1)[None].astype(np.float64)})
    p = root / nsd.STIMULI
    p.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(p, "w") as f:
        d = f.create_dataset("imgBrick", (n_brick, 16, 16, 3), "u1", chunks=(64, 16, 16, 3))
        for s in range(0, n_brick, 8192):
            d[s:s + 8192] = rng.integers(0, 256, (min(8192, n_brick - s), 16, 16, 3), dtype=np.uint8)
    pool_dir = root / "_session_pool"
    n_brain = int(brain.sum())
    for ses in range(1, n_sessions + 1):
        t0 = time.perf_counter()
        vol = np.zeros(grid.shape + (n_trials,), np.int16)
        vol[brain] = np.clip(rng.normal(0, 1.5, (n_brain, n_trials)) * 300, -32000, 32000).astype(np.int16)
        save(vol, pool_dir / f"betas_session{ses:02d}.nii.gz")
        del vol
        if verbose:
            print(f"  session file {ses}: {time.perf_counter() - t0:.1f} s", flush=True)
    for s in range(1, n_subjects + 1):
        subj = f"subj{s:02d}"
        save(roi, root / nsd.ROI_DIR.format(subj=subj) / "nsdgeneral.nii.gz")
        bdir = root / nsd.BETAS_DIR.format(subj=subj, betas=nsd.DEFAULT_BETAS)
        bdir.mkdir(parents=True, exist_ok=True)
        for ses in range(1, n_sessions + 1):
            os.link(pool_dir / f"betas_session{ses:02d}.nii.gz", bdir / f"betas_session{ses:02d}.nii.gz")
    return {"grid": repr(grid), "roi_voxels": int((roi > 0).sum()), "brain_voxels": n_brain,
            "session_int16_bytes": int(np.prod(grid.shape)) * n_trials * 2,
            "session_file_bytes": (pool_dir / "betas_session01.nii.gz").stat().st_size}


def run_import(root: Path, out: Path, n_subjects: int) -> tuple[float, float]:
    """Run the CLI in a child process; returns (wall seconds, child peak RSS in bytes)."""
    code = ("import resource, sys, time; from napari_nrf.cli import main; t = time.perf_counter(); "
            f"rc = main(['import-nsd', {str(root)!r}, '--out', {str(out)!r}, '--subjects', "
            f"{', '.join(repr(str(s)) for s in range(1, n_subjects + 1))}]); "
            "print('WALL', time.perf_counter() - t); "
            # VmHWM, not ru_maxrss: Linux keeps ru_maxrss across fork + exec, so the child
            # would report the tree builder's peak; VmHWM belongs to the new address space.
            "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]; "
            "print('PEAK', int(hwm.split()[1]) * 1024); sys.exit(rc)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"import failed:\n{res.stdout}\n{res.stderr}")
    vals = dict(line.split() for line in res.stdout.splitlines() if line.startswith(("WALL", "PEAK")))
    return float(vals["WALL"]), float(vals["PEAK"])


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subjects", type=int, default=4)
    ap.add_argument("--sessions", type=int, default=10)
    ap.add_argument("--trials", type=int, default=750)
    ap.add_argument("--resolution", type=float, default=2.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workdir", help="where to build the tree (default: a temporary folder, removed); "
                                      "an existing tree there (with tree.json) is reused")
    ap.add_argument("--tiny", action="store_true", help="2 subjects x 2 sessions x 40 trials at 8 mm (seconds)")
    args = ap.parse_args(argv)
    if args.tiny or os.environ.get("NRF_EXAMPLE_TINY") == "1":
        args.subjects, args.sessions, args.trials, args.resolution, args.repeats = 2, 2, 40, 8.0, 1
    tmp = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="nrf_bench_nsd_"))
    try:
        root = tmp / "nsd"
        t0 = time.perf_counter()
        if (tmp / "tree.json").exists():
            info = json.loads((tmp / "tree.json").read_text())
            print(f"reusing the tree in {tmp}: {json.dumps(info)}", flush=True)
        else:
            info = build_tree(root, args.subjects, args.sessions, args.trials, args.resolution,
                              n_brick=2000 if args.tiny else 73000, n_images=100 if args.tiny else 10000,
                              n_shared=10 if args.tiny else 1000, verbose=not args.tiny)
            (tmp / "tree.json").write_text(json.dumps(info))
            print(f"tree built in {time.perf_counter() - t0:.0f} s: {json.dumps(info)}", flush=True)
        walls, peaks = [], []
        for r in range(args.repeats):
            out = tmp / f"out{r}"
            wall, peak = run_import(root, out, args.subjects)
            walls.append(wall)
            peaks.append(peak)
            print(f"repeat {r + 1}: {wall:.1f} s, peak RSS {peak / 2 ** 30:.2f} GiB", flush=True)
            shutil.rmtree(out)
        limit = info["session_int16_bytes"] + 2 * 2 ** 30
        result = {**info, "subjects": args.subjects, "sessions": args.sessions, "trials": args.trials,
                  "resolution_mm": args.resolution, "repeats": args.repeats,
                  "median_wall_s": float(np.median(walls)), "median_peak_rss_bytes": float(np.median(peaks)),
                  "max_peak_rss_bytes": float(np.max(peaks)), "limit_bytes": limit,
                  "within_limit": bool(np.max(peaks) < limit)}
        print(json.dumps(result, indent=1))
        return result
    finally:
        if not args.workdir:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
