"""Data-parallel training with ``torch.distributed``: ranks, process group, collectives.

The one training loop (:func:`napari_nrf.train.fit`) runs data-parallel when it is started
by ``torchrun`` (``torchrun --nproc-per-node N -m napari_nrf.cli train ...``, or the
training commands' ``--nproc N``, which re-launches through ``torch.distributed.run``):
torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and ``MASTER_ADDR/PORT`` in each
process's environment, :func:`setup` joins the process group (NCCL for CUDA devices,
gloo on CPUs) and every rank

* draws the same global batch (the batch plan is seeded, identical on every rank) and
  trains on its share of the batch's images (:func:`share`);
* sums its share's gradients with the other ranks' (one flattened all-reduce per step,
  :func:`allreduce_`): the loss of each share is weighted by its fraction of the batch,
  so the summed gradient is the gradient of the whole batch's loss, as on one process.
  This is what ``DistributedDataParallel`` does; the loop all-reduces itself because it
  calls the model through the contract's ``train_predict``, not ``forward``;
* validates its share of the validation images; per-voxel sums (n, sum p, sum t, sum p^2,
  sum t^2, sum pt) are all-reduced, so every rank gets the same scores and the same
  early-stopping decision.

Only rank 0 (:func:`is_main`) writes checkpoints, the best model and the output bundle
and calls the progress callbacks. A checkpoint holds the whole model and optimiser
state, which are identical on every rank, so a run resumes with any number of ranks.

Nothing here is needed on one process: every helper is a no-op when ``WORLD_SIZE`` is
unset or 1.
"""

from __future__ import annotations

import os

import numpy as np
import torch


def env() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) without it."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return 0, 1, 0
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0")))


def world_size() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return env()[1]


def rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return env()[0]


def is_main() -> bool:
    """True on rank 0 (and on a single process): the rank that writes files and reports."""
    return rank() == 0


def rank_device(device) -> torch.device:
    """The device of this rank: ``cuda`` (or None with CUDA available) becomes
    ``cuda:LOCAL_RANK``, one GPU per rank; an explicit ``cuda:i`` or ``cpu`` is kept."""
    from napari_nrf.errors import choose_device

    _, world, local = env()
    dev = torch.device(choose_device(None if device is None else str(device)))
    if world > 1 and dev.type == "cuda" and (device is None or str(device) in ("cuda", "gpu")):
        dev = torch.device("cuda", local % max(1, torch.cuda.device_count()))
    return dev


def setup(device) -> bool:
    """Join the process group when started by torchrun with more than one rank.

    NCCL when this rank trains on a CUDA device, gloo otherwise. Returns True when
    training is distributed (world size > 1).
    """
    _, world, _ = env()
    if world <= 1:
        return False
    dist = torch.distributed
    if not dist.is_initialized():
        dev = torch.device(device)
        backend = "nccl" if dev.type == "cuda" and dist.is_nccl_available() else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend=backend)
    return dist.get_world_size() > 1


def teardown() -> None:
    """Leave the process group (end of a distributed command)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def barrier() -> None:
    if world_size() > 1:
        torch.distributed.barrier()


def share(n: int, r: int | None = None, world: int | None = None) -> slice:
    """This rank's part of ``n`` items: contiguous, sizes differing by at most one."""
    r = rank() if r is None else r
    world = world_size() if world is None else world
    bounds = np.linspace(0, n, world + 1).round().astype(int)
    return slice(int(bounds[r]), int(bounds[r + 1]))


def allreduce_(tensors: list) -> None:
    """Sum ``tensors`` over the ranks in place, in one flattened collective."""
    if world_size() <= 1 or not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    torch.distributed.all_reduce(flat)
    o = 0
    for t in tensors:
        k = t.numel()
        t.copy_(flat[o:o + k].view_as(t))
        o += k


def allreduce_numpy(a: np.ndarray, device=None) -> np.ndarray:
    """Sum a float64 array over the ranks (on ``device``: NCCL needs CUDA tensors)."""
    if world_size() <= 1:
        return a
    t = torch.from_numpy(np.ascontiguousarray(a, np.float64))
    if device is not None and torch.device(device).type == "cuda":
        t = t.to(device)
    torch.distributed.all_reduce(t)
    return t.cpu().numpy()


def broadcast_object(obj, src: int = 0):
    """``obj`` of rank ``src`` on every rank (small objects: metadata, flags)."""
    if world_size() <= 1:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=src)
    return box[0]


def launch_torchrun(nproc: int, argv: list[str], module: str = "napari_nrf.cli") -> int:
    """Run ``python -m module argv`` on ``nproc`` ranks of this machine through
    ``torch.distributed.run`` (torchrun) and return its exit code. The ranks pick a free
    port (``--rdzv-endpoint localhost:0`` style standalone rendezvous)."""
    import subprocess
    import sys

    rest, skip = [], False
    for a in argv:  # the ranks run the command without --nproc (torchrun's parser would take it)
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            rest.append(a)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={int(nproc)}",
           "-m", module, *rest]
    return subprocess.call(cmd)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn_entry(local_rank: int, fn, world: int, port: int, args: tuple, threads: int | None):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(local_rank),
                      LOCAL_RANK=str(local_rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world))
    if threads:
        torch.set_num_threads(int(threads))
    try:
        fn(*args)
    finally:
        teardown()


def spawn_local(fn, nprocs: int, *args, threads: int | None = None) -> None:
    """Run ``fn(*args)`` on ``nprocs`` ranks of this machine (spawned processes with
    torchrun's environment variables; what tests and benchmarks use instead of the
    torchrun command). ``fn`` must be importable (a module-level function); it sees
    :func:`env` like under torchrun. Raises when a rank fails."""
    import torch.multiprocessing as tmp

    tmp.start_processes(_spawn_entry, args=(fn, int(nprocs), _free_port(), args, threads), nprocs=int(nprocs),
                        join=True, start_method="spawn")


# ---- validation sums --------------------------------------------------------------------
def voxel_sums(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Per-voxel sums (6, V) float64 of (n_images, V) predictions and responses: n, sum p,
    sum t, sum p^2, sum t^2, sum p t. Additive over images, so ranks add theirs."""
    p = np.asarray(pred, np.float64)
    t = np.asarray(true, np.float64)
    n = np.full(p.shape[1], p.shape[0], np.float64)
    return np.stack([n, p.sum(0), t.sum(0), (p * p).sum(0), (t * t).sum(0), (p * t).sum(0)])


def sums_scores(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pearson r and R^2 per voxel (float32) from :func:`voxel_sums` (NaN where constant),
    the same quantities as :func:`napari_nrf.train.voxel_pearson` / ``voxel_r2``."""
    n, sp, st, spp, stt, spt = s
    with np.errstate(invalid="ignore", divide="ignore"):
        cpp = spp - sp * sp / n
        ctt = stt - st * st / n
        cpt = spt - sp * st / n
        den = np.sqrt(np.clip(cpp, 0, None) * np.clip(ctt, 0, None))
        r = cpt / den
        sse = stt - 2 * spt + spp
        r2 = 1.0 - sse / ctt
    r[~(den > 0)] = np.nan
    r2[~(ctt > 0)] = np.nan
    return r.astype(np.float32), r2.astype(np.float32)
