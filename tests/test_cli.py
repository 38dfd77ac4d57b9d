"""The napari-nrf command line: help, info, errors without tracebacks."""

import subprocess
import sys

from napari_nrf.cli import build_parser, main


def test_help_lists_commands(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "demo" in out and "info" in out


def test_info(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "efficientnet-lite0" in out and "clip-vit-b16" in out


def test_every_subcommand_has_help():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in sub.choices.items():
        assert p.format_help(), name


def test_console_script_runs():
    r = subprocess.run([sys.executable, "-m", "napari_nrf.cli", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and "napari-nrf" in r.stdout
