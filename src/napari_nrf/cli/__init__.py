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
    from napari_nrf._version import __version__

    parser = argparse.ArgumentParser(
        prog="napari-nrf",
        description="Image-to-fMRI encoding models in MNI space: simulate, train, evaluate, query, view.",
    )
    parser.add_argument("--version", action="version", version=f"napari-nrf {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in command_modules():
        importlib.import_module(name).register(sub)
    from napari_nrf.cli._config import COMMANDS as CONFIG_COMMANDS, add_config_argument

    for name, sp in sub.choices.items():
        if name in CONFIG_COMMANDS and "--config" not in sp._option_string_actions:
            add_config_argument(sp)  # TOML settings in, <out>.config.toml out
    for sp in sub.choices.values():
        # Every command shows tracebacks with --debug; every command that writes refuses
        # to replace an existing file unless --overwrite (napari_nrf.errors.check_output).
        if "--debug" not in sp._option_string_actions:
            sp.add_argument("--debug", action="store_true", help="show the traceback of an error")
        json_file = "--json" in sp._option_string_actions and sp._option_string_actions["--json"].nargs != 0
        if "--out" in sp._option_string_actions or json_file:
            if "--overwrite" not in sp._option_string_actions:
                sp.add_argument("--overwrite", action="store_true",
                                help="replace existing output files (never one of the inputs)")
    from napari_nrf.cli._help import finish

    finish(parser)  # defaults in every option's help, an example in every command's
    return parser


def _command_parser(parser, command: str) -> argparse.ArgumentParser:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command]


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


def _event_images(events) -> list:
    """The image paths listed in an import-nifti events CSV (inputs an output must not replace)."""
    import csv
    from pathlib import Path

    import io

    from napari_nrf.guards import read_text_table

    try:
        rows = list(csv.DictReader(io.StringIO(read_text_table(events, "--events"), newline="")))
    except (OSError, ValueError, csv.Error):
        return []
    base = Path(events).parent
    out = []
    for r in rows[:100000]:
        v = (r.get("image") or "").strip()
        if v and not v.isdigit():
            out.append(Path(v) if Path(v).is_absolute() else base / v)
    return out


def check_outputs(args) -> list:
    """The shared output-path check (:func:`napari_nrf.errors.check_output`) of each
    command, before any work. Returns the output folders that do not exist yet (removed
    again, when empty, if the command fails)."""
    from pathlib import Path

    from napari_nrf.errors import check_output, check_outputs_in, is_json_file

    cmd, ow = args.command, getattr(args, "overwrite", False)
    new_dirs = []

    def folder(path, names, inputs, replaceable=None):
        p = Path(path)
        if not p.exists():
            new_dirs.append(p)
        check_outputs_in(p, names, inputs, overwrite=ow, replaceable=replaceable)

    bw = [getattr(args, "backbone_weights", None)]
    if cmd in ("train", "train-universal"):
        check_output(args.out, [*args.data, *bw], overwrite=ow)
    elif cmd == "transfer":
        check_output(args.out, [args.model, args.data], overwrite=ow)
    elif cmd == "finetune":
        check_output(args.out, [*args.base, args.data], overwrite=ow)
    elif cmd == "evaluate":
        out = args.json_out or Path(args.model).with_suffix(".eval.json")
        check_output(out, [args.model, *args.data], overwrite=ow, flag="--json", replaceable=is_json_file)
    elif cmd == "import-nifti":
        ins = [*args.betas, args.mask, args.events, args.test_images, *_event_images(args.events)]
        check_output(args.out, ins, overwrite=ow)
    elif cmd == "import-official-nrf":
        check_output(args.out, [args.config, args.coords], overwrite=ow)
    elif cmd == "import-nsd":
        from napari_nrf.data.nsd import subject_dir_name

        names = []
        for s in args.subjects:
            try:
                names.append(subject_dir_name(s) + ".h5")
            except (ValueError, TypeError):
                pass
        folder(args.out, names, [args.root])
    elif cmd == "simulate":
        if args.subjects is not None and 0 < args.subjects <= 10000:
            folder(args.out, [f"sub-{i + 1:02d}.h5" for i in range(args.subjects)], [])
        else:
            folder(args.out, [], [])
    elif cmd == "query":
        from napari_nrf.features import image_files
        from napari_nrf.query import volume_file_names

        images = image_files(args.images)
        mask = [args.mask] if args.mask and Path(args.mask).exists() else []
        names = volume_file_names(images, getattr(args, "names", "plain"), args.resolution, args.subject)

        def same_query(p):  # a volume an earlier (interrupted) run of this query wrote: resumable
            from napari_nrf.space import read_sidecar

            side = read_sidecar(p)
            return side.get("kind") == "response" and side.get("model_file") == str(Path(args.model).resolve())

        folder(args.out, names, [args.model, *images, *mask], replaceable=same_query)
    elif cmd == "cluster":
        folder(args.out, [], [args.model, *(getattr(args, "library", None) or [])])
    # Folders and files a command writes besides its outputs: a file where a folder is
    # expected, a parent that is a file or not writable, refused now (one line naming the flag).
    for name in ("cache", "jobs_dir"):
        if getattr(args, name, None) and cmd != "jobs":  # `jobs` only reads its folder
            check_output(getattr(args, name), overwrite=True, flag="--" + name.replace("_", "-"), folder=True)
            if name == "jobs_dir" and not Path(args.jobs_dir).exists():
                new_dirs.append(Path(args.jobs_dir))  # removed again if a failure leaves it empty
    if getattr(args, "screenshot", None):
        check_output(args.screenshot, overwrite=True, flag="--screenshot")
    return new_dirs


# Options that count or size something: zero or negative makes a model or a job that
# cannot work (a --width 0 model cannot be queried), so they are refused up front.
POSITIVE = ("width", "depth", "downsample_dim", "merged_dim", "embed_dim", "channels", "images", "epochs",
            "chunk", "candidates", "store_images", "subjects", "image_size", "max_voxels", "k", "top",
            "batch_images", "batch_voxels", "steps_per_epoch", "reps", "n_images", "threads", "workers", "nproc",
            "batch", "trs", "frames_per_tr", "films", "volumes", "sessions")
# Times and spacings: zero or negative is meaningless (a TR of 0 s divides by zero later).
POSITIVE_FLOAT = ("tr", "fps", "resolution", "rest_tr")
NON_NEGATIVE = ("onset",)


def check_values(args) -> None:
    """Every numeric option finite, every size positive, no empty --mask: a usage error
    (one line naming the flag) instead of NaN volumes or a model that cannot be used."""
    import math

    from napari_nrf.errors import NapariNRFError

    for name, v in vars(args).items():
        flag = "--" + name.replace("_", "-")
        vals = v if isinstance(v, (list, tuple)) else [v]
        for x in vals:
            if isinstance(x, float) and not math.isfinite(x):
                raise NapariNRFError(f"{flag} {x}: must be a finite number")
            if name in POSITIVE and isinstance(x, int) and not isinstance(x, bool) and x <= 0:
                raise NapariNRFError(f"{flag} {x}: must be at least 1")
            if name in POSITIVE_FLOAT and isinstance(x, (int, float)) and not isinstance(x, bool) and x <= 0:
                raise NapariNRFError(f"{flag} {x:g}: must be a positive number")
            if name in NON_NEGATIVE and isinstance(x, (int, float)) and x < 0:
                raise NapariNRFError(f"{flag} {x:g}: must be zero or more")
    if getattr(args, "mask", None) == "":
        raise NapariNRFError("--mask '': an empty value; use none for no mask")


def _clean_failed(args, new_dirs) -> None:
    """After a failure: remove output folders this run created and left empty, and an
    empty ``<out>.ckpt/`` (nothing stray stays behind)."""
    from pathlib import Path

    dirs = list(new_dirs)
    out = getattr(args, "out", None)
    if out and args.command in ("train", "train-universal", "transfer"):
        dirs.append(Path(getattr(args, "checkpoint_dir", None) or Path(out).with_name(Path(out).name + ".ckpt")))
    for d in dirs:
        try:
            if d.is_dir() and not any(d.iterdir()):
                d.rmdir()
        except OSError:
            pass


def _end_progress_bars() -> None:
    """Close progress bars still drawn (tqdm ends their line), so an error line that
    follows starts on a line of its own with ``napari-nrf``."""
    tq = getattr(sys.modules.get("tqdm.std"), "tqdm", None)
    for bar in list(getattr(tq, "_instances", None) or ()):
        try:
            bar.close()
        except Exception:  # noqa: BLE001 - a bar that cannot close must not hide the error
            pass


def _one_line(exc) -> str:
    text = str(exc) if not isinstance(exc, KeyError) else f"missing {exc}"
    text = " ".join(text.split())
    return text or type(exc).__name__


def main(argv=None) -> int:
    """Run one command. Exit codes: 0 success, 2 a usage error (a NapariNRFError: a bad
    flag, value or input file; argparse's own code too), 1 a runtime failure (permissions,
    disk, a device) or an unexpected error (a bug: the line asks to rerun with --debug and
    report it), 130 interrupted. Every failure is one line on stderr; ``--debug`` shows
    the traceback instead (:func:`classify_error`)."""
    from napari_nrf.cli import _kinds

    raw = list(sys.argv[1:] if argv is None else argv)
    try:
        routed, generic = _kinds.route(raw)
    except Exception as exc:  # noqa: BLE001 - an unknown --kind: one line, as every error
        code, what, hint = classify_error(exc)
        print(f"napari-nrf {raw[0]}: {what}: {_one_line(exc)}{hint}", file=sys.stderr)
        return code
    if generic is not None:  # train --kind K of a kind without a train verb of its own
        spec, rest = generic
        parser = _kinds.train_parser(spec)
        argv = rest
    else:
        parser = build_parser()
        argv = routed  # the command as the parser reads it (a --kind routed to its own verb)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    if getattr(args, "config", None) and generic is None:
        from napari_nrf.cli._config import apply_config
        from napari_nrf.errors import NapariNRFError

        try:
            apply_config(_command_parser(parser, args.command), args.config)
        except NapariNRFError as exc:
            print(f"napari-nrf {args.command}: error: {_one_line(exc)}", file=sys.stderr)
            return 2
        args = parser.parse_args(argv)  # the file's values as defaults, the flags over them
    from napari_nrf import distributed

    if (getattr(args, "nproc", 1) or 1) > 1 and distributed.env()[1] == 1:
        # Not yet under torchrun: start N ranks of this command.
        return distributed.launch_torchrun(args.nproc, argv if generic is None else raw)
    if distributed.env()[0] > 0:  # a rank > 0 under torchrun: rank 0 prints; errors still show
        import os

        sys.stdout = open(os.devnull, "w")
    try:
        rc = _run(args)
        if rc == 0 and generic is None and getattr(args, "config", "absent") != "absent" \
                and distributed.env()[0] == 0:
            from napari_nrf.cli._config import write_resolved

            write_resolved(_command_parser(parser, args.command), args, argv)
        return rc
    finally:
        from napari_nrf.distributed import teardown

        teardown()


def _run(args) -> int:
    new_dirs = []
    try:
        if hasattr(args, "device"):
            from napari_nrf.errors import check_device

            check_device(args.device)  # before loading anything
        check_values(args)
        new_dirs = check_outputs(args)
        from napari_nrf.cli._output import run_for_json, wants_json

        rc = run_for_json(args.func, args) if wants_json(args) else args.func(args)
    except KeyboardInterrupt:
        print(f"\ninterrupted{_resume_hint(args)}", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the one error path of the CLI
        _clean_failed(args, new_dirs)
        _end_progress_bars()  # the error line starts on its own line, not after a bar
        if getattr(args, "debug", False):
            raise
        code, what, hint = classify_error(exc)
        print(f"napari-nrf {args.command}: {what}: {_one_line(exc)}{hint}", file=sys.stderr)
        return code
    return int(rc or 0)


REPORT_HINT = " (run with --debug and report it)"


def classify_error(exc) -> tuple[int, str, str]:
    """(exit code, label, hint) of a failed command.

    2: a :class:`~napari_nrf.errors.NapariNRFError` (a message written for the user: a bad
    flag, value or input file) or a missing input file; 1 "cancelled"; 1 "error": the
    machine's state (permissions, a full disk, a device, out of memory); 1 "unexpected
    error" for anything else -- a bug of ours, never the user's mistake, so the line asks
    for ``--debug`` and a report."""
    from napari_nrf.errors import Cancelled, NapariNRFError

    if isinstance(exc, (NapariNRFError, FileNotFoundError, IsADirectoryError, NotADirectoryError)):
        return 2, "error", ""
    if isinstance(exc, Cancelled):
        return 1, "cancelled", ""
    if isinstance(exc, (OSError, MemoryError)) or type(exc).__name__ == "OutOfMemoryError":
        return 1, "error", ""
    return 1, f"unexpected error ({type(exc).__name__})", REPORT_HINT
