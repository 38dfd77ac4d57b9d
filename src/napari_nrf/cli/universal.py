"""Subcommands of the Universal encoder: ``train-universal``, ``transfer`` and ``cluster``."""

from __future__ import annotations

import json
from pathlib import Path

from napari_nrf.cli.nrf import TrainingBars, _backbone_config, _best_text, _device, add_training_inputs
from napari_nrf.errors import NapariNRFError
from napari_nrf.settings import EMBED_INIT_STD, EMBEDDING_LR_SCALE, TRANSFER_FIT, UNIVERSAL_FIT


def _fit_args(p, defaults) -> None:
    from napari_nrf.cli.nrf import add_fit_args

    # The paper's Adam (no weight decay, 5000 voxels per image) at lr 3e-4, measured best on
    # the CPU-length step schedule (the paper's 1e-3 overfits in ~10 steps at 20 images).
    add_fit_args(p, defaults, lr_help="Adam learning rate (default: %(default)s; the paper's 1e-3 "
                                      "overfits within a few steps on small data sets)")


# Model sizes of train-universal: the paper's is hours per epoch on a 2-core CPU, so the
# no-flag command trains the small one; --preset paper is one flag away.
UNIVERSAL_PRESETS = {"demo": {"embed_dim": 64, "channels": 32}, "paper": {"embed_dim": 256, "channels": 128}}


def register(sub) -> None:
    p = sub.add_parser("train-universal", help="train a Universal encoder jointly on several subjects' response sets")
    p.set_defaults(func=_train)
    add_training_inputs(p, "response set file(s) (.h5), one per subject; the images may differ")
    p.add_argument("--levels", help="comma-separated backbone features to use (default: all)")
    p.add_argument("--preset", default="demo", choices=sorted(UNIVERSAL_PRESETS),
                   help="model size: demo (E 64, C 32: CPU-sized) or paper (E 256, C 128) (default: %(default)s)")
    p.add_argument("--embed-dim", type=int, help="voxel embedding size E (overrides the preset)")
    p.add_argument("--channels", type=int, help="projected channels C per level (overrides the preset)")
    p.add_argument("--dropout", type=float, default=0.1, help="dropout in the per-level MLPs (default: %(default)s)")
    p.add_argument("--embed-init-std", type=float, default=EMBED_INIT_STD,
                   help="std of the random initial voxel embeddings (default: %(default)s)")
    p.add_argument("--embedding-lr-scale", type=float, default=EMBEDDING_LR_SCALE,
                   help="learning-rate multiplier of the voxel embeddings (default: %(default)s; the paper's is 1 "
                        "with one long GPU run; see docs/results.md, 'Training defaults and units')")
    _fit_args(p, UNIVERSAL_FIT)

    p = sub.add_parser("transfer", help="add a new subject to a Universal encoder by learning only its voxel embeddings")
    p.set_defaults(func=_transfer)
    p.add_argument("model", help="trained universal model bundle (.safetensors)")
    p.add_argument("data", help="the new subject's response set (.h5)")
    p.add_argument("--out", required=True, help="output bundle with the new subject (.safetensors)")
    p.add_argument("--subject", help="name of the new subject (default: the response set's)")
    p.add_argument("--init", default="random", choices=["random", "mean", "nearest"],
                   help="initial embeddings: random (paper), the mean embedding of the model's voxels, or the "
                        "mean embedding of each voxel's nearest voxel (MNI) in every subject of the model")
    p.add_argument("--n-images", type=int, help="use only this many training images (few-shot transfer)")
    _fit_args(p, TRANSFER_FIT)

    p = sub.add_parser("cluster", help="k-means maps of a Universal encoder's voxel embeddings (NIfTI + table)")
    p.set_defaults(func=_cluster)
    p.add_argument("model", help="universal model bundle (.safetensors)")
    p.add_argument("-k", type=int, default=20, help="number of clusters (default: %(default)s)")
    p.add_argument("--subjects", help="comma-separated subjects clustered together (default: all)")
    p.add_argument("--resolution", type=float, default=2.0, help="grid of the label volumes in mm (default: %(default)s)")
    p.add_argument("--library", nargs="*", help="image files or folders: per cluster, the top-activating images")
    p.add_argument("--top", type=int, default=8, help="top images per cluster (default: %(default)s)")
    p.add_argument("--method", default="auto", choices=["auto", "sklearn", "torch"],
                   help="k-means implementation; auto: torch on a GPU or above 50,000 voxels, else scikit-learn (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed of k-means (default: %(default)s)")
    p.add_argument("--out", required=True, help="output folder: <subject>_clusters.nii.gz, clusters.csv, clusters.json")
    p.add_argument("--cache", help="feature cache folder")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")


def _fit_kwargs(args, out: Path) -> dict:
    from napari_nrf.features import FeatureCache
    from napari_nrf.models.bundle import check_bundle_path
    from napari_nrf.settings import FitSettings

    check_bundle_path(out)
    ck = Path(args.checkpoint_dir) if args.checkpoint_dir else out.with_name(out.name + ".ckpt")
    return dict(**FitSettings.from_args(args).to_kwargs(), checkpoint_dir=ck, resume=not args.no_resume,
                feature_cache=FeatureCache(args.cache), device=_device(args.device))


def model_config(args) -> dict:
    """The UniversalEncoder settings of a ``train-universal`` command line (preset, overrides)."""
    return dict(embed_dim=args.embed_dim or UNIVERSAL_PRESETS[args.preset]["embed_dim"],
                channels=args.channels or UNIVERSAL_PRESETS[args.preset]["channels"],
                dropout=args.dropout, embed_init_std=args.embed_init_std, embedding_lr_scale=args.embedding_lr_scale)


def _train(args) -> int:
    from napari_nrf.data.responseset import ResponseSet
    from napari_nrf.recipes import train_universal

    bcfg = _backbone_config(args)
    sets = [ResponseSet.load(p) for p in args.data]
    out = Path(args.out)
    bars = TrainingBars("training")
    levels = [s.strip() for s in args.levels.split(",")] if args.levels else None
    model, hist = train_universal(sets, backbone=args.backbone, backbone_config=bcfg, out=out, levels=levels,
                                  model_config=model_config(args), **bars.callbacks(), **_fit_kwargs(args, out))
    bars.close()
    print(f"saved {out}: subjects {', '.join(model.subjects)}, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters; " + _best_text(hist))
    return 0


def _transfer(args) -> int:
    import numpy as np

    from napari_nrf.data.responseset import ResponseSet
    from napari_nrf.models import load_model
    from napari_nrf.recipes import transfer_subject

    model = load_model(args.model, device=_device(args.device), kind="universal")
    rs = ResponseSet.load(args.data)
    if args.subject:
        rs.subject = args.subject
    if args.n_images is not None:
        train = rs.indices("train")
        if args.n_images < 1:
            raise NapariNRFError("--n-images must be >= 1")
        keep = np.sort(np.random.default_rng(args.seed).choice(train, min(args.n_images, len(train)), replace=False))
        rows = np.sort(np.concatenate([keep, np.flatnonzero(rs.split != 0)]))
        rs = rs.subset(rows=rows)
    out = Path(args.out)
    bars = TrainingBars(f"transfer {rs.subject}")
    model, hist = transfer_subject(model, rs, out=out, init=args.init, **bars.callbacks(),
                                   **_fit_kwargs(args, out))
    bars.close()
    print(f"saved {out}: new subject {rs.subject} ({rs.n_voxels} voxels, {int((rs.split == 0).sum())} training "
          f"images); " + _best_text(hist))
    return 0


def _cluster(args) -> int:
    import numpy as np

    from napari_nrf import space
    from napari_nrf.analysis import cluster_embeddings, cluster_labels_volume, cluster_table, cluster_top_images
    from napari_nrf.models import load_model

    dev = _device(args.device)
    model = load_model(args.model, device=dev, kind="universal")
    subjects = [s.strip() for s in args.subjects.split(",")] if args.subjects else list(model.subjects)
    emb = {s: model.embeddings(s) for s in subjects}
    res = cluster_embeddings(emb, args.k, method=args.method, seed=args.seed, device=dev)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    grid = space.Grid.mni(args.resolution)
    for s in subjects:
        vol = cluster_labels_volume(model.subjects[s], res.labels[s], grid)
        space.save_nifti(vol, grid, out / f"{s}_clusters.nii.gz", dtype=np.int16)
        np.save(out / f"{s}_labels.npy", res.labels[s])
    table = cluster_table(res, {s: model.subjects[s] for s in subjects})
    cols = list(table)
    lines = [",".join(cols)]
    for i in range(res.k):
        vals = []
        for c in cols:
            v = table[c][i]
            vals.append(f'"{v}"' if isinstance(v, str) else (f"{v:.2f}" if isinstance(v, float) else str(v)))
        lines.append(",".join(vals))
    (out / "clusters.csv").write_text("\n".join(lines) + "\n")
    from napari_nrf.bids import write_dataset_description

    write_dataset_description(out, name="napari-nrf cluster maps")  # a derivative folder (GeneratedBy)
    report = {"model": str(args.model), "k": res.k, "subjects": subjects, "method": res.method,
              "inertia": res.inertia}
    if args.library:
        from napari_nrf.features import FeatureCache, image_files

        library = image_files(args.library)
        feats = model.encode_images(library, cache=FeatureCache(args.cache))
        top = cluster_top_images(model, feats, res, top=args.top)
        report["top_images"] = {str(c + 1): [{"image": library[i], "mean_response": float(v)}
                                             for i, v in zip(*top[c])] for c in range(res.k)}
    (out / "clusters.json").write_text(json.dumps(report, indent=1))
    print(f"{res.k} clusters of {sum(len(v) for v in emb.values())} voxels ({', '.join(subjects)}) -> {out}")
    return 0
