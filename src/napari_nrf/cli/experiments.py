"""Virtual experiments: ``contrast`` (two image sets) and ``localizer`` (a folder of categories).

Both predict every image once through the model and write MNI NIfTI maps with JSON
sidecars and a peak / cluster table (:mod:`napari_nrf.experiments`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

CONTRAST_EXAMPLE = """example:
  napari-nrf contrast model.safetensors --a faces/ --b "places/*.jpg" --out faces_vs_places/"""

LOCALIZER_EXAMPLE = """example:
  napari-nrf localizer model.safetensors categories/ --out localizer/"""

MAPS = ("effect.nii.gz", "stat.nii.gz", "z.nii.gz", "thresholded.nii.gz", "clusters.tsv")


def _common(p) -> None:
    p.add_argument("--out", required=True, help="output folder (created; existing maps need --overwrite)")
    p.add_argument("--subject", help="whose voxels (voxel-indexed models with several subjects) or whose rest map "
                                      "(Rest2Visual) (default: the model's first subject)")
    p.add_argument("--rest-map", metavar="FILE",
                   help="Rest2Visual: a new person's rest map NIfTI; the experiment runs for them (default: none)")
    p.add_argument("--resolution", type=float, default=2.0, help="MNI grid spacing in mm (default: %(default)s)")
    p.add_argument("--extent", default="data",
                   help="voxels tested: data (brain voxels near the model's training voxels), brain, gm, none, or "
                        "a mask NIfTI (default: %(default)s)")
    p.add_argument("--correction", choices=["fwe", "fdr", "none"], default="fwe",
                   help="multiple-comparison correction: fwe (max-statistic permutations over images), fdr "
                        "(Benjamini-Hochberg on the Welch p-values), none (default: %(default)s)")
    p.add_argument("--permutations", type=int, default=1000,
                   help="label permutations for --correction fwe (default: %(default)s)")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the permutations (default: %(default)s)")
    p.add_argument("--atlas", metavar="NIFTI",
                   help="label atlas naming the regions of clusters.tsv (a table beside it gives the names; "
                        "default: the visual areas of the simulator, at published group centroids)")
    p.add_argument("--device", default=None, help="torch device (default: CUDA when available, else cpu)")
    p.add_argument("--cache", help="feature cache folder (default: the napari-nrf cache, $NAPARI_NRF_CACHE)")


def register(sub) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser("contrast", help="where do two image sets differ? effect, Welch t, FWE/FDR threshold, clusters",
                       description="Contrast two image sets through an encoding model (images are the random "
                                   "effect): MNI maps of the effect, Welch t and z, the thresholded map and a "
                                   "peak / cluster table (clusters.tsv); NIfTI maps with .json sidecars.", epilog=CONTRAST_EXAMPLE, formatter_class=fmt)
    p.add_argument("model", help="model bundle (.safetensors) that predicts a volume per image")
    p.add_argument("--a", nargs="+", required=True, metavar="IMAGES",
                   help="set A: folders, image files, glob patterns (quote them) or .txt lists of image paths")
    p.add_argument("--b", nargs="+", required=True, metavar="IMAGES",
                   help="set B: folders, image files, glob patterns (quote them) or .txt lists of image paths")
    p.add_argument("--tail", choices=["two-sided", "greater", "less"], default="two-sided",
                   help="two-sided, greater (A > B) or less (A < B) (default: %(default)s)")
    p.add_argument("--label-a", default="A", help="name of set A in the maps and tables (default: %(default)s)")
    p.add_argument("--label-b", default="B", help="name of set B (default: %(default)s)")
    _common(p)
    p.set_defaults(func=_contrast)

    p = sub.add_parser("localizer", help="each category against the rest and a preferred-category label map",
                       description="A category localizer: FOLDER holds one sub-folder of images per category; "
                                   "each category is contrasted with all the others (one-sided) and every voxel "
                                   "is labelled with its preferred category where the effect is large enough "
                                   "and significant; writes one contrast folder per category and labels.nii.gz.", epilog=LOCALIZER_EXAMPLE, formatter_class=fmt)
    p.add_argument("model", help="model bundle (.safetensors) that predicts a volume per image")
    p.add_argument("folder", help="folder with one sub-folder of images per category (at least two, 2+ images each)")
    p.add_argument("--min-effect", type=float, default=0.2,
                   help="smallest effect (data units) for a voxel to be labelled with a category "
                        "(default: %(default)s)")
    _common(p)
    p.set_defaults(func=_localizer)


def _check_args(args) -> None:
    from napari_nrf.errors import NapariNRFError

    if args.correction == "fwe" and args.permutations < 1:
        raise NapariNRFError(f"--permutations {args.permutations}: must be at least 1 for --correction fwe")
    if not 0 < args.alpha < 1:
        raise NapariNRFError(f"--alpha {args.alpha}: must be between 0 and 1")
    if not 0.25 <= args.resolution <= 8:
        raise NapariNRFError(f"--resolution {args.resolution}: must be 0.25-8 mm")


def _setup(args, inputs, names):
    from napari_nrf import experiments as ex
    from napari_nrf.errors import check_outputs_in
    from napari_nrf.features import FeatureCache
    from napari_nrf.models import load_model

    out = check_outputs_in(args.out, names, [args.model, *inputs], overwrite=args.overwrite)
    atlas = ex.load_atlas(args.atlas) if args.atlas else None
    model = load_model(args.model, device=args.device or "cpu")
    ex.check_model(model)
    if args.rest_map:
        from napari_nrf.models.rest2visual import subject_from_rest_map

        args.subject = subject_from_rest_map(model, args.rest_map)
    return out, atlas, model, FeatureCache(args.cache) if args.cache else FeatureCache()


class _Bars:
    """tqdm bars per stage of the experiment's progress(done, total, message)."""

    def __init__(self):
        self.bars = {}

    def __call__(self, done, total, message=""):
        from tqdm import tqdm

        b = self.bars.get(message)
        if b is None:
            b = self.bars[message] = tqdm(total=total, desc=message or "work", file=sys.stderr)
        b.n = done
        b.refresh()

    def close(self):
        for b in self.bars.values():
            b.close()


def _summary(res, label="") -> str:
    d = res.test_description()
    thr = "none reachable" if d["threshold"] is None else f"{d['threshold']:.2f}"
    return (f"{label}{res.name}: {len(res.names_a)} vs {len(res.names_b)} images, {res.correction.upper()} "
            f"alpha {res.alpha:g}, threshold t {thr}, {d['n_significant_voxels']} significant voxels")


def _contrast(args) -> int:
    from napari_nrf import experiments as ex

    _check_args(args)
    a, _ = ex.image_set(args.a, args.label_a)
    b, _ = ex.image_set(args.b, args.label_b)
    out, atlas, model, cache = _setup(args, [*a, *b], MAPS)
    bars = _Bars()
    try:
        res = ex.contrast(model, a, b, subject=args.subject, resolution=args.resolution, extent=args.extent,
                          correction=args.correction, n_permutations=args.permutations, alpha=args.alpha,
                          tail=args.tail, seed=args.seed, device=args.device, feature_cache=cache,
                          label_a=args.label_a, label_b=args.label_b, progress=bars)
    finally:
        bars.close()
    paths = ex.write_contrast(res, out, model=model, model_path=args.model, atlas=atlas)
    print(_summary(res))
    print(f"wrote {', '.join(Path(p).name for p in paths.values())} in {out}")
    return 0


def _localizer(args) -> int:
    from napari_nrf import experiments as ex

    _check_args(args)
    sets = ex.category_sets(args.folder)
    names = ["labels.nii.gz", "labels.tsv", "summary.json"] + [f"{ex._safe(c)}/{m}" for c in sets for m in MAPS]
    out, atlas, model, cache = _setup(args, [args.folder], names)
    bars = _Bars()
    try:
        res = ex.localizer(model, sets, subject=args.subject, resolution=args.resolution, extent=args.extent,
                           min_effect=args.min_effect, correction=args.correction, n_permutations=args.permutations,
                           alpha=args.alpha, seed=args.seed, device=args.device, feature_cache=cache, progress=bars)
    finally:
        bars.close()
    ex.write_localizer(res, out, model=model, model_path=args.model, atlas=atlas)
    for c, r in res.contrasts.items():
        print(_summary(r, "  "), f"-> {(res.labels == res.categories.index(c) + 1).sum()} voxels prefer {c}")
    print(f"wrote labels.nii.gz (+ labels.tsv) and one folder per category in {out}")
    return 0
