"""Import NSD subjects into response sets and look at what came in.

Reads an NSD root in the official layout (MNI betas_fithrf_GLMdenoise_RR, nsdgeneral,
nsd_expdesign.mat, nsd_stimuli.hdf5) one session at a time, writes ``subjXX.h5`` response
sets, prints a summary and saves the noise-ceiling map as a NIfTI on the betas' grid
(open it in napari with the MNI152 sample to check the placement).

    .venv/bin/python examples/import_nsd.py --root /data/nsd --subjects 1 2 --image-size 224

With ``NRF_EXAMPLE_TINY=1`` (or no ``--root``) it first writes a tiny NSD-like tree
(2 subjects x 2 sessions x 40 trials at 8 mm) with the benchmark's tree builder.
Output folder: ``$NRF_EXAMPLE_OUT`` or the current folder.
"""

import argparse
import importlib.util
import os
from pathlib import Path

import numpy as np

from napari_nrf import space
from napari_nrf.data.nsd import import_nsd
from napari_nrf.data.responseset import ResponseSet


def tiny_tree(root: Path) -> None:
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_import_nsd.py"
    spec = importlib.util.spec_from_file_location("bench_import_nsd", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.build_tree(root, n_subjects=2, n_sessions=2, n_trials=40, resolution=8.0, n_brick=2000,
                     n_images=100, n_shared=10, verbose=False)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", help="NSD root folder (default: a tiny synthetic tree)")
    ap.add_argument("--subjects", nargs="+", default=["1", "2"])
    ap.add_argument("--roi", default="nsdgeneral")
    ap.add_argument("--image-size", type=int, help="resize the stored images (NSD: 425 px)")
    args = ap.parse_args()
    out = Path(os.environ.get("NRF_EXAMPLE_OUT", "."))
    root = Path(args.root) if args.root else None
    if root is None or os.environ.get("NRF_EXAMPLE_TINY") == "1":
        root = out / "nsd_tiny"
        tiny_tree(root)

    paths = import_nsd(root, args.subjects, out, roi=args.roi, image_size=args.image_size, progress=True)
    for p in paths:
        rs = ResponseSet.load(p, lazy=True)
        n_test = int((rs.split == 2).sum())
        print(f"{rs.subject}: {rs.n_images} images ({n_test} shared/test) x {rs.n_voxels} voxels, "
              f"{rs.meta['n_dropped_voxels']} invalid voxels dropped, repeats {rs.meta['repeats']}")
        if rs.noise_ceiling is not None:
            print(f"  noise ceiling median {np.median(rs.noise_ceiling):.1f} %")
            g = rs.meta["grid"]
            grid = space.Grid(g["shape"], g["origin"], g["zooms"])
            vol = space.points_to_volume(rs.coords, rs.noise_ceiling, grid, fill=0.0)
            print("  wrote", space.save_nifti(vol, grid, out / f"{rs.subject}_noise_ceiling.nii.gz"))
        rs.close()


if __name__ == "__main__":
    main()
