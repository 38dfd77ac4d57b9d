"""Rest2Visual subcommands: ``rest-map``, ``attach-rest``, ``simulate-rest``,
``train-rest2visual`` and ``evaluate-rest2visual`` (``query --rest-map`` is in ``nrf``)."""

from __future__ import annotations

from pathlib import Path

from napari_nrf.cli._output import STDOUT_JSON_HELP


def _band(text: str):
    from napari_nrf.errors import NapariNRFError

    if text.strip().lower() in ("none", ""):
        return None
    try:
        lo, hi = (float(v) if v.strip().lower() not in ("none", "") else None for v in text.split(","))
    except ValueError:
        raise NapariNRFError(f"--band {text!r}: give HIGHPASS,LOWPASS in Hz, e.g. 0.01,0.1") from None
    if lo is not None and hi is not None and not lo < hi:
        raise NapariNRFError(f"--band {text}: the high-pass ({lo} Hz) must be below the low-pass ({hi} Hz)")
    return lo, hi


def register(sub) -> None:
    from napari_nrf.cli.nrf import add_fit_args
    from napari_nrf.settings import REST2VISUAL_FIELD_FIT

    p = sub.add_parser("rest-map", help="a seed-based rest map (Rest2Visual's input) from a 4D resting BOLD NIfTI")
    p.add_argument("bold", help="4D resting-state BOLD NIfTI in MNI space (any axis-aligned grid)")
    p.add_argument("--tr", type=float, default=None, help="repetition time in s (default: the header's)")
    p.add_argument("--seed", default="pcc",
                   help="pcc (8 mm sphere at MNI 0,-52,18, nilearn's default-mode seed) or a seed mask NIfTI")
    p.add_argument("--band", default="0.01,0.1", help="band-pass HIGHPASS,LOWPASS in Hz, or none (default: %(default)s)")
    p.add_argument("--confounds", help="confounds TSV/CSV with a header row (fMRIPrep style), one row per volume")
    p.add_argument("--hrf", choices=["none", "spm", "glover"], default="none",
                   help="also convolve the seed series with the canonical HRF (the paper's step; default: none)")
    p.add_argument("--out", required=True, help="output rest map (.nii.gz)")
    p.set_defaults(func=_rest_map)

    p = sub.add_parser("attach-rest", help="store per-session rest maps in a response set (.h5), from rest maps "
                                           "or straight from resting BOLD runs (BIDS-like *_task-rest_bold.nii.gz)")
    p.add_argument("data", help="response set (.h5), rewritten with the maps")
    p.add_argument("maps", nargs="+", help="per session: a rest map NIfTI (3D) or a resting BOLD run (4D: its map "
                                           "is made as by rest-map, with --tr/--seed/--band)")
    p.add_argument("--sessions", nargs="+", help="session labels (default: ses-XX from BIDS names, else ses-01 ...)")
    p.add_argument("--tr", type=float, default=None, help="for BOLD runs: repetition time in s (default: header)")
    p.add_argument("--seed", default="pcc", help="for BOLD runs: the seed (default: %(default)s)")
    p.add_argument("--band", default="0.01,0.1", help="for BOLD runs: band-pass in Hz (default: %(default)s)")
    p.set_defaults(func=_attach)

    p = sub.add_parser("simulate-rest", help="virtual subjects with resting-state runs and their rest maps")
    p.add_argument("--subjects", type=int, default=6, help="virtual subjects (default: %(default)s)")
    p.add_argument("--images", type=int, default=200, help="images per subject (default: %(default)s)")
    p.add_argument("--max-voxels", type=int, default=4000, help="voxels per subject (default: %(default)s)")
    p.add_argument("--sessions", type=int, default=2, help="resting runs per subject (default: %(default)s)")
    p.add_argument("--volumes", type=int, default=300, help="volumes per run (default: %(default)s)")
    p.add_argument("--displacement", type=float, default=5.0,
                   help="sd of each subject's area displacement in mm (default %(default)s; the simulator's own 2.5 "
                        "gives a weak individual signal)")
    p.add_argument("--control", action="store_true", help="control population: rest runs from the template layout")
    p.add_argument("--image-size", type=int, default=64, help="stimulus size in pixels (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the virtual subjects (default: %(default)s)")
    p.add_argument("--out", required=True,
                   help="output folder: sub-01.h5 ... and each subject's rest maps as MNI NIfTI files, "
                        "sub-01_ses-01_rest.nii.gz ... (for the widget's 'Rest map from a NIfTI...')")
    p.set_defaults(func=_simulate)

    p = sub.add_parser("train-rest2visual", help="train one Rest2Visual model over subjects with rest maps")
    p.add_argument("data", nargs="+", help="response sets (.h5) with rest maps, one per subject")
    p.add_argument("--out", required=True, help="output model bundle (.safetensors)")
    p.add_argument("--backbone", default="efficientnet-lite0", help="image backbone (default: %(default)s)")
    p.add_argument("--preset", default="field", choices=["field", "field-tiny", "field-paper", "tiny", "demo", "paper"],
                   help="field (default), field-tiny, field-paper (a GPU): the shared image field (an NRF) plus the "
                        "person's rest-map term; tiny, demo, paper: the paper's 3D U-Net with adaptive normalisation "
                        "(the fit options then default to its own settings: batch 8 images, 100000 voxels, "
                        "no weight decay, patience 6)")
    p.add_argument("--resolution", type=float,
                   help="grid of the stored rest maps (field) or of the U-Net, in mm (default: the preset's: "
                        "field 4, field-tiny 8, field-paper 2; tiny 8, demo 4, paper 2)")
    p.add_argument("--ablate", choices=["none", "stimulus", "rest"], default="none",
                   help="U-Net presets only: the paper's ablations, Gaussian noise for the stimulus (ns-stim) or "
                        "the rest map (ns-fmri) (default: none)")
    p.add_argument("--base", help="field presets: start the shared field from this trained image-only NRF bundle "
                                  "(napari-nrf train on the same subjects, the same backbone and size: demo for "
                                  "field) and train the person's term on top (default: none, all from scratch)")
    add_fit_args(p, REST2VISUAL_FIELD_FIT)
    p.set_defaults(func=_train)

    p = sub.add_parser("evaluate-rest2visual",
                       help="map metrics (spatial Pearson, MAE, SSIM, RSA; whole set and V1-V5) and identification")
    p.add_argument("model", help="Rest2Visual bundle (.safetensors)")
    p.add_argument("data", nargs="+", help="response sets with rest maps (subjects new to the model are added "
                                           "from their rest maps)")
    p.add_argument("--split", default="test", choices=["train", "val", "test"], help="the split to score (default: %(default)s)")
    p.add_argument("--ssim-window", type=int, default=7, help="SSIM cube in voxels (default: %(default)s)")
    p.add_argument("--ssim-range", type=float, default=None,
                   help="SSIM data range L (default: each true map's range after z-scoring)")
    p.add_argument("--json", dest="json_out", help="report (default: <model>.maps.json)")
    p.add_argument("--stdout-json", action="store_true", help=STDOUT_JSON_HELP)
    p.add_argument("--cache", help="feature cache folder")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.set_defaults(func=_evaluate)


def _rest_map(args) -> int:
    from tqdm import tqdm

    from napari_nrf.errors import check_output
    from napari_nrf.data.restmap import rest_map

    out = check_output(args.out, [args.bold, args.confounds, args.seed], overwrite=args.overwrite)
    band = _band(args.band)
    bar = tqdm(total=None, desc="rest map")

    def progress(done, total, msg=""):
        bar.total, bar.n = total, done
        bar.set_postfix_str(msg)
        bar.refresh()

    rm = rest_map(args.bold, args.tr, seed=args.seed, band=band, confounds=args.confounds,
                  hrf=args.hrf != "none", hrf_model="spm" if args.hrf == "none" else args.hrf, progress=progress)
    bar.close()
    rm.save(out)
    print(f"{out}: rest map on {rm.grid} ({rm.info['n_brain_voxels']} brain voxels, seed "
          f"{rm.info['n_seed_voxels']} voxels, TR {rm.info['t_r']:g} s, {rm.info['n_volumes']} volumes)")
    return 0


def _attach(args) -> int:
    from napari_nrf.data.responseset import ResponseSet, ResponseSetError
    from napari_nrf.data.restmap import session_rest_maps

    rs = ResponseSet.load(args.data)  # before minutes of rest maps: a bad file fails now
    if args.sessions is not None and len(args.sessions) != len(args.maps):
        raise ResponseSetError(f"--sessions: {len(args.sessions)} labels for {len(args.maps)} files")
    maps, grid, labels = session_rest_maps(args.maps, args.sessions, t_r=args.tr, seed=args.seed,
                                           band=_band(args.band))
    rs.set_rest_maps(maps, grid, labels)
    rs.save(args.data)
    print(f"{args.data}: {len(maps)} rest map(s) on {grid}")
    return 0


def _simulate(args) -> int:
    from napari_nrf.errors import check_outputs_in
    from napari_nrf.simulate.rest import simulate_with_rest

    names = [f"sub-{i + 1:02d}{end}" for i in range(args.subjects)
             for end in [".h5"] + [f"_ses-{s + 1:02d}_rest.nii.gz" for s in range(args.sessions)]]
    out = check_outputs_in(Path(args.out), names, [], overwrite=args.overwrite)
    sets = simulate_with_rest(n_subjects=args.subjects, n_images=args.images, seed=args.seed,
                              max_voxels=args.max_voxels, image_size=args.image_size, n_sessions=args.sessions,
                              n_volumes=args.volumes, displacement_mm=args.displacement, control=args.control)
    for rs in sets:
        p = rs.save(out / f"{rs.subject}.h5")
        niis = rest_map_files(rs, out)
        print(f"{p}: {rs.n_images} images x {rs.n_voxels} voxels, {len(rs.rest_maps)} rest maps "
              f"({', '.join(n.name for n in niis)})")
    return 0


def rest_map_files(rs, folder) -> list:
    """Write response set ``rs``'s rest maps as MNI NIfTI files ``<subject>_<session>_rest.nii.gz``
    in ``folder`` (atomically, with a JSON sidecar); their paths."""
    import numpy as np

    from napari_nrf import space

    out = []
    for m, ses in zip(rs.rest_maps, rs.rest_sessions or [f"ses-{i + 1:02d}" for i in range(len(rs.rest_maps))]):
        out.append(space.save_nifti(np.asarray(m, np.float32), rs.rest_grid, Path(folder) / f"{rs.subject}_{ses}_rest.nii.gz",
                                    description="napari-nrf rest map (seed beta, z over brain)",
                                    sidecar={"kind": "rest-map", "subject": rs.subject, "session": ses,
                                             "units": "z (beta z-scored over the brain mask)", "simulated": True}))
    return out


def _train(args) -> int:
    from napari_nrf.cli.nrf import TrainingBars, _best_text, _cache, _device
    from napari_nrf.data.responseset import ResponseSet
    from napari_nrf.errors import check_output
    from napari_nrf.models.bundle import check_bundle_path
    from napari_nrf.recipes import train_rest2visual
    from napari_nrf.models.rest2visual import PRESETS
    from napari_nrf.settings import REST2VISUAL_FIELD_FIT, REST2VISUAL_FIT, FitSettings

    if args.preset in PRESETS:  # the U-Net: its own defaults where the user kept the field's
        for name in FitSettings.names():
            if getattr(args, name, None) == getattr(REST2VISUAL_FIELD_FIT, name):
                setattr(args, name, getattr(REST2VISUAL_FIT, name))
    out = check_output(args.out, args.data, overwrite=args.overwrite)
    check_bundle_path(out)
    sets = [ResponseSet.load(p) for p in args.data]
    cfg = {"ablate": args.ablate} if args.preset in PRESETS else {}
    if args.resolution is not None:
        cfg["resolution"] = args.resolution
    base = None
    if args.base:
        from napari_nrf.models import load_model

        base = load_model(args.base, kind="nrf")
    ck = Path(args.checkpoint_dir) if args.checkpoint_dir else out.with_name(out.name + ".ckpt")
    bars = TrainingBars("training")
    model, hist = train_rest2visual(sets, backbone=args.backbone, preset=args.preset, out=out, model_config=cfg,
                                    base=base,
                                    **FitSettings.from_args(args, REST2VISUAL_FIT if args.preset in PRESETS
                                                           else REST2VISUAL_FIELD_FIT).to_kwargs(), checkpoint_dir=ck,
                                    resume=not args.no_resume, feature_cache=_cache(args.cache),
                                    device=_device(args.device), **bars.callbacks())
    bars.close()
    print(f"saved {out} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, subjects "
          f"{', '.join(model.rest_maps)}); " + _best_text(hist))
    return 0


def _evaluate(args) -> int:
    import json

    from napari_nrf.cli.nrf import _cache, _device
    from napari_nrf.data.responseset import ResponseSet
    from napari_nrf.errors import check_output, is_json_file, write_text_atomic
    from napari_nrf.models import load_model
    from napari_nrf.kinds.rest2visual.evaluate import evaluate_maps, format_report
    from napari_nrf.models.rest2visual import Rest2Visual, Rest2VisualError

    out = check_output(args.json_out or Path(args.model).with_suffix(".maps.json"), [args.model, *args.data],
                       overwrite=args.overwrite, flag="--json", replaceable=is_json_file)
    model = load_model(args.model, device=_device(args.device))
    if not isinstance(model, Rest2Visual):
        raise Rest2VisualError(f"{Path(args.model).name}: a model of kind {model.kind!r}; evaluate-rest2visual "
                               "takes a Rest2Visual bundle")
    sets = [ResponseSet.load(p) for p in args.data]
    rep = evaluate_maps(model, sets, split=args.split, feature_cache=_cache(args.cache), window=args.ssim_window,
                        data_range=args.ssim_range)
    print(format_report(rep))
    write_text_atomic(out, json.dumps({"model": str(args.model), **rep}, indent=2, default=float))
    args.json_result = {"model": str(args.model), **rep}
    print(f"report: {out}")
    return 0
