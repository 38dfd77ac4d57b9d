"""Subcommands ``train``, ``evaluate`` and ``query`` (NRF and any other model kind)."""

from __future__ import annotations

from pathlib import Path

from napari_nrf.cli._common import KIND_HELP, add_device_arg
from napari_nrf.cli._output import STDOUT_JSON_HELP
from napari_nrf.errors import NapariNRFError


def add_fit_args(p, defaults=None, lr_help: str | None = None) -> None:
    """The options of ``train.fit`` shared by every training subcommand, made from
    :class:`napari_nrf.settings.FitSettings` (``defaults``: a preset, NRF's by default)."""
    from napari_nrf.settings import NRF_FIT, add_fit_arguments

    add_fit_arguments(p, defaults or NRF_FIT, skip=("val_every",), help={"lr": lr_help} if lr_help else None)
    p.add_argument("--checkpoint-dir", help="checkpoints (default: <out>.ckpt/); an interrupted run resumes from it")
    p.add_argument("--no-resume", action="store_true", help="start from scratch even if a checkpoint exists")
    p.add_argument("--cache", help="feature cache folder (default: $NAPARI_NRF_CACHE or ~/.cache/napari-nrf)")
    add_device_arg(p)
    p.add_argument("--nproc", type=int, default=1,
                   help="data-parallel processes on this machine (re-launches through torchrun; with CUDA one "
                        "GPU each, NCCL; on CPUs gloo); the same global batch, so the same model as one "
                        "process within rounding (default: %(default)s; docs/scale.md)")


def add_training_inputs(p, data_help: str = "response set file(s) (.h5), one per subject") -> None:
    """The inputs of every command that trains a new model: data, --out, the backbone."""
    p.add_argument("data", nargs="+", help=data_help)
    p.add_argument("--out", required=True, help="output model bundle (.safetensors)")
    p.add_argument("--backbone", default="efficientnet-lite0", help="image backbone (default: %(default)s)")
    p.add_argument("--backbone-weights", metavar="PATH",
                   help="local weights file of the backbone (offline CLIP/DINOv2; recorded in the model)")


def register(sub) -> None:
    p = sub.add_parser("train", help="train a model (an NRF; --kind for any other) on response sets (HDF5) "
                                      "and save a .safetensors bundle")
    p.add_argument("--kind", metavar="KIND", help=KIND_HELP)
    add_training_inputs(p)
    p.add_argument("--preset", default="demo", choices=["demo", "paper", "tiny"], help="model size (default: %(default)s)")
    p.add_argument("--width", type=int, help="MLP width (overrides the preset)")
    p.add_argument("--depth", type=int, help="MLP Linear layers (overrides the preset)")
    p.add_argument("--downsample-dim", type=int, help="per-token projection size d of the merger")
    p.add_argument("--merged-dim", type=int, help="output size of each token map's fuse layer")
    add_fit_args(p)
    from napari_nrf.cluster import add_slurm_arguments

    add_slurm_arguments(p)
    p.add_argument("--jobs-dir", help="with --slurm: the jobs folder, on a file system the nodes share "
                                      "(default: $NAPARI_NRF_JOBS or <cache>/jobs)")
    p.add_argument("--no-wait", action="store_true", help="with --slurm: queue the job and return")
    p.set_defaults(func=_train)

    p = sub.add_parser("evaluate", help="voxelwise accuracy, retrieval and a ridge baseline of a model")
    p.add_argument("--kind", metavar="KIND", help=KIND_HELP)
    p.add_argument("model", help="model bundle (.safetensors)")
    p.add_argument("data", nargs="+", help="response set file(s) (.h5)")
    p.add_argument("--split", default="test", choices=["train", "val", "test"], help="the split to score (default: %(default)s)")
    p.add_argument("--json", dest="json_out", help="write the report here (default: <model>.eval.json)")
    p.add_argument("--stdout-json", action="store_true", help=STDOUT_JSON_HELP)
    p.add_argument("--baselines", default="ridge",
                   help="comma-separated baselines fitted on the train split: ridge (robust, pooled + spatial "
                        "features), fwrf (Gaussian receptive fields, trained like the NRF; minutes), none "
                        "(default: %(default)s)")
    p.add_argument("--no-ridge", action="store_true", help="no baselines (the same as --baselines none)")
    p.add_argument("--candidates", type=int, default=50, help="images per retrieval trial (default: %(default)s)")
    p.add_argument("--cache", help="feature cache folder")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"],
                   help="inference precision (default: $NAPARI_NRF_PRECISION or auto: bf16 on CUDA and on CPUs "
                        "with fast bf16, AMX / AVX-512 BF16; fp32 elsewhere)")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("query", help="predicted response volumes (MNI NIfTI) of images")
    p.add_argument("--kind", metavar="KIND", help=KIND_HELP)
    p.add_argument("model", help="model bundle (.safetensors)")
    p.add_argument("images", nargs="+", help="image files or folders of images")
    p.add_argument("--resolution", type=float, default=2.0, help="grid spacing in mm (0.5-8, default: %(default)s)")
    p.add_argument("--mask", default=None,
                   help="data (brain points near the voxels the model was trained on; the default for models "
                        "with training voxels), brain or gm (the whole brain / grey matter: extrapolation "
                        "outside the training voxels), none, or a mask/label NIfTI")
    p.add_argument("--outside", default="nan", choices=["nan", "0"],
                   help="value written outside the mask (default: NaN; 0 for tools that need it)")
    p.add_argument("--subject", help="subject (voxel-indexed models with several subjects; Rest2Visual: whose "
                                      "rest map)")
    p.add_argument("--rest-map", metavar="FILE",
                   help="Rest2Visual: a new person's rest map NIfTI (napari-nrf rest-map); predicts for them")
    p.add_argument("--out", required=True, help="output folder; one volume and its .json sidecar per image, "
                                                 "and dataset_description.json")
    p.add_argument("--names", choices=["bids", "plain"], default="bids",
                   help="file names: bids (space-MNI152NLin6Asym_res-2mm_desc-<image>_response.nii.gz, a BIDS "
                        "derivative) or plain (<image>.nii.gz, the earlier names) (default: %(default)s)")
    p.add_argument("--table", action="store_true",
                   help="also write <volume>_clusters.tsv beside each volume: peaks / clusters (MNI mm, size, "
                        "region of the --atlas or the default visual areas) above --table-threshold (default: off)")
    p.add_argument("--table-threshold", type=float, default=None,
                   help="|value| for --table in the map's units (default: half the 99.5th percentile of |value|)")
    p.add_argument("--atlas", metavar="NIFTI", help="label atlas naming the regions of --table (default: the "
                                                     "simulator's visual areas at published centroids)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--devices", metavar="LIST",
                   help="spread the images over these devices, one worker each: cuda:0,cuda:1 or cpu,cpu "
                        "(default: --device); the files are the same as from one device")
    p.add_argument("--batch-images", type=int, default=4,
                   help="images encoded and queried together (default: %(default)s)")
    p.add_argument("--cache", help="feature cache folder (default: no cache for queries)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"],
                   help="inference precision (default: $NAPARI_NRF_PRECISION or auto: bf16 on CUDA and on CPUs "
                        "with fast bf16, AMX / AVX-512 BF16; fp32 elsewhere)")
    p.set_defaults(func=_query)


def _set_precision(args) -> None:
    """``--precision`` overrides $NAPARI_NRF_PRECISION for this process (napari_nrf.precision)."""
    if getattr(args, "precision", None):
        import os

        os.environ["NAPARI_NRF_PRECISION"] = args.precision


def _device(name):
    from napari_nrf.errors import choose_device

    return choose_device(name)


def _backbone_config(args) -> dict | None:
    """``--backbone-weights`` as a backbone config (None: the backbone's default weights)."""
    w = getattr(args, "backbone_weights", None)
    if not w:
        return None
    if not Path(w).is_file():
        raise FileNotFoundError(f"--backbone-weights: file not found: {w}")
    return {"weights": str(Path(w).resolve())}


def _cache(path):
    from napari_nrf.features import FeatureCache

    return FeatureCache(path)


def _train(args) -> int:
    from tqdm import tqdm

    from napari_nrf.data.responseset import ResponseSet
    from napari_nrf.models.bundle import check_bundle_path
    from napari_nrf.settings import NRF_FIT, FitSettings
    from napari_nrf.recipes import train_nrf

    check_bundle_path(args.out)  # before minutes of training, not after
    bcfg = _backbone_config(args)
    over = {k: v for k, v in (("width", args.width), ("depth", args.depth), ("downsample_dim", args.downsample_dim),
                              ("merged_dim", args.merged_dim)) if v is not None}
    from napari_nrf.cluster import params_from_args

    if params_from_args(args) is not None:
        return _train_on_cluster(args, over, bcfg)
    sets = [ResponseSet.load(p) for p in args.data]
    out = Path(args.out)
    ck = Path(args.checkpoint_dir) if args.checkpoint_dir else out.with_name(out.name + ".ckpt")
    bars = TrainingBars("training")
    model, hist = train_nrf(sets, backbone=args.backbone, backbone_config=bcfg, preset=args.preset, out=out,
                            model_overrides=over, **FitSettings.from_args(args, NRF_FIT).to_kwargs(),
                            checkpoint_dir=ck, resume=not args.no_resume, feature_cache=_cache(args.cache),
                            device=_device(args.device), **bars.callbacks())
    bars.close()
    print(f"saved {out} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters); "
          + _best_text(hist))
    return 0


def _train_on_cluster(args, over, bcfg) -> int:
    """``train --slurm``: the same training as a job on the cluster (submitit), followed
    here unless --no-wait; it requeues at its time limit and resumes from its last epoch."""
    from napari_nrf.cli.jobs import _follow, manager_for
    from napari_nrf.settings import NRF_FIT, FitSettings
    from napari_nrf.train_jobs import submit_train

    if (args.nproc or 1) > 1:
        raise NapariNRFError("--nproc runs ranks on this machine; on SLURM use the sbatch script of docs/scale.md")
    kw = dict(FitSettings.from_args(args, NRF_FIT).to_kwargs(), backbone=args.backbone, preset=args.preset,
              model_overrides=over or None, feature_cache=args.cache)
    if bcfg:
        kw["backbone_config"] = bcfg
    mgr = manager_for(args)
    job = submit_train(mgr, args.data, args.out, device=args.device, overwrite=getattr(args, "overwrite", False),
                       **kw)
    print(f"job {job.id} ({job.dir}) submitted to {mgr.submitit_params.get('cluster') or 'SLURM'}")
    if args.no_wait:
        print(f"follow it with: napari-nrf jobs list --jobs-dir {mgr.root}")
        return 0
    return _follow(mgr, job)


class TrainingBars:
    """tqdm bars for :func:`napari_nrf.train.fit`: one per subject while the backbone
    encodes its images (before the first step), then one for the training steps with the
    epoch, loss and validation r. ``callbacks()`` gives fit's keyword arguments."""

    def __init__(self, desc: str):
        self.desc = desc
        self.bar = None
        self.feature_bars: dict = {}

    def _steps(self, total):
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="step", desc=self.desc)
        return self.bar

    def progress(self, done, total):
        bar = self._steps(total)
        bar.total = total
        bar.n = done
        bar.refresh()

    def on_epoch(self, rec):
        v = rec.get("val_median_pearson")
        self._steps(None).set_postfix(epoch=rec["epoch"], loss=f"{rec['train_loss']:.4f}",
                                      val_r=f"{v:.4f}" if v is not None else "-")

    def feature_progress(self, done, total, subject):
        bar = self.feature_bars.get(subject)
        if bar is None:
            from tqdm import tqdm

            bar = self.feature_bars[subject] = tqdm(total=total, unit="img", desc=f"features {subject}")
        bar.n = done
        bar.refresh()
        if total is not None and done >= total:
            bar.close()

    def callbacks(self) -> dict:
        return {"progress": self.progress, "on_epoch": self.on_epoch, "feature_progress": self.feature_progress}

    def close(self):
        for bar in [*self.feature_bars.values(), self.bar]:
            if bar is not None:
                bar.close()


def _best_text(hist) -> str:
    """How the kept epoch was chosen, for the final line of a training command."""
    cal = (hist.calibration or {}).get("message")
    cal = f"; {cal}" if cal else ""
    if hist.best_score == hist.best_score:  # not NaN: there were validation images
        r2 = getattr(hist, "best_r2", float("nan"))
        tail = f", R^2 = {r2:.4f}" if r2 == r2 else ""
        return f"best epoch {hist.best_epoch}, validation median voxel r = {hist.best_score:.4f}{tail}{cal}"
    return f"no validation images (split == val), so the last epoch ({hist.best_epoch}) was kept{cal}"


def _evaluate(args) -> int:
    from napari_nrf.data.responseset import ResponseSet
    from napari_nrf.evaluate import evaluate, format_table, write_json
    from napari_nrf.models import load_model

    _set_precision(args)
    from napari_nrf.evaluate import BASELINES

    names = () if args.no_ridge or args.baselines.strip() in ("", "none") else \
        tuple(b.strip() for b in args.baselines.split(",") if b.strip())
    bad = sorted(set(names) - set(BASELINES))
    if bad:
        raise SystemExit(f"--baselines: unknown {', '.join(bad)} (choose from {', '.join(BASELINES)}, none)")
    model = load_model(args.model, device=_device(args.device))
    cache = _cache(args.cache)
    reports = []
    for p in args.data:
        rs = ResponseSet.load(p)
        reports.append(evaluate(model, rs, split=args.split, feature_cache=cache, baselines=names,
                                n_candidates=args.candidates))
    print(format_table(reports))
    out = Path(args.json_out) if args.json_out else Path(args.model).with_suffix(".eval.json")
    write_json({"model": str(args.model), "reports": reports}, out)
    args.json_result = {"model": str(args.model), "reports": reports}
    print(f"report: {out}")
    return 0


def _query(args) -> int:
    from tqdm import tqdm

    from napari_nrf import space
    from napari_nrf.features import image_files, load_image_file
    from napari_nrf.models import load_model
    from napari_nrf.query import coverage_mask, volume_file_names
    from napari_nrf.query_shard import ShardedQuery, parse_devices

    _set_precision(args)
    from napari_nrf.volume_meta import volume_sidecar, write_volume

    grid = space.Grid.mni(args.resolution)
    mask_arg = args.mask or "data"  # honest default: where the model has data (see below)
    mask_spec = None if mask_arg in ("none", "all", "") else mask_arg
    # Check every input before the long work, so a typo in the last image or the mask
    # does not fail after minutes of queries.
    data_mask = mask_spec in ("data", "coverage")
    mask = None if data_mask else space.resolve_mask(mask_spec, grid)
    images = image_files(args.images)  # a folder stands for its image files
    for path in images:
        load_image_file(path)
    names = volume_file_names(images, args.names, args.resolution, args.subject)
    devices = parse_devices(args.devices or _device(args.device))
    model = load_model(args.model, device=devices[0])
    if data_mask and args.mask is None and not model.subjects:
        import sys

        print("note: this model records no training voxels; computing the whole brain (--mask brain)",
              file=sys.stderr)
        data_mask, mask_spec, mask = False, "brain", space.resolve_mask("brain", grid)
    if data_mask:
        mask = coverage_mask(model, grid)
        if not mask.any():
            raise NapariNRFError("--mask data: the model records no training voxels inside the brain; "
                             "use --mask brain or gm")
    elif mask_spec in ("brain", "gm", None):
        import sys

        print(f"note: --mask {mask_spec or 'none'} extends past the model's training voxels: the volume "
              "there is extrapolation (--mask data keeps where the model has data)", file=sys.stderr)
    if getattr(args, "rest_map", None):
        from napari_nrf.models.rest2visual import subject_from_rest_map

        args.subject = subject_from_rest_map(model, args.rest_map)
    if args.subject and model.continuous and not model.conditioned:
        import sys

        print(f"note: --subject {args.subject} is ignored: this model is one field over MNI space, "
              "the same for every subject", file=sys.stderr)
    atlas = None
    if args.atlas:
        from napari_nrf.experiments import load_atlas

        atlas = load_atlas(args.atlas)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sq = ShardedQuery(model, devices, batch_images=args.batch_images,
                      feature_cache=_cache(args.cache) if args.cache else None)

    def write(i, vol):  # in the worker that made the volume
        side = volume_sidecar("response", grid, model=model, model_path=args.model, image=str(images[i]),
                              mask=mask_spec if isinstance(mask_spec, str) else "none",
                              outside="0" if args.outside == "0" else "NaN")
        dst = write_volume(out / names[i], vol, grid, side)
        if args.table:
            from napari_nrf.experiments import write_map_table

            write_map_table(vol, grid, dst, threshold=args.table_threshold, atlas=atlas)
        tqdm.write(f"{images[i]} -> {dst}  grid {grid.shape} at {args.resolution:g} mm")

    with tqdm(total=len(images), unit="img", desc="query" + (f" on {len(devices)} devices" if len(devices) > 1
                                                                else "")) as bar:
        def progress(done, total):
            bar.n = done
            bar.refresh()

        sq.volumes(images, grid, mask=mask, subject=args.subject, on_volume=write, progress=progress)
    from napari_nrf.bids import write_dataset_description

    write_dataset_description(out)  # the folder is a BIDS derivative dataset (GeneratedBy)
    return 0

