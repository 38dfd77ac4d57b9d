"""Machine-readable output of the CLI: ``--json`` (``info``, ``jobs list``) and
``--stdout-json`` (the evaluate commands). A command sets ``args.json_result`` to what it
reports; :func:`run_for_json` runs it with its text sent to stderr and then prints that
object alone on stdout, so ``napari-nrf info --json | jq .`` works."""

from __future__ import annotations

import contextlib
import json
import sys

STDOUT_JSON_HELP = "print the report as one JSON document on stdout (the table and messages go to stderr)"


def wants_json(args) -> bool:
    return getattr(args, "json", None) is True or bool(getattr(args, "stdout_json", False))


def _plain(o):
    if hasattr(o, "item"):
        return o.item()  # numpy scalars
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)  # paths, anything else


def run_for_json(func, args):
    """``func(args)`` with stdout sent to stderr, then ``args.json_result`` as JSON on stdout."""
    with contextlib.redirect_stdout(sys.stderr):
        rc = func(args)
    sys.stdout.write(json.dumps(getattr(args, "json_result", None), indent=2, default=_plain) + "\n")
    sys.stdout.flush()
    return rc
