"""The ``napari-nrf`` command line.

Each subcommand lives next to the code it drives: a module listed in ``COMMANDS`` defines
``register(subparsers)``, which adds its parser and sets ``func`` (called with the parsed
arguments; it returns an exit code or None). The CLI, the widgets and the tests all call
the same library functions.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Modules that contribute subcommands. Add one line per module.
COMMANDS = [
    "napari_nrf._cli_base",
    "napari_nrf._cli_import",
    "napari_nrf._cli_nrf",
    "napari_nrf._cli_universal",
    "napari_nrf.simulate.cli",
    "napari_nrf._cli_jobs",
]


def build_parser() -> argparse.ArgumentParser:
    from napari_nrf import __version__

    parser = argparse.ArgumentParser(
        prog="napari-nrf",
        description="Image-to-fMRI encoding models in MNI space: simulate, train, evaluate, query, view.",
    )
    parser.add_argument("--version", action="version", version=f"napari-nrf {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # a module that is not written yet
            if exc.name != name:
                raise
            continue
        mod.register(sub)
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
        # Our own errors (SpaceError, BundleError, ImageError, ...) are ValueErrors with a
        # message written for the user: show it without a traceback.
        if getattr(args, "debug", False):
            raise
        print(f"napari-nrf {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
