"""SLURM through submitit: the options, profiles and true cluster states of jobs.

The jobs of :mod:`napari_nrf.jobs` run on a cluster when their manager has
``backend="submitit"``; this module turns what a user gives (CLI flags ``--slurm
--partition gpu --time 240 --gpus 1 --mem 32 ...``, a small TOML profile, the Training
jobs widget's fields) into submitit's executor parameters, and asks the cluster what
became of a job (``sacct`` through submitit's own watcher), so that ``napari-nrf jobs
list`` and the widget show pending / running / failed / timeout after napari restarts,
and a job the cluster killed is ``failed``, not forever ``running``.

A profile (``--slurm-profile gpu.toml``)::

    # napari-nrf SLURM profile
    [slurm]
    partition = "gpu"
    time = 240            # minutes (the job requeues itself at the limit and resumes)
    gpus = 1
    mem = 32              # GB
    account = "my-lab"
    cpus = 8
    array_parallelism = 4
    # any other submitit parameter by its own name, e.g.
    slurm_constraint = "a100"

Keys may sit at the top level or under ``[slurm]``; a ``cluster`` key ("slurm", "local",
"debug") picks submitit's executor (default: SLURM when ``sbatch`` exists, else local).
Flags given on the command line override the profile.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from napari_nrf.errors import NapariNRFError

# Our option -> submitit's executor parameter.
OPTIONS = {
    "partition": "slurm_partition",
    "time": "timeout_min",
    "gpus": "gpus_per_node",
    "mem": "mem_gb",
    "account": "slurm_account",
    "cpus": "cpus_per_task",
    "array_parallelism": "slurm_array_parallelism",
    "qos": "slurm_qos",
}

# SLURM job states (sacct) by what they mean for a job of ours.
WAITING = {"PENDING", "REQUEUED", "CONFIGURING", "RESIZING", "SUSPENDED", "REQUEUE_HOLD", "REQUEUE_FED"}
RUNNING = {"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING"}
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE",
         "PREEMPTED", "REVOKED", "SPECIAL_EXIT", "FINISHED", "INTERRUPTED", "DEAD"}


class ClusterError(NapariNRFError):
    """A bad SLURM option or profile, or submitit missing."""


def require_submitit():
    try:
        import submitit
    except ImportError:
        raise ClusterError("SLURM jobs need the submitit package: pip install submitit "
                           "(or napari-nrf[cluster])") from None
    return submitit


def load_profile(path) -> dict:
    """A TOML profile (see the module doc) as a flat dict of options."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ClusterError(f"--slurm-profile {path}: no such file")
    try:
        import tomllib
    except ImportError:  # Python 3.10: give the options as flags instead
        raise ClusterError("--slurm-profile needs Python 3.11 or later (tomllib); on 3.10 give the "
                           "options as flags (--partition, --time, ...)") from None
    try:
        with open(p, "rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ClusterError(f"--slurm-profile {path}: not valid TOML ({exc})") from None
    flat = {k: v for k, v in data.items() if not isinstance(v, dict)}
    flat.update(data.get("slurm", {}) or {})
    return flat


def submitit_params(profile=None, **options) -> dict:
    """submitit executor parameters from a profile file and options (ours or submitit's
    names; None values are skipped, options override the profile). ``cluster`` is kept
    for :class:`napari_nrf.jobs.JobManager` ("slurm", "local", "debug" or None: auto)."""
    merged = dict(load_profile(profile)) if profile else {}
    merged.update({k: v for k, v in options.items() if v is not None})
    out = {}
    for k, v in merged.items():
        key = OPTIONS.get(k.replace("-", "_"), k.replace("-", "_"))
        if key in ("timeout_min", "gpus_per_node", "cpus_per_task", "slurm_array_parallelism", "mem_gb"):
            if not isinstance(v, (int, float)) or isinstance(v, bool) or v <= 0:
                raise ClusterError(f"SLURM option {k} = {v!r}: must be a positive number")
            # submitit's types: minutes, GPUs, CPUs, array size are int, memory a float
            v = float(v) if key == "mem_gb" else int(math.ceil(v))
        out[key] = v
    cl = out.get("cluster")
    if cl not in (None, "slurm", "local", "debug"):
        raise ClusterError(f"cluster = {cl!r}: choose slurm, local or debug")
    return out


def add_slurm_arguments(p) -> None:
    """The SLURM options of every command that queues a job (finetune, train)."""
    g = p.add_argument_group("SLURM (through submitit; docs/scale.md)")
    g.add_argument("--slurm", action="store_true", help="run the job on a SLURM cluster through submitit")
    g.add_argument("--slurm-profile", metavar="TOML", help="a profile of SLURM options (implies --slurm)")
    g.add_argument("--partition", help="SLURM partition")
    g.add_argument("--time", type=int, metavar="MIN",
                   help="time limit in minutes; at the limit the job requeues and resumes from its last epoch")
    g.add_argument("--gpus", type=int, help="GPUs per node")
    g.add_argument("--mem", type=float, metavar="GB", help="memory per node in GB")
    g.add_argument("--account", help="SLURM account")
    g.add_argument("--cpus", type=int, help="CPUs per task")
    g.add_argument("--array-parallelism", type=int, metavar="N",
                   help="submitit's slurm_array_parallelism (array jobs at once); passed on, but napari-nrf's "
                        "jobs are single SLURM jobs so far (K bases: --gpus K --devices on one node)")
    g.add_argument("--cluster", choices=["slurm", "local", "debug"],
                   help="submitit executor (default: slurm when sbatch exists, else local)")


def params_from_args(args) -> dict | None:
    """submitit parameters from parsed ``add_slurm_arguments`` flags, or None when the
    command runs here (no --slurm, no profile, no --cluster)."""
    if not (getattr(args, "slurm", False) or getattr(args, "slurm_profile", None) or getattr(args, "cluster", None)):
        return None
    require_submitit()
    opts = {k: getattr(args, k, None) for k in (*OPTIONS, "cluster")}
    return submitit_params(getattr(args, "slurm_profile", None), **opts)


# ---- the cluster's view of a job -----------------------------------------------------------
def pid_alive(pid) -> bool:
    """True while process ``pid`` of this host runs (a zombie, dead but not yet reaped,
    does not)."""
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, PermissionError, OSError):
        return False
    try:
        with open(f"/proc/{int(pid)}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def cluster_state(state: dict) -> str | None:
    """What the cluster says of a submitit job (its ``state.json`` dict): a SLURM state
    (PENDING, RUNNING, FAILED, TIMEOUT, CANCELLED, ...), RUNNING/FINISHED for submitit's
    local executor (by process), UNKNOWN when nobody can tell; None for other jobs."""
    if state.get("backend") != "submitit" or not state.get("submitit_id"):
        return None
    jid = str(state["submitit_id"])
    cl = state.get("cluster") or "slurm"
    if cl in ("local", "debug"):
        # submitit's local job id is its controller's pid (same host only).
        import socket

        if state.get("submit_host") not in (None, socket.gethostname()):
            return "UNKNOWN"
        return "RUNNING" if cl == "local" and jid.isdigit() and pid_alive(int(jid)) else "FINISHED"
    try:
        import submitit

        folder = state.get("submitit_folder") or "."
        info = submitit.SlurmJob(folder, jid).get_info(mode="force")
    except Exception:  # noqa: BLE001 - no sacct here, a broken cluster: nobody can tell
        return "UNKNOWN"
    s = (info or {}).get("State") or "UNKNOWN"
    return s.split()[0].upper()  # "CANCELLED by 1000" -> CANCELLED


def is_alive(cstate: str | None) -> bool:
    """True while the cluster may still run the job (waiting, running or unknown)."""
    return cstate is None or cstate not in ENDED
