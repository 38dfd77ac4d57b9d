"""``napari-nrf simulate``: write virtual-subject response sets (and an NSD-like tree)."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("simulate", help="simulate virtual subjects (ground-truth fMRI in MNI space)")
    p.add_argument("--subjects", type=int, default=4, help="number of subjects (default 4)")
    p.add_argument("--images", type=int, default=1000, help="images per subject (default 1000)")
    p.add_argument("--shared", type=int, default=None, help="images shared by all subjects = test split (default 10%%)")
    p.add_argument("--reps", type=int, default=3, help="repeats per image (default 3)")
    p.add_argument("--max-voxels", type=int, default=15000, help="voxels per subject (default 15000)")
    p.add_argument("--resolution", type=float, nargs="+", default=None,
                   help="voxel size(s) in mm, cycled over subjects (default 2.0 1.8)")
    p.add_argument("--snr", type=float, nargs="+", default=None, help="median ncsnr per subject")
    p.add_argument("--roi", nargs="+", default=None, help="keep only these areas, e.g. V1 FFA")
    p.add_argument("--image-size", type=int, default=96, help="stimulus size in pixels (default 96)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the virtual subjects (default: %(default)s)")
    p.add_argument("--workers", type=int, default=2, help="processes for the stimuli (default 2; same data with 1)")
    p.add_argument("--nsd-tree", action="store_true", help="also write an NSD-like file tree under OUT/nsd")
    p.add_argument("--out", required=True, help="output folder (sub-01.h5 ...)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from pathlib import Path

    from tqdm import tqdm

    from napari_nrf.simulate import simulate

    out = Path(args.out)
    bar = tqdm(total=1, desc="simulate", unit="step")

    def progress(done, total, msg=""):
        bar.total = total
        bar.n = done
        bar.set_postfix_str(msg)
        bar.refresh()

    rs = simulate(n_subjects=args.subjects, n_images=args.images, seed=args.seed, out=out, n_shared=args.shared,
                  n_reps=args.reps, max_voxels=args.max_voxels, resolution=args.resolution, snr=args.snr,
                  roi=args.roi, image_size=args.image_size, progress=progress,
                  return_trials=args.nsd_tree, workers=args.workers)
    bar.close()
    if args.nsd_tree:
        from napari_nrf.simulate.nsd_tree import write_nsd_tree

        write_nsd_tree(rs, out / "nsd")
    for r in rs:
        print(f"{out / (r.subject + '.h5')}: {r.n_images} images x {r.n_voxels} voxels, "
              f"median noise ceiling {float(_median(r.noise_ceiling)):.1f} %")
    return 0


def _median(a):
    import numpy as np

    return np.median(a)
