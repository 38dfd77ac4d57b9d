"""Training settings: one dataclass with the defaults, the checks and the help text.

:class:`FitSettings` holds the schedule of :func:`napari_nrf.train.fit`. The CLI options
(:func:`add_fit_arguments` / :meth:`FitSettings.from_args`), the job specs (flat keyword
arguments, checked by :meth:`FitSettings.check_kwargs` when a job is queued) and the
widget fields (:func:`field_spec`) are made from it, and fit's own keyword defaults read
:data:`NRF_FIT`. The recipes differ only in their presets:

=================  ======  ============  ============  =====  ============  ========
preset             epochs  batch_images  batch_voxels  lr     weight_decay  patience
=================  ======  ============  ============  =====  ============  ========
``NRF_FIT``        steps   32            2000          1e-3   0.015         8
``UNIVERSAL_FIT``  steps   32            5000          3e-4   0             8
``TRANSFER_FIT``   steps   32            5000          3e-4   0             8
``FINETUNE_FIT``   20x20   32            2000          1e-3   0.015         3
``MOVIE_FIT``      11      16 (TRs)      all           1e-4   0             4
=================  ======  ============  ============  =====  ============  ========

The schedule of ``NRF_FIT``, ``UNIVERSAL_FIT`` and ``TRANSFER_FIT`` is in optimiser steps
(``steps`` None: :func:`napari_nrf.train.default_steps` of the training images of every
subject fitted, the new subject's for a transfer; epochs derived) with about 40
validations a run, keeping the best validation R^2; the others count epochs (``val_every`` 1); ``FINETUNE_FIT``'s epochs are of
20 steps (``steps_per_epoch``), the same 400 steps at every data size. (The Universal presets are the paper's Adam, no weight decay, 5000 voxels per
image, AdamW with weight_decay 0 being Adam, at lr 3e-4 instead of the paper's 1e-3: see
``UNIVERSAL_FIT``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from napari_nrf.errors import NapariNRFError


class SettingsError(NapariNRFError):
    """Settings that cannot train (a zero batch gives a NaN loss, 0 epochs no model)."""


def _f(default, help: str, minimum=None, maximum=None, kind: str = "", optional: bool = False):
    return field(default=default, metadata={"help": help, "min": minimum, "max": maximum, "kind": kind,
                                            "optional": optional})


@dataclass(frozen=True)
class FitSettings:
    """The schedule of one :func:`napari_nrf.train.fit` run (see the module doc for presets)."""

    epochs: int | None = _f(None, "training epochs (default: derived from --steps)", 1, 100000, optional=True)
    steps: int | None = _f(None, "optimiser steps (default: clip(2 x training images, 400, 2000); "
                                 "give steps or epochs)", 1, 10_000_000, optional=True)
    batch_images: int = _f(32, "images per step", 1, 100000)
    batch_voxels: int = _f(2000, "voxels sampled per step", 1, 10_000_000)
    steps_per_epoch: int | None = _f(None, "steps per epoch (default: one pass over the training images)", 1,
                                     10_000_000, optional=True)
    lr: float = _f(1e-3, "learning rate (AdamW)", 0.0, None)
    weight_decay: float = _f(0.015, "AdamW weight decay", 0.0, None)
    alpha: float = _f(0.1, "weight of the cosine term of the loss, (1 - alpha) MSE - alpha cos", 0.0, 1.0)
    patience: int = _f(8, "early stopping patience (validations without improvement)", 1, 100000)
    seed: int = _f(0, "seeds batch order, voxel sampling and dropout", None, None)
    val_every: int | None = _f(None, "validate every this many epochs (default: about 40 validations a run)",
                               1, 100000, optional=True)

    # ---- conversions ---------------------------------------------------------------------
    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    def to_kwargs(self) -> dict:
        """The settings as :func:`napari_nrf.train.fit` keyword arguments."""
        return dataclasses.asdict(self)

    def replace(self, **changes) -> "FitSettings":
        """A copy with ``changes`` (None values are ignored: "not given"). Giving ``steps``
        drops the preset's ``epochs`` and the other way round: the schedule is one of them."""
        changes = {k: v for k, v in changes.items() if v is not None}
        if "steps" in changes and "epochs" not in changes:
            changes["epochs"] = None
        elif "epochs" in changes and "steps" not in changes:
            changes["steps"] = None
        return dataclasses.replace(self, **changes)

    def merged(self, kwargs: dict) -> dict:
        """``kwargs`` with every setting they lack filled in from these settings (a
        schedule given as ``steps`` replaces the preset's ``epochs`` and the other way round)."""
        out = {**self.to_kwargs(), **kwargs}
        if kwargs.get("steps") is not None and kwargs.get("epochs") is None:
            out["epochs"] = None
        elif kwargs.get("epochs") is not None and kwargs.get("steps") is None:
            out["steps"] = None
        return out

    def check(self) -> "FitSettings":
        """Raise :class:`SettingsError` for settings that cannot train; returns self."""
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if v is None:
                if f.metadata["optional"]:
                    continue
                raise SettingsError(f"{f.name} must be given")
            lo, hi = f.metadata["min"], f.metadata["max"]
            if isinstance(v, float) and not math.isfinite(v):
                raise SettingsError(f"{f.name} must be a finite number, got {v}")
            if f.name == "lr" and not v > 0:
                raise SettingsError(f"the learning rate (lr) must be > 0, got {v}")
            if lo is not None and v < lo:
                raise SettingsError(f"{f.name} must be at least {lo}, got {v}")
            if hi is not None and v > hi:
                raise SettingsError(f"{f.name} must be at most {hi}, got {v}")
        if self.epochs is not None and self.steps is not None:
            raise SettingsError("give the schedule as steps or as epochs, not both")
        return self

    def check_kwargs(self, kwargs: dict) -> None:
        """Check the fit settings among ``kwargs`` (missing ones take these defaults)."""
        self.replace(**{k: kwargs[k] for k in self.names() if k in kwargs}).check()

    @classmethod
    def from_args(cls, args, defaults: "FitSettings | None" = None) -> "FitSettings":
        """Settings from an argparse namespace made with :func:`add_fit_arguments`."""
        base = defaults or cls()
        vals = {n: getattr(args, n, None) for n in cls.names()}
        if vals.get("steps") is not None and vals.get("epochs") == base.epochs:
            vals["epochs"] = None  # --steps given: the preset's epoch count is not the user's
        return base.replace(**vals)


NRF_FIT = FitSettings()
# The presets of the other recipes. Why each value (the grids and runs that chose them):
# docs/results.md, "Why the default fit settings".
# Universal encoder (train-universal) and a new subject's transfer: NRF's step schedule with
# the paper's Adam (no weight decay, 5000 voxels a step) at lr 3e-4.
UNIVERSAL_FIT = FitSettings(lr=3e-4, weight_decay=0.0, batch_voxels=5000)
TRANSFER_FIT = UNIVERSAL_FIT
# The voxel embeddings' start (std) and learning-rate multiplier: an embedding moves only
# when its voxel is sampled, so it starts small and learns faster than the shared weights.
EMBED_INIT_STD = 0.01
EMBEDDING_LR_SCALE = 10.0
# Finetuning: 20 epochs of 20 steps (400 steps at every data size) at lr 1e-3.
FINETUNE_FIT = FitSettings(epochs=20, steps_per_epoch=20, lr=1e-3, patience=3, val_every=1)
# The movie encoder-decoder (the paper's Adam lr 1e-4, 11 epochs, batch 16 TRs): every voxel
# in every step (its decoder reads all of them); alpha is unused (the kind's own loss).
MOVIE_FIT = FitSettings(epochs=11, lr=1e-4, weight_decay=0.0, batch_images=16, batch_voxels=10_000_000,
                        patience=4, val_every=1)
# The movie-features kind (a linear network on cached frame features): many cheap epochs.
MOVIE_FEATURES_FIT = FitSettings(epochs=20, lr=3e-4, weight_decay=0.0, batch_images=16, batch_voxels=10_000_000,
                                 patience=5, val_every=1)


def field_spec(name: str, defaults: FitSettings = NRF_FIT) -> dict:
    """Default, range and help of setting ``name`` (for a widget field)."""
    f = {f.name: f for f in dataclasses.fields(FitSettings)}[name]
    return {"default": getattr(defaults, name), "min": f.metadata["min"], "max": f.metadata["max"],
            "help": f.metadata["help"]}


def add_fit_arguments(parser, defaults: FitSettings = NRF_FIT, skip=(), help: dict | None = None) -> None:
    """One ``--option`` per setting (``batch_images`` -> ``--batch-images``) with the
    defaults of ``defaults`` and the dataclass's help; ``skip`` leaves some out."""
    help = help or {}
    for f in dataclasses.fields(FitSettings):
        if f.name in skip:
            continue
        d = getattr(defaults, f.name)
        typ = float if f.type in ("float", float) else int
        text = help.get(f.name, f.metadata["help"])
        if d is not None:
            text += " (default: %(default)s)"
        parser.add_argument("--" + f.name.replace("_", "-"), type=typ, default=d, help=text)
# Rest2Visual: a volume is decoded per image, so fewer images per step and every sampled
# voxel of the subject in the MSE (the paper's loss is over all brain voxels).
# Rest2Visual's default (the shared NRF field with the rest-map term): the NRF's schedule.
REST2VISUAL_FIELD_FIT = NRF_FIT
REST2VISUAL_FIT = FitSettings(batch_images=8, batch_voxels=100_000, lr=1e-3, weight_decay=0.0, alpha=0.0,
                              patience=6)
