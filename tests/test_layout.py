"""The house's layout rules, checked on the source: no module imports upward, the CLI is
a package found by listing it, and job folders written before the job targets moved
still resolve."""

import ast
from pathlib import Path

import napari_nrf

SRC = Path(napari_nrf.__file__).parent


def _imports(path: Path) -> set[str]:
    """Every module a file imports (top level and inside functions), absolute names."""
    tree = ast.parse(path.read_text())
    pkg = ".".join(("napari_nrf",) + path.relative_to(SRC).parent.parts)
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names)
    return out


def _files(under: str = ""):
    return [p for p in (SRC / under).rglob("*.py")]


def test_models_do_not_import_the_training_side_or_anything_above():
    above = ("napari_nrf.train", "napari_nrf.recipes", "napari_nrf.finetune", "napari_nrf.train_jobs",
             "napari_nrf.jobs", "napari_nrf.query", "napari_nrf.cli", "napari_nrf.widgets", "napari_nrf.demo")
    for p in _files("models"):
        bad = {m for m in _imports(p) if m.startswith(above)}
        assert not bad, f"{p.relative_to(SRC)} imports upward: {sorted(bad)}"


def test_the_core_imports_no_qt_napari_or_widgets():
    for p in _files():
        rel = p.relative_to(SRC)
        if rel.parts[0] in ("widgets", "cli"):  # the CLI's `demo` command opens the viewer
            continue
        bad = {m for m in _imports(p) if m.split(".")[0] in ("qtpy", "napari", "PyQt5", "PySide6", "magicgui")
               or m.startswith("napari_nrf.widgets")}
        assert not bad, f"{rel} imports {sorted(bad)}"


def test_cli_is_a_package_of_command_modules():
    from napari_nrf.cli import command_modules

    mods = command_modules()
    assert mods[0] == "napari_nrf.cli.base" and "napari_nrf.cli.simulate" in mods and "napari_nrf.cli.jobs" in mods


def test_old_job_targets_still_resolve():
    from napari_nrf import train_jobs
    from napari_nrf.jobs import _resolve_target

    for name in ("finetune_job", "transfer_job", "train_job"):
        assert _resolve_target(f"napari_nrf.finetune:{name}") is getattr(train_jobs, name)
        assert _resolve_target(f"napari_nrf.train_jobs:{name}") is getattr(train_jobs, name)
