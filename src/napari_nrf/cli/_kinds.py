"""``napari-nrf train / evaluate / query --kind K``: the generic verbs for every kind.

A kind's spec (:class:`napari_nrf.kinds.KindSpec`) may name a verb of its own for a
generic one (``universal``: ``train`` -> ``train-universal``); the command line is then
handed to that verb with the same flags (the old verbs stay, so scripts keep working).
``train --kind K`` of a kind without a verb of its own runs the kind's recipe with the
common training flags; ``evaluate`` without ``--kind`` takes the kind from the bundle.
"""

from __future__ import annotations

import argparse
from pathlib import Path

GENERIC = ("train", "evaluate", "query")


def _take_kind(rest: list[str]) -> tuple[str | None, list[str]]:
    kind, out, skip = None, [], False
    for i, a in enumerate(rest):
        if skip:
            skip = False
        elif a == "--kind" and i + 1 < len(rest):
            kind, skip = rest[i + 1], True
        elif a.startswith("--kind="):
            kind = a.split("=", 1)[1]
        else:
            out.append(a)
    return kind, out


def _bundle_in(rest: list[str]) -> str | None:
    """The first argument that is an existing model bundle (evaluate's and query's model)."""
    for a in rest:
        if not a.startswith("-") and a.endswith(".safetensors") and Path(a).is_file():
            return a
    return None


def route(argv: list[str]):
    """(argv for the parser, None), or (None, (spec, rest)) for the generic training of
    a kind without a train verb of its own."""
    if not argv or argv[0] not in GENERIC:
        return argv, None
    verb = argv[0]
    kind, rest = _take_kind(argv[1:])
    if kind is None and verb == "evaluate" and not {"-h", "--help"} & set(rest):
        bundle = _bundle_in(rest)
        if bundle is not None:
            from napari_nrf.kinds import bundle_kind

            try:
                kind = bundle_kind(bundle) or None
            except Exception:  # noqa: BLE001 - an unreadable bundle: the verb reports it
                kind = None
    if kind is None:
        return [verb, *rest], None
    from napari_nrf.kinds import spec_for

    spec = spec_for(kind)
    if verb == "query":
        bundle = _bundle_in(rest)
        if bundle is not None:
            from napari_nrf.errors import NapariNRFError
            from napari_nrf.kinds import bundle_kind

            got = bundle_kind(bundle)
            if got != kind:
                raise NapariNRFError(f"--kind {kind}: {Path(bundle).name} is a {got!r} model")
        return [verb, *rest], None
    own = spec.verbs.get(verb)
    if own is not None:
        return [own, *rest], None
    if verb == "train" and kind != "nrf":
        return None, (spec, rest)
    return [verb, *rest], None


def train_parser(spec) -> argparse.ArgumentParser:
    """``napari-nrf train --kind K``'s flags for a kind without a train verb of its own."""
    from napari_nrf.cli.nrf import add_fit_args, add_training_inputs

    p = argparse.ArgumentParser(prog=f"napari-nrf train --kind {spec.kind}",
                                description=f"train a new {spec.title} ({spec.panel.get('data', 'data files')})")
    add_training_inputs(p, data_help=spec.panel.get("data", "data files"))
    add_fit_args(p, spec.fit)
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files (never one of the inputs)")
    p.set_defaults(func=run_train, command="train", kind_spec=spec)
    return p


def run_train(args) -> int:
    """Train a new model of ``args.kind_spec`` through its recipe and save ``--out``."""
    from napari_nrf.cli.nrf import TrainingBars, _backbone_config, _best_text, _cache, _device
    from napari_nrf.models.bundle import check_bundle_path
    from napari_nrf.settings import FitSettings

    spec = args.kind_spec
    check_bundle_path(args.out)
    out = Path(args.out)
    ck = Path(args.checkpoint_dir) if args.checkpoint_dir else out.with_name(out.name + ".ckpt")
    kw = FitSettings.from_args(args, spec.fit).to_kwargs()
    bcfg = _backbone_config(args)
    if bcfg:
        kw["backbone_config"] = bcfg
    bars = TrainingBars("training")
    model, hist = spec.train(args.data, out, backbone=args.backbone, checkpoint_dir=ck, resume=not args.no_resume,
                             feature_cache=_cache(args.cache), device=_device(args.device), **kw, **bars.callbacks())
    bars.close()
    print(f"saved {out} ({spec.kind}, {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters); "
          + _best_text(hist))
    return 0
