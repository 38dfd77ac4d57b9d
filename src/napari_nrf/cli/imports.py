"""Importer subcommands: ``import-nsd``, ``import-nifti`` and ``import-official-nrf``."""

from __future__ import annotations

from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser(
        "import-nsd", help="NSD MNI betas (official layout) -> one response set per subject",
        description="Read single-trial MNI betas of the Natural Scenes Dataset one session at a time, z-score "
                    "them per session, average repeats, keep an ROI and write OUT/subjXX.h5. Interrupted imports "
                    "resume from the finished sessions.")
    p.add_argument("root", help="NSD root folder (contains nsddata/, nsddata_betas/, nsddata_stimuli/)")
    p.add_argument("--subjects", nargs="+", default=["1"], help="subjects, e.g. 1 2 or subj01 (default: 1)")
    p.add_argument("--out", required=True, help="output folder for subjXX.h5")
    p.add_argument("--roi", default="nsdgeneral", help="ROI name in subjXX/MNI/roi or a label NIfTI (default: nsdgeneral)")
    p.add_argument("--roi-values", type=int, nargs="+", help="labels to keep (default: every label > 0)")
    p.add_argument("--sessions", type=int, nargs="+", help="1-based sessions to import (default: all found)")
    p.add_argument("--betas", default="betas_fithrf_GLMdenoise_RR", help="betas version folder")
    p.add_argument("--val-fraction", type=float, default=0.1, help="validation share of non-shared images")
    p.add_argument("--seed", type=int, default=0, help="random seed of the validation split (default: %(default)s)")
    p.add_argument("--image-size", type=int, help="resize stored images to this square size (default: as is)")
    p.add_argument("--chunk", type=int, default=50, help="volumes read at once")
    p.add_argument("--keep-work", action="store_true", help="keep the per-session partial files")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--rest", action="store_true",
                   help="also make a rest map per session from the subject's resting runs: "
                        "nsddata_timeseries/ppdata/subjXX/MNI/timeseries/timeseries_sessionNN_runMM.nii.gz whose design "
                        "file (design_sessionNN_runMM.tsv) is all zeros (docs/importers.md)")
    g.add_argument("--rest-glob", metavar="PATTERN",
                   help="resting runs from files matching PATTERN under ROOT ({subj} -> subjXX), e.g. "
                        "'rest/{subj}/*_task-rest_bold.nii.gz'")
    _rest_args(p)
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(func=_import_nsd)

    p = sub.add_parser(
        "import-nifti", help="4D NIfTI (or 3D files) of betas + mask + CSV -> a response set",
        description="Betas on any axis-aligned MNI grid, one volume per trial, a mask NIfTI and a CSV with "
                    "columns volume,image[,session]: z-scores per session, averages repeats of an image.")
    p.add_argument("betas", nargs="+", help="a 4D NIfTI, or several 3D NIfTI files (one per volume, in order)")
    p.add_argument("--mask", required=True, help="mask or label NIfTI (non-zero = kept)")
    p.add_argument("--events", required=True, help="CSV with columns volume,image[,session]")
    p.add_argument("--out", required=True, help="output response set (.h5)")
    p.add_argument("--subject", default="sub-01", help="subject name stored in the response set (default: %(default)s)")
    p.add_argument("--resample-mask", action="store_true", help="resample a mask on another MNI grid (nearest)")
    p.add_argument("--assume-mni", action="store_true", help="trust the files to be MNI whatever their header says")
    p.add_argument("--test-images", help="text file of image paths (one a line) for the test split")
    p.add_argument("--test-fraction", type=float, default=0.1, help="random test share when no --test-images")
    p.add_argument("--val-fraction", type=float, default=0.1, help="validation share of the training images (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the validation split (default: %(default)s)")
    p.add_argument("--store-images", type=int, metavar="SIZE",
                   help="store the images as pixels, resized to SIZE x SIZE (default: store their paths)")
    p.add_argument("--chunk", type=int, default=50, help="volumes read at once (default: %(default)s)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--rest", nargs="+", metavar="RUN",
                   help="resting-state BOLD runs (4D, MNI), e.g. sub-01_ses-01_task-rest_bold.nii.gz: a rest map per "
                        "session (ses-XX from the names) stored with the responses")
    g.add_argument("--rest-glob", metavar="PATTERN", help="resting runs matching PATTERN, e.g. "
                                                           "'sub-01/ses-*/func/*_task-rest_bold.nii.gz'")
    p.add_argument("--rest-sessions", nargs="+", metavar="LABEL", help="session labels of the resting runs "
                                                                        "(default: ses-XX from their names)")
    _rest_args(p)
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    p.set_defaults(func=_import_nifti)

    p = sub.add_parser(
        "import-official-nrf", help="an official NRF run (haomiao8/NRF checkpoints) -> a napari-nrf bundle",
        description="Read best_model/best_NRF_model.pth.tar, best_model/best_feature_merger.pth.tar, B.npy and "
                    "the YAML config of a run of the official NRF code (torch.load with weights_only=True) and "
                    "write one .safetensors bundle.")
    p.add_argument("run_dir", help="the official run folder")
    p.add_argument("--out", required=True, help="output bundle (.safetensors)")
    p.add_argument("--config", help="the run's YAML config (default: the one .yaml/.yml file found in RUN_DIR)")
    p.add_argument("--coords", help="a response set (.h5) or NIfTI mask whose voxels become the bundle's subject")
    p.add_argument("--subject", default="sub-01", help="subject name for --coords")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    p.set_defaults(func=_import_official)


def _rest_args(p) -> None:
    p.add_argument("--rest-tr", type=float, help="TR of the resting runs in s (default: each header's)")
    p.add_argument("--rest-seed", default="pcc", help="rest-map seed: pcc or a seed mask NIfTI (default: %(default)s)")
    p.add_argument("--rest-band", default="0.01,0.1", help="rest-map band-pass in Hz (default: %(default)s)")


def _rest_kwargs(args, files) -> dict:
    from napari_nrf.cli.rest2visual import _band

    if files is None:
        return {}
    return {"rest": files, "rest_tr": args.rest_tr, "rest_seed": args.rest_seed, "rest_band": _band(args.rest_band)}


def _import_nsd(args) -> int:
    from napari_nrf.data.nsd import import_nsd

    rest = "nsd" if args.rest else args.rest_glob
    paths = import_nsd(args.root, args.subjects, args.out, roi=args.roi, roi_values=args.roi_values,
                       sessions=args.sessions, betas=args.betas, val_fraction=args.val_fraction, seed=args.seed,
                       image_size=args.image_size, chunk=args.chunk, keep_work=args.keep_work, progress=True,
                       **_rest_kwargs(args, rest))
    _summary(paths)
    return 0


def _import_nifti(args) -> int:
    from napari_nrf.data.nifti_import import import_nifti

    test_images = None
    if args.test_images:
        from napari_nrf.guards import read_text_table

        text = read_text_table(args.test_images, "--test-images")
        test_images = [ln.strip() for ln in text.splitlines() if ln.strip()]
    betas = args.betas[0] if len(args.betas) == 1 else args.betas
    rest = args.rest
    if args.rest_glob:
        import glob

        from napari_nrf.data.nifti_import import NiftiImportError

        rest = sorted(glob.glob(args.rest_glob))
        if not rest:
            raise NiftiImportError(f"no file matches --rest-glob {args.rest_glob!r}")
    path = import_nifti(betas, args.mask, args.events, args.out, subject=args.subject,
                        resample_mask=args.resample_mask, assume_mni=args.assume_mni, test_images=test_images,
                        test_fraction=args.test_fraction, val_fraction=args.val_fraction, seed=args.seed,
                        store_images=args.store_images, chunk=args.chunk, progress=True,
                        rest_sessions=args.rest_sessions, **_rest_kwargs(args, rest))
    _summary([path])
    return 0


def _import_official(args) -> int:
    from napari_nrf.models.official import convert_official_nrf

    path = convert_official_nrf(args.run_dir, args.out, config=args.config, coords=args.coords,
                                subject=args.subject, progress=True)
    print(f"wrote {path}")
    return 0


def _summary(paths) -> None:
    from napari_nrf.data.responseset import ResponseSet

    for p in paths:
        rs = ResponseSet.load(p, lazy=True)
        try:
            n_test = int((rs.split == 2).sum())
            dropped = rs.meta.get("n_dropped_voxels", 0)
            rest = rs.rest_sessions
            print(f"wrote {p}: {rs.n_images} images ({n_test} test) x {rs.n_voxels} voxels"
                  + (f", {dropped} invalid voxels dropped" if dropped else "")
                  + (f", rest maps of {', '.join(rest)}" if rest else ""))
        finally:
            rs.close()
