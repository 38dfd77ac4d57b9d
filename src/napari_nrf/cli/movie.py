"""Subcommands for films: ``simulate-movie``, ``import-movie``, ``train-movie``,
``evaluate-movie`` and ``query-movie`` (the movie encoder-decoder)."""

from __future__ import annotations

from pathlib import Path

from napari_nrf.cli._output import STDOUT_JSON_HELP


def _bar(desc):
    from tqdm import tqdm

    bar = tqdm(total=1, desc=desc, unit="step")

    def progress(done, total, msg=""):
        bar.total = total
        bar.n = done
        if msg:
            bar.set_postfix_str(str(msg))
        bar.refresh()

    return bar, progress


def register(sub) -> None:
    from napari_nrf.settings import MOVIE_FEATURES_FIT, MOVIE_FIT

    from ._common import add_device_arg

    p = sub.add_parser("simulate-movie", help="virtual films and the BOLD of virtual subjects (group + each subject)")
    p.add_argument("--out", required=True, help="output folder (group.h5, sub-01.h5, ...)")
    p.add_argument("--subjects", type=int, default=3, help="virtual subjects (default %(default)s)")
    p.add_argument("--films", type=int, default=3, help="films; the last is held out (default %(default)s)")
    p.add_argument("--trs", type=int, default=120, help="TRs per film (default %(default)s)")
    p.add_argument("--tr", type=float, default=1.3, help="repetition time in s (default %(default)s)")
    p.add_argument("--frames-per-tr", type=int, default=8, help="frames per TR (default %(default)s; the paper 32)")
    p.add_argument("--size", type=int, default=112, help="frame size in px (default %(default)s)")
    p.add_argument("--max-voxels", type=int, default=1500, help="voxels (default %(default)s)")
    p.add_argument("--motion", type=float, default=1.0, help="speed of pans and moving patches (0: still shots)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the virtual subjects and films (default: %(default)s)")
    p.set_defaults(func=_simulate)

    p = sub.add_parser("import-movie", help="a movie data set from BOLD NIfTI runs + the film they watched")
    p.add_argument("film", help="the film: a video file, or a folder of frames (with --fps)")
    p.add_argument("--bold", nargs="+", required=True,
                   help="4D BOLD NIfTI runs in MNI space, one per subject (several: the group average + SNR)")
    p.add_argument("--tr", type=float, required=True, help="repetition time in s")
    p.add_argument("--onset", type=float, default=0.0, help="seconds of film before the first volume (default 0)")
    p.add_argument("--fps", type=float, default=None, help="frame rate of a folder of frames")
    p.add_argument("--mask", default=None, help="mask or atlas NIfTI (nonzero voxels kept; default: grey matter)")
    p.add_argument("--snr-top", type=float, default=None,
                   help="keep the top fraction of voxels by SNR (the paper: 0.3; needs >= 2 runs)")
    p.add_argument("--frames-per-tr", type=int, default=32, help="frames per TR (default %(default)s)")
    p.add_argument("--size", type=int, default=112, help="frame size in px (default %(default)s)")
    p.add_argument("--name", default=None, help="film name (default: the file's stem)")
    p.add_argument("--held-out", action="store_true", help="hold this film out whole (all its TRs test)")
    p.add_argument("--assume-mni", action="store_true", help="trust the runs to be in MNI space whatever the header")
    p.add_argument("--out", required=True, help="output movie data set (.h5)")
    p.set_defaults(func=_import)

    p = sub.add_parser("train-movie", help="train a movie model (default: on pretrained frame features) on a "
                                            "movie data set (.h5)")
    p.add_argument("data", help="movie data set (.h5)")
    p.add_argument("--out", required=True, help="output model bundle (.safetensors)")
    p.add_argument("--arch", default="features", choices=["features", "conv"],
                   help="features: the frozen backbone on every frame + a haemodynamic kernel over 10 TRs + a "
                        "per-voxel readout, calibrated out of sample (kind movie-features); conv: the paper's "
                        "3D-conv encoder-decoder from pixels (kind movie); default %(default)s")
    p.add_argument("--size", default="demo", choices=["tiny", "demo", "paper"],
                   help="model size of --arch conv (default %(default)s)")
    p.add_argument("--delay", type=int, default=4,
                   help="haemodynamic delay in TR of --arch conv (default %(default)s; --arch features reads "
                        "10 TRs of history through its HRF kernel instead)")
    p.add_argument("--w", type=float, default=None,
                   help="encoder weight of the loss w E + (1 - w) D; 1: encoder alone (default: 1 for --arch "
                        "features, 0.5 for conv)")
    p.add_argument("--snr-top", type=float, default=None,
                   help="train on the top fraction of voxels by the data set's SNR (e.g. 0.3, the paper's)")
    p.add_argument("--still", action="store_true", help="middle frame only (the middle-frame baseline)")
    from napari_nrf.settings import add_fit_arguments

    add_fit_arguments(p, MOVIE_FEATURES_FIT, skip=("val_every", "alpha", "batch_voxels"),
                      help={n: f"{h} (--arch conv: {getattr(MOVIE_FIT, n)} unless given)" for n, h in
                            (("epochs", "training epochs"), ("lr", "learning rate"),
                             ("weight_decay", "AdamW weight decay"), ("patience", "early-stopping patience"))})
    add_device_arg(p)
    p.set_defaults(func=_train)

    p = sub.add_parser("evaluate-movie", help="voxelwise r over TRs, permutation tests, SSIM and FIR ridge")
    p.add_argument("model", help="movie model bundle (.safetensors)")
    p.add_argument("data", help="movie data set (.h5)")
    p.add_argument("--split", default="test", choices=["train", "val", "test"], help="the split to score (default: %(default)s)")
    p.add_argument("--perm", type=int, default=100, help="permutations per voxel (default %(default)s; 0: none)")
    p.add_argument("--ridge", default="efficientnet-lite0", choices=["efficientnet-lite0", "pixels", "none"],
                   help="FIR ridge baseline features (default %(default)s)")
    p.add_argument("--baselines", default="fir",
                   help="comma-separated baselines: fir (FIR ridge), nrf, universal (the image kinds trained "
                        "here on each TR's middle frame at the model's delay, their default settings); "
                        "default %(default)s")
    p.add_argument("--baseline-steps", type=int, default=None,
                   help="optimiser steps of the nrf / universal baselines (default: their kinds' default schedules)")
    p.add_argument("--saliency", action="store_true",
                   help="also the decoder's saliency by ROI (share of the top 20 %% voxels; one backward pass per TR)")
    p.add_argument("--json", dest="json_out", help="write the report here (default: <model>.movie-eval.json)")
    p.add_argument("--stdout-json", action="store_true", help=STDOUT_JSON_HELP)
    add_device_arg(p)
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("query-movie", help="the predicted 4D response (MNI x time) of a film, one NIfTI")
    p.add_argument("model", help="movie model bundle (.safetensors)")
    p.add_argument("film", help="a video file, or a folder of frames (with --fps)")
    p.add_argument("--out", required=True, help="output 4D NIfTI (.nii.gz), TR in the header")
    p.add_argument("--onset", type=float, default=0.0, help="seconds of film before the first volume")
    p.add_argument("--tr", type=float, default=None, help="TR in s (default: the model's)")
    p.add_argument("--fps", type=float, default=None, help="frame rate of a folder of frames")
    p.add_argument("--trs", type=int, default=None, help="volumes to predict (default: the whole film)")
    p.add_argument("--resolution", type=float, default=None, help="grid spacing in mm (default: the voxels')")
    p.add_argument("--batch", type=int, default=16, help="chunks per batch (default %(default)s)")
    add_device_arg(p)
    p.set_defaults(func=_query)


def _device(name):
    from napari_nrf.errors import choose_device

    return choose_device(name)


def _simulate(args) -> int:
    from napari_nrf.errors import check_outputs_in
    from napari_nrf.simulate.movies import simulate_movies

    names = ["group.h5"] + [f"sub-{i + 1:02d}.h5" for i in range(max(0, args.subjects))]
    check_outputs_in(args.out, names, overwrite=args.overwrite)
    bar, progress = _bar("simulate-movie")
    out = simulate_movies(args.out, n_subjects=args.subjects, n_films=args.films, n_trs=args.trs, tr=args.tr,
                          frames_per_tr=args.frames_per_tr, size=args.size, max_voxels=args.max_voxels,
                          seed=args.seed, motion=args.motion, progress=progress)
    bar.close()
    for name, ds in out.items():
        print(f"{Path(args.out) / (name + '.h5')}: {len(ds.film_names)} films x "
              f"{[ds.n_trs(f) for f in ds.film_names]} TR, {ds.n_voxels} voxels, held out {ds.held_out}")
    return 0


def _import(args) -> int:
    from napari_nrf.errors import check_output
    from napari_nrf.movie.importer import import_movie

    check_output(args.out, [args.film, *args.bold, args.mask], overwrite=args.overwrite)
    bar, progress = _bar("import-movie")
    ds = import_movie(args.film, args.bold, tr=args.tr, out=args.out, onset=args.onset, fps=args.fps,
                      mask=args.mask, snr_top=args.snr_top, frames_per_tr=args.frames_per_tr, size=args.size,
                      name=args.name, held_out=args.held_out, assume_mni=args.assume_mni, progress=progress)
    bar.close()
    print(f"{args.out}: film {ds.film_names[0]!r}, {ds.n_trs(ds.film_names[0])} TR x {ds.n_voxels} voxels "
          f"({ds.subject})")
    return 0


def _snr_voxels(ds, top):
    import numpy as np

    from napari_nrf.movie.video import MovieError

    if top is None:
        return None
    if not 0 < top <= 1:
        raise MovieError(f"--snr-top {top}: must be a fraction in (0, 1]")
    if ds.snr is None:
        raise MovieError("the data set has no SNR (it needs several subjects); leave out --snr-top")
    k = max(1, int(round(top * ds.n_voxels)))
    return np.sort(np.argsort(-ds.snr, kind="stable")[:k])


def _load_movie_model(path, device):
    """A model bundle that reads film frames (kind movie or movie-features), else one line."""
    from napari_nrf.models import load_model
    from napari_nrf.models.bundle import BundleError

    model = load_model(path, device=_device(device))
    if model.inputs != "frames":
        raise BundleError(f"{Path(path).name}: a {model.kind} model reads still images, not films; "
                          "train a movie model with train-movie")
    return model


def _train(args) -> int:
    from napari_nrf.errors import check_output
    from napari_nrf.movie import MovieDataset
    from napari_nrf.recipes import train_movie, train_movie_features
    from napari_nrf.settings import MOVIE_FEATURES_FIT, MOVIE_FIT, FitSettings

    check_output(args.out, [args.data], overwrite=args.overwrite)
    conv = args.arch == "conv"
    w = args.w if args.w is not None else (0.5 if conv else 1.0)
    if not 0 <= w <= 1:
        from napari_nrf.errors import NapariNRFError

        raise NapariNRFError(f"--w {w}: must be in [0, 1]")
    if conv:  # the options left at the features preset take the conv preset's values
        for name in ("epochs", "lr", "weight_decay", "patience", "batch_images"):
            if getattr(args, name) == getattr(MOVIE_FEATURES_FIT, name):
                setattr(args, name, getattr(MOVIE_FIT, name))
    ds = MovieDataset.load(args.data)
    try:
        settings = FitSettings.from_args(args, MOVIE_FIT if conv else MOVIE_FEATURES_FIT)
        bar, progress = _bar("train-movie")
        common = dict(w=w, out=args.out, voxels=_snr_voxels(ds, args.snr_top), still=args.still, progress=progress,
                      device=_device(args.device), **settings.to_kwargs())
        if conv:
            model, hist = train_movie(ds, size=args.size, delay=args.delay, **common)
        else:
            model, hist = train_movie_features(ds, **common)
        bar.close()
    finally:
        ds.close()
    print(f"{args.out}: {model.kind}, {model.n_voxels} voxels, delay {model.delay} TR, w {model.w}; best epoch "
          f"{hist.best_epoch}, validation median r {hist.best_score:.3f}")
    return 0


def _evaluate(args) -> int:
    import json

    from napari_nrf.errors import check_output, is_json_file, write_text_atomic
    from napari_nrf.movie import MovieDataset
    from napari_nrf.movie.dataset import model_voxels
    from napari_nrf.movie.evaluate import evaluate_movie, fir_ridge

    from napari_nrf.errors import NapariNRFError

    base = [b.strip() for b in str(args.baselines).split(",") if b.strip()]
    bad = sorted(set(base) - {"fir", "nrf", "universal", "none"})
    if bad:
        raise NapariNRFError(f"--baselines: unknown {', '.join(bad)}; choose from fir, nrf, universal")
    out = Path(args.json_out or Path(args.model).with_suffix(".movie-eval.json"))
    check_output(out, [args.model, args.data], overwrite=args.overwrite, flag="--json", replaceable=is_json_file)
    model = _load_movie_model(args.model, args.device)
    from napari_nrf.features import FeatureCache

    model.frame_cache = FeatureCache()  # frame features of the data set's films: computed once
    ds = MovieDataset.load(args.data)
    try:
        vox = model_voxels(model, ds)
        rep = {"model": evaluate_movie(model, ds, split=args.split, n_perm=args.perm, voxels=vox)}
        if args.ridge != "none" and "fir" in base:
            rep["fir_ridge"] = fir_ridge(ds, features=args.ridge, voxels=vox, split=args.split, n_perm=args.perm)
        for kind in ("nrf", "universal"):
            if kind in base:
                from napari_nrf.features import FeatureCache
                from napari_nrf.movie.baselines import static_baseline

                print(f"training the static {kind} baseline on the middle frames (delay {model.delay} TR)...")
                r = static_baseline(ds, kind, int(model.delay), voxels=vox, split=args.split, n_perm=args.perm,
                                    feature_cache=FeatureCache(),
                                    **({} if args.baseline_steps is None else {"steps": args.baseline_steps}))
                rep[f"static_{kind}"] = r
        if args.saliency:
            from napari_nrf.movie.evaluate import decoder_saliency

            rep["saliency_by_roi"] = decoder_saliency(model, ds, split=args.split, voxels=vox)["by_roi"]
    finally:
        ds.close()
    write_text_atomic(out, json.dumps(rep, indent=2))
    args.json_result = rep
    _print_side_by_side(rep)
    if "saliency_by_roi" in rep:
        top = list(rep["saliency_by_roi"].items())[:4]
        print("decoder saliency (top 20 % voxels): " + ", ".join(f"{k} {v:.0%}" for k, v in top))
    print(f"report: {out}")
    return 0


def _print_side_by_side(rep: dict) -> None:
    """The evaluation as one table: r, R^2 and slope of the model and each baseline,
    pooled, for the segments and the held-out film, per film and per region."""
    cols = [(n, rep[k]) for n, k in (("model", "model"), ("FIR ridge", "fir_ridge"),
                                     ("static NRF", "static_nrf"), ("static Universal", "static_universal"))
            if rep.get(k)]
    rows = [("pooled", lambda r: r.get("pooled")), ("segments", lambda r: r.get("segments")),
            ("held-out film", lambda r: r.get("held_out_film"))]
    films = list(cols[0][1].get("films", {}))
    rows += [(f"film {f}", lambda r, f=f: r.get("films", {}).get(f)) for f in films]
    rois = list(cols[0][1].get("by_roi", {}))
    rows += [(f"ROI {g}", lambda r, g=g: r.get("by_roi", {}).get(g)) for g in rois]
    print("median r / median R^2 / calibration slope (1 = the data's units)")
    print(f"{'':18s}" + "".join(f"{n:>24s}" for n, _ in cols))
    for label, get in rows:
        cells = []
        for _, r in cols:
            s = get(r)
            cells.append("-" if not s else f"{s['median_r']:.3f} / {s['median_r2']:.3f} / {s['calibration_slope']:.2f}")
        print(f"{label:18s}" + "".join(f"{c:>24s}" for c in cells))
    r = rep["model"]
    if "ssim_predicted" in r:
        print(f"model reconstructions: SSIM {r['ssim_predicted']:.3f} (from measured voxels {r['ssim_measured']:.3f})")


def _query(args) -> int:
    from napari_nrf.errors import NapariNRFError, check_output
    from napari_nrf.movie.evaluate import predict_film
    from napari_nrf.movie.volumes import save_4d

    check_output(args.out, [args.model, args.film], overwrite=args.overwrite)
    if not str(args.out).endswith((".nii", ".nii.gz")):
        raise NapariNRFError(f"--out {args.out}: give a .nii.gz (or .nii) file")
    model = _load_movie_model(args.model, args.device)
    tr = model.tr if args.tr is None else args.tr
    bar, progress = _bar("query-movie")
    pred = predict_film(model, args.film, tr=tr, onset=args.onset, n_trs=args.trs, fps=args.fps, batch=args.batch,
                        progress=progress)
    bar.close()
    coords = next(iter(model.subjects.values()))
    save_4d(args.out, pred, coords, tr, args.resolution,
            sidecar={"kind": "movie-prediction", "film": str(args.film), "tr": tr, "onset": args.onset,
                     "delay_tr": model.delay, "units": "z-scored BOLD (per film)",
                     "note": f"volume j is predicted from the chunk of TR j - {model.delay}; the first "
                             f"{model.delay} volumes are NaN"})
    print(f"{args.out}: {len(pred)} volumes x {pred.shape[1]} voxels, TR {tr:g} s, delay {model.delay} TR")
    return 0
