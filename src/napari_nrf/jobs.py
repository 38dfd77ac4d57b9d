"""Background jobs: long work (finetuning, transfer) in a child process, off the viewer.

A job is a folder under the jobs root (``$NAPARI_NRF_CACHE/jobs`` by default)::

    <root>/<job id>/
        spec.json        what to run: {"target": "module:function", "kwargs": {...}, "device", ...}
        state.json       {"state": queued|running|done|failed|cancelled|interrupted, "pid", ...}
        progress.jsonl   one JSON object per line: epoch, step, loss, val_pearson, fraction, eta_s, ...
        checkpoints/     the target's checkpoints (resume reads them)
        cancel           present when a cancel was asked for
        log.txt          the child's stdout/stderr

The target is a plain function ``fn(ctx, **kwargs) -> dict`` that gets a
:class:`JobContext` (progress reports, the cancel flag, the checkpoint folder, whether
this run resumes). It runs in a child process started with the *spawn* method (safe with
CUDA, unlike fork). Everything lives on disk, so a job survives its parent: after napari
or the CLI restarts, :meth:`JobManager.poll` marks a job whose process died
``interrupted`` and :meth:`JobManager.resume` queues it again; the target resumes from
its last checkpoint.

Rules the manager enforces: at most ``max_per_device`` running jobs per device (one GPU
job at a time per device by default; queued jobs start first-come first-served when the
device frees up); a job's declared ``outputs`` may never name one of its ``protected``
inputs (base models are never overwritten); outputs are written by the targets with
atomic renames, so a killed or cancelled job leaves no half-written file.

Optional cluster back-end: ``JobManager(backend="submitit", submitit_params=...)``
submits the same child entry point through submitit (SLURM, or its local executor) when
submitit is installed.

>>> mgr = JobManager()
>>> job = mgr.submit("napari_nrf.train_jobs:finetune_job", {"bases": [...], "data": "new.h5", "out": "new.safetensors"})
>>> mgr.wait(job.id, callback=lambda rec: print(rec))
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import importlib
import json
import os
import signal
import socket
import time
import traceback
import uuid
from pathlib import Path

from napari_nrf import cluster
from napari_nrf.errors import Cancelled, NapariNRFError, atomic_write

STATES = ("queued", "running", "done", "failed", "cancelled", "interrupted")
FINAL = ("done", "failed", "cancelled")


class JobError(NapariNRFError):
    """A job cannot be submitted, found or resumed as asked."""


class JobCancelled(Cancelled):
    """Raised inside a target (by :meth:`JobContext.check_cancel`) to stop at a safe point."""


def default_jobs_dir() -> Path:
    """``$NAPARI_NRF_JOBS``, else ``<feature cache folder>/jobs``."""
    env = os.environ.get("NAPARI_NRF_JOBS")
    if env:
        return Path(env)
    from napari_nrf.features.extract import default_cache_dir

    return default_cache_dir() / "jobs"


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _write_json(path: Path, obj) -> None:
    """Atomic JSON write (temporary file in the same folder + rename)."""
    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=1, default=str)
        f.flush()
        os.fsync(f.fileno())


def _read_json(path: Path, default=None):
    try:
        with open(path) as f:
            return json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return default


_pid_alive = cluster.pid_alive  # the one process-liveness check (cluster.py, below this module)


def _stat_of(path) -> list | None:
    """[size, mtime_ns] of an output file, or None when it does not exist."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [int(st.st_size), int(st.st_mtime_ns)]


def foreign_outputs(spec: dict, state: dict) -> list[str]:
    """The job's outputs that exist but that this job did not write (by its own record
    ``state["written"]`` of each output's size and time), when it may not replace
    existing files (submitted without ``overwrite``): replacing them would destroy
    another job's or the user's file."""
    if spec.get("overwrite"):
        return []
    written = state.get("written") or {}
    return [o for o in spec.get("outputs", []) if _stat_of(o) is not None and written.get(o) != _stat_of(o)]


def _owner_alive(spec: dict, state: dict) -> bool:
    """True when the process that submitted (or last resumed) the job still runs here:
    only that process starts the job, since a job is its starter's child and ends with it."""
    owner = state.get("owner") or spec.get("submitter") or {}
    if not owner or owner.get("host") != socket.gethostname():
        return False
    return owner.get("pid") != os.getpid() and _pid_alive(owner.get("pid"))


def _same_device(a: str, b: str) -> bool:
    norm = {"cuda": "cuda:0", "gpu": "cuda:0", "mps": "mps:0"}
    return norm.get(a, a) == norm.get(b, b)


# Job folders written before a job target moved record its old name in spec.json; they
# resume through this table (old module -> new module, for the names that moved).
MOVED_TARGETS = {
    "napari_nrf.finetune": ("napari_nrf.train_jobs",
                            ("finetune_job", "transfer_job", "train_job", "submit_finetune", "submit_train")),
}


def _resolve_target(target: str):
    if not isinstance(target, str) or ":" not in target:
        raise JobError(f"a job target is 'module:function', got {target!r}")
    mod, attr = target.split(":", 1)
    if mod in MOVED_TARGETS and attr in MOVED_TARGETS[mod][1]:
        mod = MOVED_TARGETS[mod][0]
    try:
        fn = getattr(importlib.import_module(mod), attr)
    except (ImportError, AttributeError) as exc:
        raise JobError(f"job target {target!r} cannot be imported ({exc})") from exc
    return fn


# ---- inside the child -----------------------------------------------------------------

class JobContext:
    """What a target sees of its job.

    Attributes
    ----------
    job_dir : Path
    checkpoint_dir : Path
        Where the target keeps its checkpoints (``job_dir/checkpoints``).
    device : str
        "cpu", "cuda:0", ...
    resume : bool
        True when this run continues an earlier, interrupted run of the same job.
    """

    def __init__(self, job_dir, device: str = "cpu", resume: bool = False):
        self.job_dir = Path(job_dir)
        self.checkpoint_dir = self.job_dir / "checkpoints"
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        self.device = device
        self.resume = bool(resume)
        self._t0 = time.time()
        self._f0 = None

    def report(self, **fields) -> dict:
        """Append one progress record (JSON line) and return it.

        Usual fields: ``epoch``, ``step``, ``loss``, ``val_pearson``, ``stage``, and
        ``fraction`` (0..1 of the whole job); an ``eta_s`` (seconds) is added from the
        fraction's rate in this run when the target gives none.
        """
        rec = {"time": time.time()}
        rec.update({k: v for k, v in fields.items() if v is not None})
        f = rec.get("fraction")
        if f is not None and "eta_s" not in rec:
            if self._f0 is None:
                self._f0, self._t0 = float(f), time.time()
            elif f > self._f0:
                rec["eta_s"] = (time.time() - self._t0) / (f - self._f0) * (1.0 - f)
        line = json.dumps(rec, default=_json_default)
        with open(self.job_dir / "progress.jsonl", "a") as fh:
            fh.write(line + "\n")
            fh.flush()
        return rec

    def cancelled(self) -> bool:
        """True once a cancel was asked for (the ``cancel`` file exists)."""
        return (self.job_dir / "cancel").exists()

    def check_cancel(self) -> None:
        """Raise :class:`JobCancelled` when a cancel was asked for."""
        if self.cancelled():
            raise JobCancelled()

    def save_checkpoint(self, state: dict, name: str = "last.pt") -> Path:
        """Atomically save ``state`` (tensors, numbers, strings, nested dicts/lists)."""
        import torch

        path = self.checkpoint_dir / name
        with atomic_write(path, None) as tmp:
            torch.save(state, tmp)
        return path

    def load_checkpoint(self, name: str = "last.pt"):
        """The saved state or None; loaded with ``weights_only=True`` (never unpickles code)."""
        import torch

        path = self.checkpoint_dir / name
        if not path.exists():
            return None
        return torch.load(path, map_location="cpu", weights_only=True)


def _json_default(o):
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    return str(o)


def _child_main(job_dir: str, resume: bool = False) -> dict:
    """Entry point of the child process (and of submitit): run the job's target once."""
    jd = Path(job_dir)
    spec = _read_json(jd / "spec.json")
    state = _read_json(jd / "state.json", {})
    log = open(jd / "log.txt", "a", buffering=1)
    with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        if state.get("backend") == "submitit":  # no parent of ours knows the pid
            state.update(pid=os.getpid(), host=socket.gethostname(), runs=int(state.get("runs", 0)) + 1)
            _write_json(jd / "state.json", state)
        if spec.get("threads"):
            import torch

            torch.set_num_threads(int(spec["threads"]))
        ctx = JobContext(jd, device=spec.get("device", "cpu"), resume=resume)
        before = {o: _stat_of(o) for o in spec.get("outputs", [])}
        try:
            if ctx.cancelled():
                raise JobCancelled()
            foreign = foreign_outputs(spec, state)
            if foreign:
                raise JobError(f"the output {foreign[0]} exists and this job did not write it (another job or "
                               "process did); it is kept. Submit again with --overwrite to replace it")
            fn = _resolve_target(spec["target"])
            result = fn(ctx, **spec.get("kwargs", {}))
            state.update(state="done", result=result if isinstance(result, dict) else {"value": result})
        except JobCancelled:
            state.update(state="cancelled")
        except SystemExit:
            if state.get("backend") == "submitit":
                # submitit requeues a job at its time limit or on preemption by exiting from
                # its signal handler (after SubmititRunner.checkpoint): the job goes on.
                raise
            traceback.print_exc()
            state.update(state="failed", error="the job exited (sys.exit)")
        except BaseException as exc:  # noqa: BLE001 - report every failure in the job's state
            traceback.print_exc()
            state.update(state="failed", error=f"{type(exc).__name__}: {exc}")
        # Keep what the parent wrote meanwhile (pid, attempt), add the outcome.
        final = _read_json(jd / "state.json", {})
        final.update({k: state[k] for k in ("state", "result", "error") if k in state})
        # The job's own record of what it wrote: a resume may replace these, nothing else.
        written = dict(final.get("written") or {})
        for o, st0 in before.items():
            now = _stat_of(o)
            if now is not None and now != st0:
                written[o] = now
        final["written"] = written
        final.update(ended=_now(), pid=None)
        if final.get("state") == "done":
            final.pop("exitcode", None)
            final["error"] = None
        _write_json(jd / "state.json", final)
        state = final
    log.close()
    return state


class SubmititRunner:
    """What submitit runs: :func:`_child_main` of a job folder, checkpointable.

    At its time limit or on preemption SLURM signals the job (USR2); submitit then calls
    :meth:`checkpoint`, which asks for the same job folder to run again with
    ``resume=True``, and requeues it. The targets checkpoint every epoch in the job
    folder (``fit`` writes model, optimiser and history), so the requeued run continues
    from the last finished epoch and ends with the weights of an uninterrupted run.
    """

    def __call__(self, job_dir: str, resume: bool = False) -> dict:
        return _child_main(job_dir, resume)

    def checkpoint(self, job_dir: str, resume: bool = False):
        from submitit.helpers import DelayedSubmission

        jd = Path(job_dir)
        st = _read_json(jd / "state.json", {})
        st["requeues"] = int(st.get("requeues", 0)) + 1
        _write_json(jd / "state.json", st)
        with contextlib.suppress(OSError):
            with open(jd / "progress.jsonl", "a") as fh:
                fh.write(json.dumps({"time": time.time(), "stage": "requeued (time limit or preemption)"}) + "\n")
        return DelayedSubmission(SubmititRunner(), str(jd), True)


# ---- the parent's view ------------------------------------------------------------------

class Job:
    """A job folder seen from the parent: spec, state and progress records."""

    def __init__(self, job_dir):
        self.dir = Path(job_dir)
        self.id = self.dir.name
        self.spec = _read_json(self.dir / "spec.json", {})

    def __repr__(self):
        return f"Job({self.id!r}, {self.status})"

    @property
    def name(self) -> str:
        return self.spec.get("name") or self.id

    @property
    def group(self) -> str | None:
        """The job's group (spec field ``group``); None for jobs queued without one."""
        return self.spec.get("group")

    @property
    def device(self) -> str:
        return self.spec.get("device", "cpu")

    @property
    def state(self) -> dict:
        return _read_json(self.dir / "state.json", {"state": "queued"})

    @property
    def status(self) -> str:
        return self.state.get("state", "queued")

    @property
    def outputs(self) -> list[str]:
        return list(self.spec.get("outputs", []))

    def read_progress(self, offset: int = 0) -> tuple[list[dict], int]:
        """Progress records written after byte ``offset``, and the new offset. A line
        still being written (no newline yet) is left for the next call."""
        p = self.dir / "progress.jsonl"
        if not p.exists():
            return [], offset
        with open(p, "rb") as f:
            f.seek(offset)
            data = f.read()
        end = data.rfind(b"\n") + 1
        recs = []
        for line in data[:end].splitlines():
            try:
                recs.append(json.loads(line))
            except json.JSONDecodeError:  # a line torn by a hard kill
                continue
        return recs, offset + end

    def progress(self) -> list[dict]:
        """Every progress record so far."""
        return self.read_progress(0)[0]

    def last_progress(self) -> dict:
        recs = self.progress()
        return recs[-1] if recs else {}

    @property
    def cluster_state(self) -> str | None:
        """The cluster's last word on a submitit job (PENDING, RUNNING, TIMEOUT, ...;
        updated by :meth:`JobManager.poll`), None for local jobs."""
        return (_read_json(self.dir / "cluster.json", {}) or {}).get("state")


class JobManager:
    """Queue, start, watch, cancel and resume jobs under ``root``.

    Parameters
    ----------
    root : path or None
        Jobs folder (default :func:`default_jobs_dir`).
    max_per_device : int
        Running jobs allowed per device at once (1: one GPU job at a time per device).
    backend : "local" or "submitit"
        "local" runs each job in a spawned child process of this process; "submitit"
        submits it through submitit (SLURM, or ``submitit_params={"cluster": "local"}``).
    submitit_params : dict
        ``cluster`` (None = auto-detect SLURM, "local", "debug") and executor parameters
        (``timeout_min``, ``slurm_partition``, ``gpus_per_node``, ...).
    """

    def __init__(self, root=None, max_per_device: int = 1, backend: str = "local", submitit_params: dict | None = None):
        self.root = Path(root) if root is not None else default_jobs_dir()
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_per_device = int(max_per_device)
        if backend not in ("local", "submitit"):
            raise JobError(f"backend must be 'local' or 'submitit', got {backend!r}")
        if backend == "submitit":
            import importlib.util

            if importlib.util.find_spec("submitit") is None:
                raise JobError("the submitit back-end needs the submitit package (pip install submitit)")
        self.backend = backend
        self.submitit_params = dict(submitit_params or {})
        self._procs: dict = {}  # job id -> multiprocessing.Process or submitit job

    # ---- listing ------------------------------------------------------------------------
    def jobs(self) -> list[Job]:
        """Every job under the root, oldest first."""
        out = [Job(d) for d in self.root.iterdir() if (d / "spec.json").exists()]
        return sorted(out, key=lambda j: (j.spec.get("created", ""), j.id))

    def get(self, job_id: str) -> Job:
        d = self.root / str(job_id)
        if not (d / "spec.json").exists():
            raise JobError(f"no job {job_id!r} under {self.root}")
        return Job(d)

    # ---- submit -------------------------------------------------------------------------
    def submit(self, target: str, kwargs: dict | None = None, *, name: str | None = None, device: str = "cpu",
               outputs=(), protected=(), overwrite: bool = False, start: bool = True,
               threads: int | None = None, group: str | None = None) -> Job:
        """Queue ``target(ctx, **kwargs)`` on ``device``; starts it now when the device is free.

        ``outputs`` are the files the job will write and ``protected`` the inputs it must
        never write (base models): an output that is a protected file, or (without
        ``overwrite``) an existing file, is refused with a :class:`JobError`. ``threads``
        sets the child's torch CPU threads (default: torch's own choice). ``group`` (e.g.
        "training") lets a view list only its kind of jobs (:attr:`Job.group`).
        """
        _resolve_target(target)
        kwargs = dict(kwargs or {})
        try:
            json.dumps(kwargs)
        except TypeError as exc:
            raise JobError(f"job arguments must be JSON-serialisable ({exc})") from exc
        outs = [str(Path(o).expanduser().resolve()) for o in outputs]
        prot = {str(Path(p).expanduser().resolve()) for p in protected}
        for o in outs:
            if o in prot:
                raise JobError(f"the output {o} is one of the job's inputs; a job never overwrites a base model")
            if not overwrite and Path(o).exists():
                raise JobError(f"the output {o} exists already (pass overwrite=True / --overwrite to replace it)")
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        job_id = f"{stamp}-{uuid.uuid4().hex[:6]}"
        d = self.root / job_id
        with self._lock():  # the check of other jobs' claims and this job's claim are one step
            self._check_claims(outs)
            d.mkdir(parents=True)
            spec = {"target": target, "kwargs": kwargs, "name": name or target.split(":")[-1], "device": device,
                    "outputs": outs, "protected": sorted(prot), "created": _now(), "threads": threads,
                    "group": group, "backend": self.backend, "overwrite": bool(overwrite),
                    "submitter": {"pid": os.getpid(), "host": socket.gethostname()}}
            if self.backend == "submitit":  # where the job runs is the job's: resume requeues it there
                spec["submitit_params"] = self.submitit_params
            _write_json(d / "spec.json", spec)
            _write_json(d / "state.json", {"state": "queued", "attempt": 0, "resume": False})
        job = Job(d)
        if start:
            self.poll()
        return job

    def _check_claims(self, outputs, job_id: str | None = None) -> None:
        """Refuse outputs that a queued, running or interrupted job (other than ``job_id``)
        will write: two jobs never race for one file. Call under :meth:`_lock`."""
        mine = set(outputs)
        for other in self.jobs():
            if other.id == job_id or other.status in FINAL:
                continue
            clash = mine & set(other.outputs)
            if clash:
                raise JobError(f"the output {sorted(clash)[0]} is claimed by job {other.id} ({other.status}); "
                               "choose another output, or wait for that job (or cancel it) first")

    def run_inline(self, job_id: str, threads: int | None = None) -> Job:
        """Run a queued job in this process (no child; ``napari-nrf finetune --inline``)
        and return it finished; ``threads`` sets torch's CPU threads first."""
        job = self.get(job_id)
        if threads:
            import torch

            torch.set_num_threads(int(threads))
        _child_main(str(job.dir))
        return job

    # ---- the queue ----------------------------------------------------------------------
    @contextlib.contextmanager
    def _lock(self):
        """Exclusive lock on the queue (several managers may share a root: napari + CLI)."""
        from filelock import FileLock

        with FileLock(str(self.root / ".queue.lock")):
            yield

    def _is_alive(self, job: Job, st: dict) -> bool:
        p = self._procs.get(job.id)
        if p is not None and hasattr(p, "is_alive"):
            return p.is_alive()
        if st.get("backend") == "submitit":
            # Ask the cluster (sacct through submitit), also for jobs submitted by an earlier
            # napari session: a job the cluster killed is not running any more.
            cs = cluster.cluster_state({**st, **_read_json(job.dir / "submitit.json", {})})
            if cs is not None:
                _write_json(job.dir / "cluster.json", {"state": cs, "checked": _now()})
            if p is not None and cs in (None, "UNKNOWN"):
                return not p.done()
            return cluster.is_alive(cs)
        if st.get("host") not in (None, socket.gethostname()):
            return True  # running elsewhere (shared file system)
        if st.get("pid") is None:  # being started by another manager right now
            try:
                age = time.time() - _dt.datetime.fromisoformat(st.get("started")).timestamp()
            except (TypeError, ValueError):
                age = 1e9
            return age < 60
        return _pid_alive(st.get("pid"))

    def poll(self, start: bool = True) -> list[Job]:
        """Update states (finished or dead children) and start queued jobs on free devices.

        Call it periodically (the widget does on a timer; :meth:`wait` does).
        ``start=False``: only update the states (``jobs list`` / ``jobs cancel`` never
        start a queued job, which their process would end on exit).
        """
        with self._lock():
            jobs = self.jobs()
            busy: list[str] = []
            for job in jobs:
                st = job.state
                if st.get("state") != "running":
                    continue
                if self._is_alive(job, st):
                    if st.get("backend") != "submitit":
                        busy.append(job.device)
                    continue
                p = self._procs.pop(job.id, None)
                if p is not None and hasattr(p, "join"):
                    p.join(timeout=1)
                st = job.state  # the child may have written its final state meanwhile
                if st.get("state") == "running" and st.get("backend") == "submitit":
                    # The cluster ended the job without its final word: killed (scancel, a
                    # node failure, out of memory) or out of requeues. resume() continues
                    # from its checkpoints.
                    cs = job.cluster_state or "UNKNOWN"
                    sid = _read_json(job.dir / "submitit.json", {}).get("submitit_id")
                    st.update(state="cancelled" if (job.dir / "cancel").exists() else "failed", pid=None,
                              ended=_now(), error=st.get("error") or
                              f"the cluster job {sid} ended ({cs}) before the job finished")
                    _write_json(job.dir / "state.json", st)
                elif st.get("state") == "running":
                    # The process died without a final word: killed, crashed or its parent
                    # (napari) exited. Its checkpoints stay; resume() continues from them.
                    code = getattr(p, "exitcode", None)
                    st.update(state="interrupted", pid=None, ended=_now(), exitcode=code,
                              error=st.get("error") or f"the job process ended unexpectedly (exit code {code})")
                    if (job.dir / "cancel").exists():
                        st["state"] = "cancelled"
                    _write_json(job.dir / "state.json", st)
            for job in jobs if start else ():
                st = job.state
                if st.get("state") != "queued":
                    continue
                cluster_job = job.spec.get("backend") == "submitit"  # the cluster schedules it
                if not cluster_job and _owner_alive(job.spec, st):
                    continue  # its submitter starts it: a child of ours would end when we exit
                if not cluster_job and sum(_same_device(job.device, b) for b in busy) >= self.max_per_device:
                    continue
                self._start(job, bool(st.get("resume")))
                if not cluster_job:
                    busy.append(job.device)
        return self.jobs()

    def _start(self, job: Job, resume: bool) -> None:
        backend = job.spec.get("backend") or self.backend
        st = job.state
        st.update(state="running", backend=backend, host=socket.gethostname(), started=_now(), pid=None,
                  attempt=int(st.get("attempt", 0)) + 1, error=None, result=None)
        st.pop("exitcode", None)  # an earlier attempt's (a kill's -9): not this run's
        st.pop("ended", None)
        _write_json(job.dir / "state.json", st)
        if backend == "submitit":
            from napari_nrf.cluster import require_submitit

            submitit = require_submitit()
            params = dict(job.spec.get("submitit_params", self.submitit_params) or {})
            cluster = params.pop("cluster", None)
            folder = job.dir / "submitit"
            ex = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
            if params:
                ex.update_parameters(**params)
            sj = ex.submit(SubmititRunner(), str(job.dir), resume)
            # In a file of its own: the job may be running already and writing state.json.
            _write_json(job.dir / "submitit.json", {"submitit_id": str(sj.job_id), "cluster": ex.cluster,
                                                    "submitit_folder": str(folder),
                                                    "submit_host": socket.gethostname()})
            self._procs[job.id] = sj
            return
        import multiprocessing as mp

        # spawn, never fork: a forked child of a process that touched CUDA (or Qt) breaks.
        # daemon: if napari exits, the child goes too; the job resumes from its checkpoint.
        p = mp.get_context("spawn").Process(target=_child_main, args=(str(job.dir), resume), daemon=True,
                                            name=f"napari-nrf-job-{job.id}")
        p.start()
        st["pid"] = p.pid
        if job.state.get("state") == "running":  # (unless the child has finished already)
            _write_json(job.dir / "state.json", st)
        self._procs[job.id] = p

    # ---- control ------------------------------------------------------------------------
    def cancel(self, job_id: str) -> Job:
        """Ask a job to stop. A queued or interrupted job is cancelled at once; a running
        one stops at its next safe point (its target checks the cancel flag)."""
        job = self.get(job_id)
        if job.status in ("done", "failed", "cancelled"):
            raise JobError(f"job {job_id} has already ended ({job.status}); nothing to cancel")
        (job.dir / "cancel").touch()
        with self._lock():
            st = job.state
            if st.get("state") in ("queued", "interrupted"):
                st.update(state="cancelled", ended=_now())
                _write_json(job.dir / "state.json", st)
        return job

    def kill(self, job_id: str) -> None:
        """Kill the job's process at once (SIGKILL); the job becomes ``interrupted``."""
        job = self.get(job_id)
        p = self._procs.get(job.id)
        pid = getattr(p, "pid", None) or job.state.get("pid")
        if p is not None and hasattr(p, "cancel") and not hasattr(p, "pid"):
            p.cancel()
        elif pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        if p is not None and hasattr(p, "join"):
            p.join(timeout=10)
        self.poll()

    def resume(self, job_id: str, start: bool = True) -> Job:
        """Queue an interrupted, failed or cancelled job again; it continues from its last
        checkpoint (the target gets ``ctx.resume = True``)."""
        job = self.get(job_id)
        with self._lock():
            st = job.state
            if st.get("state") not in ("interrupted", "failed", "cancelled"):
                raise JobError(f"job {job.id} is {st.get('state')}; only interrupted, failed or cancelled jobs resume")
            foreign = foreign_outputs(job.spec, st)
            if foreign:
                raise JobError(f"job {job.id}: its output {foreign[0]} exists and this job did not write it (another "
                               "job or process did); resuming would replace it. Move that file away first, or "
                               "submit a new job with --overwrite")
            self._check_claims(job.outputs, job.id)
            with contextlib.suppress(FileNotFoundError):
                (job.dir / "cancel").unlink()
            st.update(state="queued", resume=True, error=None,
                      owner={"pid": os.getpid(), "host": socket.gethostname()})
            _write_json(job.dir / "state.json", st)
        if start:
            self.poll()
        return job

    def wait(self, job_id: str, timeout: float | None = None, interval: float = 0.2, callback=None) -> Job:
        """Poll until the job is done, failed, cancelled or interrupted; ``callback(record)``
        gets each new progress record. Raises TimeoutError after ``timeout`` seconds."""
        job = self.get(job_id)
        t0, offset = time.time(), 0
        while True:
            self.poll()
            recs, offset = job.read_progress(offset)
            if callback is not None:
                for r in recs:
                    callback(r)
            if job.status in FINAL + ("interrupted",):
                recs, offset = job.read_progress(offset)
                if callback is not None:
                    for r in recs:
                        callback(r)
                return job
            if timeout is not None and time.time() - t0 > timeout:
                raise TimeoutError(f"job {job.id} still {job.status} after {timeout} s")
            time.sleep(interval)

    def remove(self, job_id: str) -> None:
        """Delete a finished job's folder (its checkpoints and logs; outputs stay)."""
        import shutil

        job = self.get(job_id)
        if job.status in ("running", "queued"):
            raise JobError(f"job {job.id} is {job.status}; cancel it first")
        shutil.rmtree(job.dir)


# ---- a tiny demonstration target (tests, docs) --------------------------------------------

def demo_job(ctx: JobContext, out: str, n_steps: int = 40, steps_per_epoch: int = 10, seed: int = 0,
             checkpoint_every: int = 5, step_sleep: float = 0.0, dim: int = 8) -> dict:
    """Fit a linear map by noisy mini-batch SGD, checkpointing model, optimiser and RNG.

    Deterministic given ``seed``: an interrupted and resumed run ends with the same
    weights as an uninterrupted one. Writes ``out`` (a .safetensors file with the
    tensor ``w`` (dim,) float32) atomically at the end.
    """
    import torch
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(256, dim, generator=gen)
    y = x @ torch.linspace(-1, 1, dim) + 0.1 * torch.randn(256, generator=gen)
    w = torch.zeros(dim, requires_grad=True)
    opt = torch.optim.Adam([w], lr=0.05)
    step = 0
    ck = ctx.load_checkpoint() if ctx.resume else None
    if ck is not None:
        with torch.no_grad():
            w.copy_(ck["w"])
        opt.load_state_dict(ck["optim"])
        gen.set_state(ck["rng"])
        step = int(ck["step"])
    while step < n_steps:
        ctx.check_cancel()
        idx = torch.randint(0, len(x), (16,), generator=gen)
        loss = ((x[idx] @ w - y[idx]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if step % checkpoint_every == 0:
            ctx.save_checkpoint({"w": w.detach().clone(), "optim": opt.state_dict(), "rng": gen.get_state(),
                                 "step": step})
        ctx.report(epoch=(step - 1) // steps_per_epoch, step=step, loss=loss.item(), fraction=step / n_steps)
        if step_sleep:
            time.sleep(step_sleep)
    out = Path(out)
    with atomic_write(out, None) as tmp:
        save_file({"w": w.detach().clone()}, str(tmp))
    return {"out": str(out), "steps": step, "loss": loss.item()}
