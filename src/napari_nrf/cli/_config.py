"""``--config FILE``: a command's options from a TOML file, and the resolved settings
written beside the model it made so the run can be repeated.

The file holds options by their flag names (``batch-images = 32``; ``batch_images`` works
too), never the positional inputs. Flags on the command line win over the file. After a
successful run, ``<out>.config.toml`` lists every option the run used (its own file's
values, the flags, the defaults) and, in a comment, the command that repeats it::

    napari-nrf train data/sub-01.h5 --out nrf.safetensors --lr 3e-4
    napari-nrf train data/sub-01.h5 --config nrf.safetensors.config.toml --out nrf2.safetensors
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from napari_nrf.errors import NapariNRFError
from napari_nrf.history import config_path

# The commands that train a model bundle take --config and get <out>.config.toml.
COMMANDS = ("train", "train-universal", "transfer", "train-movie", "train-rest2visual")
# Never from or into a config file: what the run reads and writes, and switches of this invocation.
NOT_SETTINGS = {"help", "config", "out", "overwrite", "debug", "no_resume", "no_wait", "checkpoint_dir"}


class ConfigError(NapariNRFError):
    """A config file that cannot be read or names a setting the command does not have."""


def add_config_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="TOML",
                   help="read options from this TOML file (flag names as keys; flags given here win); "
                        "each run writes <out>.config.toml to repeat it")


def load_toml(path) -> dict:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    p = Path(path)
    try:
        with open(p, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"--config {p}: no such file") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"--config {p}: not a TOML file ({exc})") from None


def _options(sp: argparse.ArgumentParser) -> dict:
    """dest -> action for the settings a config file may hold."""
    return {a.dest: a for a in sp._actions if a.option_strings and a.dest not in NOT_SETTINGS
            and not isinstance(a, (argparse._HelpAction, argparse._VersionAction))}


def _convert(path, key, action, value):
    if isinstance(value, dict):
        raise ConfigError(f"--config {path}: [{key}] tables are not settings of this command")
    if action.nargs == 0:  # store_true / store_false
        if not isinstance(value, bool):
            raise ConfigError(f"--config {path}: {key} = {value!r}: must be true or false")
        return value if isinstance(action, argparse._StoreTrueAction) else not value
    many = action.nargs in ("+", "*") or isinstance(action.nargs, int)
    vals = value if isinstance(value, list) else [value]
    if not many and isinstance(value, list):
        raise ConfigError(f"--config {path}: {key} = {value!r}: one value expected, not a list")
    out = []
    for v in vals:
        try:
            v = action.type(v) if action.type else (v if isinstance(v, str) else str(v))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"--config {path}: {key} = {v!r}: {exc}") from None
        if action.choices is not None and v not in action.choices:
            raise ConfigError(f"--config {path}: {key} = {v!r}: choose from {', '.join(map(str, action.choices))}")
        out.append(v)
    return out if many else out[0]


def apply_config(sp: argparse.ArgumentParser, path) -> None:
    """Set ``sp``'s defaults from the TOML file at ``path`` (command-line flags still win)."""
    data = load_toml(path)
    opts = _options(sp)
    values = {}
    for key, value in data.items():
        dest = key.replace("-", "_")
        if dest not in opts:
            known = ", ".join(sorted(d.replace("_", "-") for d in opts))
            raise ConfigError(f"--config {path}: unknown setting '{key}' for {sp.prog} (known: {known})")
        values[dest] = _convert(path, key, opts[dest], value)
    sp.set_defaults(**values)


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return json.dumps(str(v))  # a TOML basic string: JSON's escapes are TOML's


def resolved_toml(sp: argparse.ArgumentParser, args, argv: list[str]) -> str:
    """The settings of this run as TOML (options left unset, None, are omitted)."""
    lines = ["# Written by napari-nrf after this run; repeat it with:",
             "#   napari-nrf " + " ".join(shlex.quote(a) for a in argv),
             "# or change values here and pass this file with --config (flags win over the file)."]
    for dest, action in _options(sp).items():
        v = getattr(args, dest, None)
        if v is None or dest in ("slurm_profile",):
            continue
        if isinstance(v, (str, bool, int, float)) or (isinstance(v, (list, tuple)) and
                                                      all(isinstance(x, (str, int, float)) for x in v)):
            lines.append(f"{action.option_strings[-1].lstrip('-')} = {_toml_value(v)}")
    return "\n".join(lines) + "\n"


def write_resolved(sp, args, argv) -> Path | None:
    """After a successful run: ``<out>.config.toml`` when the bundle exists (a queued job: not yet)."""
    from napari_nrf.errors import write_text_atomic

    out = Path(args.out)
    if not out.is_file():
        return None
    return write_text_atomic(config_path(out), resolved_toml(sp, args, argv))
