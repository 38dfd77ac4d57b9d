"""Every command of the CLI documents itself: each option has help text that shows its
default, each command's help ends with an example that parses. The check walks the
argparse tree, so a command added later is held to the same rules."""

import argparse
import json
import shlex

import pytest

from napari_nrf.cli import build_parser, main
from napari_nrf.cli._help import shows_default, subcommands


def _commands():
    return list(subcommands(build_parser()))


def test_the_tree_has_the_commands():
    names = {n for n, _ in _commands()}
    assert {"train", "evaluate", "query", "info", "jobs", "card"} <= names and len(names) >= 20


@pytest.mark.parametrize("name,sp", _commands(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_option_has_help_with_its_default(name, sp):
    for act in sp._actions:
        if isinstance(act, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        flag = "/".join(act.option_strings) or act.dest
        assert act.help and act.help is not argparse.SUPPRESS and act.help.strip(), f"{name} {flag}: no help"
        assert not shows_default(act), f"{name} {flag}: help does not show its default {act.default!r}"
    text = sp.format_help()  # %(default)s and friends format
    assert "example:" in text, f"{name}: no example in its help"


@pytest.mark.parametrize("name,sp", _commands(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_example_parses(name, sp):
    parser = build_parser()
    lines = [ln.strip() for ln in sp.epilog.split("\n")[1:] if ln.strip()]
    assert lines and all(ln.startswith("napari-nrf ") for ln in lines), sp.epilog
    mine = [ln for ln in lines if shlex.split(ln)[1:1 + len(name.split())] == name.split()]
    assert mine, f"{name}: the example never runs the command itself"
    for ln in lines:
        args = parser.parse_args(shlex.split(ln)[1:])  # SystemExit (a test failure) on a bad flag
        assert args.command


def test_defaults_appear_in_the_rendered_help(capsys):
    with pytest.raises(SystemExit):
        main(["import-nifti", "--help"])
    out = capsys.readouterr().out
    assert "random seed of the validation split (default: 0)" in " ".join(out.split())
    assert "example:\n  napari-nrf import-nifti" in out


def test_info_json(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("NAPARI_NRF_CACHE", str(tmp_path))
    assert main(["info", "--json"]) == 0
    cap = capsys.readouterr()
    info = json.loads(cap.out)  # stdout is the JSON alone; the text went to stderr
    assert "efficientnet-lite0" in info["backbones"] and info["cache"]["path"] == str(tmp_path)
    assert set(info["extras"]) >= {"movie", "clip"} and "CUDA devices" in cap.err


def test_jobs_list_json(capsys, tmp_path):
    assert main(["jobs", "list", "--json", "--jobs-dir", str(tmp_path)]) == 0
    assert json.loads(capsys.readouterr().out) == []
