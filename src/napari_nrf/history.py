"""Training records beside a model bundle.

Every bundle written after training (``model.save(path)`` of a model that
:func:`napari_nrf.train.fit` trained) gets ``<bundle>.history.csv`` next to it: one row
per epoch with the mean training loss, the validation median voxel r and R^2 (empty on
epochs without validation), the seconds the epoch took and whether it is the kept
epoch. When the ``tensorboard`` package is installed (``pip install
"napari-nrf[tensorboard]"``) the same scalars also go to ``<bundle>.tensorboard/``
(``tensorboard --logdir <bundle>.tensorboard``); set ``NAPARI_NRF_TENSORBOARD=0`` to
skip that.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from napari_nrf.errors import write_text_atomic

# Known columns first, in this order; any other key of a record follows.
COLUMNS = ("epoch", "train_loss", "val_median_pearson", "val_median_r2", "seconds", "kept")


def history_path(bundle) -> Path:
    """``model.safetensors`` -> ``model.safetensors.history.csv``."""
    bundle = Path(bundle)
    return bundle.with_name(bundle.name + ".history.csv")


def config_path(bundle) -> Path:
    """``model.safetensors`` -> ``model.safetensors.config.toml`` (the settings of the run
    that made it, written by the CLI: napari_nrf.cli._config)."""
    bundle = Path(bundle)
    return bundle.with_name(bundle.name + ".config.toml")


def tensorboard_dir(bundle) -> Path:
    bundle = Path(bundle)
    return bundle.with_name(bundle.name + ".tensorboard")


def write_history(bundle, records: list[dict], best_epoch: int | None = None) -> Path:
    """Write ``records`` (fit's per-epoch dicts) as ``<bundle>.history.csv`` (atomic), and
    to TensorBoard when it is installed. Returns the CSV path."""
    rows = [dict(r, kept=int(r.get("epoch") == best_epoch)) if best_epoch is not None else dict(r)
            for r in records]
    cols = [c for c in COLUMNS if any(c in r for r in rows)]
    cols += sorted({k for r in rows for k in r} - set(cols))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r[k]) for k in cols})
    out = write_text_atomic(history_path(bundle), buf.getvalue())
    if os.environ.get("NAPARI_NRF_TENSORBOARD", "1") != "0":
        write_tensorboard(tensorboard_dir(bundle), records)
    return out


def read_history(bundle) -> list[dict]:
    """The rows of ``<bundle>.history.csv`` (numbers as floats, empty cells as None); [] if absent."""
    p = history_path(bundle)
    if not p.is_file():
        return []
    with open(p, newline="") as f:
        return [{k: (float(v) if v not in ("", None) else None) for k, v in r.items()} for r in csv.DictReader(f)]


def write_tensorboard(logdir, records: list[dict]) -> bool:
    """Scalars of ``records`` as TensorBoard events in ``logdir`` (step: the epoch).
    Returns False (and writes nothing) when tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # the optional tensorboard extra
        return False
    with SummaryWriter(log_dir=str(logdir)) as w:
        for r in records:
            for k, v in r.items():
                if k != "epoch" and isinstance(v, (int, float)) and v == v:
                    w.add_scalar(k, float(v), global_step=int(r.get("epoch", 0)))
    return True
