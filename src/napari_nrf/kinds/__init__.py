"""Model kinds as specifications: one :class:`KindSpec` per kind says everything the
application needs to train, evaluate and offer it, without importing torch.

A kind is its model class (the contract, :class:`napari_nrf.models.EncodingModel`) plus a
spec: its preset :class:`~napari_nrf.settings.FitSettings`, how to build a model from
data, its training recipe, its evaluation, the CLI verbs of its own that the generic
``train`` / ``evaluate`` verbs hand over to, and the Qt-free core of its widget panel.
Functions are named as ``"module:attribute"`` strings, imported when used, so listing the
kinds (``napari-nrf --help``, the Training jobs widget) stays light.

The built-in kinds' specs live in this package's subpackages (``kinds/nrf``,
``kinds/universal``, ...). A third-party kind registers through the entry-point group
``napari_nrf.model_kinds``: the entry point names a module or object that registers its
model class (:func:`napari_nrf.models.register`) and has an attribute ``SPEC`` (a
:class:`KindSpec`), or is the spec itself. A kind registered without a spec gets one made
from its model class (loadable, queryable; no training recipe).

Worked example (tests/kinds/toy_pkg): a package with ``model.py`` (the model class, with
``example()``) and ``__init__.py``::

    SPEC = KindSpec(kind="toy-linear", title="toy linear readout", model="toy_pkg.model:ToyLinear",
                    build="toy_pkg.model:build")

and in its ``pyproject.toml``::

    [project.entry-points."napari_nrf.model_kinds"]
    toy-linear = "toy_pkg"

gets ``napari-nrf train --kind toy-linear``, ``evaluate``, ``query``, a Training jobs entry,
a render in the Response volume widget and the check battery
(:func:`napari_nrf.testing.check_kind`).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path

from napari_nrf.errors import NapariNRFError
from napari_nrf.settings import NRF_FIT, FitSettings


class KindError(NapariNRFError):
    """An unknown kind, or an operation a kind's spec does not offer."""


@dataclass(frozen=True)
class KindSpec:
    """Everything the application asks of a model kind, besides its model's contract.

    Attributes
    ----------
    kind : str
        The bundle kind (the model class's ``kind``).
    title : str
        One line for menus and ``--help``.
    model : str
        ``"module:Class"`` of the model (imported when used).
    fit : FitSettings
        The preset of its training (:func:`napari_nrf.train.fit` defaults).
    build : str or None
        ``"module:function"``: ``build(train_sets, backbone=, feature_shapes=, seed=) ->
        model``, a new untrained model for these response sets (the generic recipe fits it).
    recipe : str or None
        ``"module:function"``: ``recipe(data, out=, backbone=, **fit_kwargs) -> (model,
        History)``, the kind's own training from data files (``data``: list of paths).
        None with ``build``: the generic recipe (:meth:`train`).
    evaluate : str or None
        ``"module:function"``: ``evaluate(model, data, **kw) -> dict`` (None: the generic
        voxelwise evaluation of ``napari-nrf evaluate``).
    verbs : dict
        Generic verb -> the kind's own CLI verb that ``napari-nrf train/evaluate --kind``
        hands over to, with its flags (``{"train": "train-universal"}``).
    panel : dict
        The Qt-free core of its panel in the Training jobs widget: ``{"data": what the data
        files are, "presets": model sizes (or empty)}``.
    fittable : bool
        The one training loop trains it (False: the ensemble, fitted by least squares).
    data : str
        What its recipe and evaluation read: "response-sets" (.h5 response sets of still
        images), "rest-maps" (response sets with rest maps) or "movie" (a movie data set).
    """

    kind: str
    title: str
    model: str
    fit: FitSettings = NRF_FIT
    build: str | None = None
    recipe: str | None = None
    evaluate: str | None = None
    verbs: dict = field(default_factory=dict)
    panel: dict = field(default_factory=dict)
    fittable: bool = True
    data: str = "response-sets"

    @property
    def trainable(self) -> bool:
        """It can be trained from data files (a recipe, or a builder for the generic one)."""
        return self.fittable and (self.recipe is not None or self.build is not None)

    def model_class(self):
        return resolve(self.model)

    def train(self, data, out=None, *, backbone: str = "efficientnet-lite0", **fit_kwargs):
        """Train a new model of this kind on the data files ``data`` (paths) and save it to
        ``out`` (rank 0 of a data-parallel run). Returns (model, History)."""
        data = [str(d) for d in ([data] if isinstance(data, (str, Path)) else data)]
        if self.recipe is not None:
            return resolve(self.recipe)(data, out=out, backbone=backbone, **fit_kwargs)
        if self.build is None or not self.fittable:
            raise KindError(f"model kind {self.kind!r} has no training recipe")
        from napari_nrf.data.responseset import ResponseSet
        from napari_nrf.distributed import is_main
        from napari_nrf.features import BACKBONES
        from napari_nrf.train import fit

        bcfg = fit_kwargs.pop("backbone_config", None)
        sets = [ResponseSet.load(p) for p in data]
        kw = self.fit.merged(fit_kwargs)
        shapes = dict(BACKBONES[backbone].feature_shapes) if backbone in BACKBONES else None
        model = resolve(self.build)(sets, backbone=backbone, feature_shapes=shapes, seed=kw.get("seed", 0))
        model.backbone_name = model.backbone_name or backbone
        if bcfg:
            model.backbone_config = dict(bcfg)
        hist = fit(model, sets, **kw)
        if out is not None and is_main():
            model.save(out)
        return model, hist


def resolve(ref: str):
    """The object named by ``"module:attribute"``."""
    mod, _, attr = ref.partition(":")
    obj = importlib.import_module(mod)
    for part in attr.split(".") if attr else ():
        obj = getattr(obj, part)
    return obj


BUILTIN = ("nrf", "universal", "rest2visual", "movie", "ensemble")
_SPECS: dict[str, KindSpec] = {}
_LOADED = False


def register_spec(spec: KindSpec) -> KindSpec:
    """Make ``spec`` known (a kind registered twice by two different specs is refused)."""
    if not isinstance(spec, KindSpec):
        raise TypeError(f"a kind's SPEC must be a napari_nrf.kinds.KindSpec, got {type(spec).__name__}")
    old = _SPECS.get(spec.kind)
    if old is not None and old != spec:
        raise TypeError(f"model kind {spec.kind!r} has two specs")
    _SPECS[spec.kind] = spec
    return spec


def _from_entry_point(obj) -> KindSpec | None:
    if isinstance(obj, KindSpec):
        return obj
    spec = vars(obj).get("SPEC") if hasattr(obj, "__dict__") else None
    return spec if isinstance(spec, KindSpec) else None


def specs() -> dict[str, KindSpec]:
    """kind -> spec of every kind: the built-in ones, each entry point of
    ``napari_nrf.model_kinds`` (its ``SPEC``), and a spec made from the model class for a
    kind registered without one."""
    global _LOADED
    if not _LOADED:
        from importlib.metadata import entry_points

        for name in BUILTIN:
            register_spec(importlib.import_module(f"{__name__}.{name}").SPEC)
        for ep in entry_points(group="napari_nrf.model_kinds"):
            spec = _from_entry_point(ep.load())
            if spec is not None:
                register_spec(spec)
        _LOADED = True
    return dict(_SPECS)


def spec_for(kind: str) -> KindSpec:
    """The spec of ``kind`` (a registered model class without one gets a minimal spec)."""
    known = specs()
    if kind in known:
        return known[kind]
    from napari_nrf.models import MODEL_KINDS, discover_kinds

    discover_kinds()
    cls = MODEL_KINDS.get(kind)
    if cls is None:
        raise KindError(f"unknown model kind {kind!r}; known: {', '.join(sorted(set(known) | set(MODEL_KINDS)))}")
    return register_spec(KindSpec(kind=kind, title=f"{kind} (no training recipe)",
                                  model=f"{cls.__module__}:{cls.__qualname__}", fittable=False))


def trainable_kinds() -> list[str]:
    """Kinds with a training recipe (what the Training jobs widget offers)."""
    return sorted(k for k, s in specs().items() if s.trainable)


def bundle_kind(path) -> str:
    """The kind recorded in a model bundle's metadata (no tensor is read)."""
    from napari_nrf.models.bundle import read_metadata

    return str(read_metadata(path).get("kind", ""))
