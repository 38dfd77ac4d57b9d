"""The CLI's one error path: exit 2 only for the user's errors (NapariNRFError, a missing
input file), 1 with one line asking for --debug and a report for anything else (a bug of
ours is never reported as the user's mistake), the traceback with --debug."""

import numpy as np
import pytest

from napari_nrf.cli import base as cli_base
from napari_nrf.cli import classify_error, main
from napari_nrf.errors import NapariNRFError
from napari_nrf.precision import PrecisionError
from napari_nrf.baselines import BaselineError


def _raising(exc):
    def run(args):
        raise exc
    return run


@pytest.mark.parametrize("exc,code,hint", [
    (NapariNRFError("data.h5: field 'split' is missing"), 2, False),
    (PrecisionError("bad precision"), 2, False),
    (BaselineError("too few images"), 2, False),
    (FileNotFoundError(2, "No such file", "missing.h5"), 2, False),
    (PermissionError(13, "Permission denied", "out"), 1, False),
    (ValueError("operands could not be broadcast together"), 1, True),
    (IndexError("index 3 is out of bounds"), 1, True),
    (RuntimeError("CUDA error: an illegal memory access"), 1, True),
])
def test_exit_codes(exc, code, hint, monkeypatch, capsys):
    assert classify_error(exc)[0] == code
    monkeypatch.setattr(cli_base, "_info", _raising(exc))
    import napari_nrf.cli as cli

    parser = cli.build_parser
    monkeypatch.setattr(cli, "build_parser", lambda: _patched(parser()))
    assert main(["info"]) == code
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("napari-nrf info: ")
    assert ("run with --debug and report it" in err) is hint


def _patched(parser):
    """The parser with ``info`` bound to the monkeypatched function."""
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    sub.choices["info"].set_defaults(func=cli_base._info)
    return parser


def test_debug_shows_the_traceback(monkeypatch):
    import napari_nrf.cli as cli

    monkeypatch.setattr(cli_base, "_info", _raising(ValueError(np.float64(1.5))))
    parser = cli.build_parser
    monkeypatch.setattr(cli, "build_parser", lambda: _patched(parser()))
    with pytest.raises(ValueError):
        main(["info", "--debug"])
