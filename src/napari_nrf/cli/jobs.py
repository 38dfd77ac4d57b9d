"""Subcommands ``finetune`` (new-subject adaptation as a job) and ``jobs`` (list, resume, cancel)."""

from __future__ import annotations

import sys

from napari_nrf.cli._common import add_device_arg
from napari_nrf.settings import FINETUNE_FIT, FitSettings, add_fit_arguments


def register(sub) -> None:
    p = sub.add_parser("finetune", help="adapt K pretrained models to a new subject: finetune each, then a "
                                        "voxelwise ensemble (runs as a resumable background job)")
    p.add_argument("--base", nargs="+", required=True, help="pretrained model bundles (.safetensors)")
    p.add_argument("--data", required=True, help="the new subject's response set (.h5)")
    p.add_argument("--images", type=int, help="training images to use (default: all of the train split)")
    p.add_argument("--out", required=True, help="output ensemble bundle (.safetensors); never a base")
    add_fit_arguments(p, FINETUNE_FIT, skip=("val_every",))
    p.add_argument("--no-finetune", action="store_true", help="only fit the ensemble over the bases as they are")
    add_device_arg(p)
    p.add_argument("--threads", type=int, help="torch CPU threads of the job (default: torch's choice)")
    p.add_argument("--cache", help="feature cache folder (default: $NAPARI_NRF_CACHE or ~/.cache/napari-nrf)")
    p.add_argument("--jobs-dir", help="jobs folder (default: $NAPARI_NRF_JOBS or <cache>/jobs)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("--inline", action="store_true", help="run in this process instead of a child process")
    p.add_argument("--devices", metavar="LIST",
                   help="finetune the bases concurrently, one per device: cuda:0,cuda:1 (default: one after "
                        "another on --device)")
    from napari_nrf.cluster import add_slurm_arguments

    add_slurm_arguments(p)
    p.set_defaults(func=_finetune)

    p = sub.add_parser("jobs", help="background jobs: list, resume, cancel")
    p.add_argument("action", choices=["list", "resume", "cancel", "show"],
                   help="list the jobs, resume or cancel one, or show one's record")
    p.add_argument("job", nargs="?", help="job id (resume, cancel, show)")
    p.add_argument("--jobs-dir", help="jobs folder (default: $NAPARI_NRF_JOBS or <cache>/jobs)")
    p.add_argument("--json", action="store_true", help="list, show: print the jobs (the job) as one JSON document")
    p.set_defaults(func=_jobs)


def _follow(mgr, job) -> int:
    """Wait for ``job`` with a progress bar; Ctrl-C cancels it (at its next step)."""
    from tqdm import tqdm

    bar = tqdm(total=1000, unit="‰", desc=job.name, leave=True)

    def show(rec):
        if rec.get("fraction") is not None:
            bar.n = int(1000 * rec["fraction"])
        post = {k: rec[k] for k in ("stage", "base", "epoch", "loss", "val_pearson") if rec.get(k) is not None}
        for k in ("loss", "val_pearson"):
            if k in post:
                post[k] = f"{post[k]:.4f}"
        bar.set_postfix(post, refresh=True)

    try:
        mgr.wait(job.id, callback=show)
    except KeyboardInterrupt:
        print("cancelling (the job stops at its next step)...", file=sys.stderr)
        mgr.cancel(job.id)
        mgr.wait(job.id, callback=show)
    bar.close()
    return _summary(job)


def _summary(job) -> int:
    st = job.state
    print(f"job {job.id}: {st.get('state')}")
    if st.get("state") == "done":
        for k, v in (st.get("result") or {}).items():
            print(f"  {k}: {v}")
        return 0
    if st.get("error"):
        print(f"  error: {st['error']}  (log: {job.dir / 'log.txt'})", file=sys.stderr)
    if st.get("state") == "interrupted":
        print(f"  resume with: napari-nrf jobs resume {job.id}", file=sys.stderr)
    return 1


def manager_for(args):
    """The JobManager of a command that queues a job: SLURM through submitit when the
    SLURM flags ask for it (napari_nrf.cluster), else child processes of this machine."""
    from napari_nrf.cluster import params_from_args
    from napari_nrf.jobs import JobError, JobManager

    params = params_from_args(args)
    if params is not None and getattr(args, "inline", False):
        raise JobError("--inline runs here; it cannot be combined with --slurm")
    if params is None:
        return JobManager(args.jobs_dir)
    return JobManager(args.jobs_dir, backend="submitit", submitit_params=params)


def _finetune(args) -> int:
    from napari_nrf.train_jobs import submit_finetune

    mgr = manager_for(args)
    settings = FitSettings.from_args(args, FINETUNE_FIT).to_kwargs()
    settings.pop("val_every")
    kw = dict(n_images=args.images, **settings, finetune=not args.no_finetune, feature_cache=args.cache)
    if args.devices:
        from napari_nrf.query_shard import parse_devices

        kw["devices"] = parse_devices(args.devices, check=mgr.backend == "local")  # a node's GPUs: named here
    job = submit_finetune(mgr, args.base, args.data, args.out, device=args.device, overwrite=args.overwrite,
                          start=not args.inline, threads=args.threads, **kw)
    print(f"job {job.id} ({job.dir})")
    if args.inline:
        return _summary(mgr.run_inline(job.id, threads=args.threads))
    return _follow(mgr, job)


def _jobs(args) -> int:
    from napari_nrf.jobs import JobError, JobManager

    from pathlib import Path

    if args.jobs_dir and not Path(args.jobs_dir).is_dir():
        raise JobError(f"--jobs-dir {args.jobs_dir}: no such folder")
    mgr = JobManager(args.jobs_dir)
    if args.action == "list":
        mgr.poll(start=False)
        args.json_result = []
        for job in mgr.jobs():
            last = job.last_progress()
            frac = last.get("fraction")
            pct = f"{100 * frac:5.1f}%" if frac is not None else "     -"
            cs = job.cluster_state  # SLURM's own word (PENDING, RUNNING, TIMEOUT, ...) for cluster jobs
            where = f"slurm:{cs}" if cs and job.state.get("backend") == "submitit" else job.device
            print(f"{job.id}  {job.status:<11} {pct}  {where:<7} {job.name}")
            args.json_result.append({"id": job.id, "status": job.status, "fraction": frac, "where": where,
                                     "name": job.name, "dir": str(job.dir), "last": last})
        return 0
    if not args.job:
        raise JobError(f"'jobs {args.action}' needs a job id (see 'napari-nrf jobs list')")
    if args.action == "show":
        job = mgr.get(args.job)
        print(f"{job.id}: {job.status}\n  spec: {job.spec}\n  state: {job.state}\n  last: {job.last_progress()}")
        args.json_result = {"id": job.id, "status": job.status, "spec": job.spec, "state": job.state,
                            "last": job.last_progress()}
        return 0
    if args.action == "cancel":
        mgr.poll(start=False)
        mgr.cancel(args.job)
        print(f"cancel requested for {args.job}")
        return 0
    mgr.poll()
    job = mgr.resume(args.job)
    return _follow(mgr, job)
