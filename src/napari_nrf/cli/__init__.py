"""The ``napari-nrf`` command line.

One module of this package per group of subcommands (``base``: demo/info, ``imports``,
``nrf``: train/evaluate/query for any kind, ``universal``, ``simulate``, ``jobs``:
finetune/jobs). Each defines ``register(subparsers)``, which adds its parsers and sets
``func`` (called with the parsed arguments; it returns an exit code or None). The
modules are found by listing the package, so a new group is one new file here. The CLI,
the widgets and the tests all call the same library functions.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# The order of the groups in ``napari-nrf --help``; any other module of the package follows.
ORDER = ("base", "imports", "nrf", "universal", "simulate", "jobs")


def command_modules() -> list[str]:
    """Modules of this package that contribute subcommands, in help order."""
    import pkgutil

    names = [m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")]
    names.sort(key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))
    return [f"{__name__}.{n}" for n in names]


def build_parser() -> argparse.ArgumentParser:
    from napari_nrf import __version__

    parser = argparse.ArgumentParser(
        prog="napari-nrf",
        description="Image-to-fMRI encoding models in MNI space: simulate, train, evaluate, query, view.",
    )
    parser.add_argument("--version", action="version", version=f"napari-nrf {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in command_modules():
        importlib.import_module(name).register(sub)
    return parser


def _resume_hint(args) -> str:
    """For the training commands: where the checkpoint is and how to go on."""
    out = getattr(args, "out", None)
    if args.command not in ("train", "train-universal", "transfer") or not out:
        return ""
    from pathlib import Path

    ck = Path(getattr(args, "checkpoint_dir", None) or Path(out).with_name(Path(out).name + ".ckpt"))
    if not (ck / "checkpoint.safetensors").exists():
        return " before the first epoch ended (no checkpoint yet)"
    return (f"; the last finished epoch is saved in {ck}/: run the same command again to resume "
            "(--no-resume starts over)")


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        rc = args.func(args)
    except KeyboardInterrupt:
        print(f"\ninterrupted{_resume_hint(args)}", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        # Our own errors (napari_nrf.errors.NapariNRFError: SpaceError, BundleError, ...)
        # are ValueErrors with a message written for the user: show it without a traceback.
        if getattr(args, "debug", False):
            raise
        print(f"napari-nrf {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return int(rc or 0)

