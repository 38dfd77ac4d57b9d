"""The house's layout rules, checked on the source: every module of the package has a
layer and imports (top level and inside functions) only its own layer or below, the
imports among the package's modules have no cycle, the CLI is a package found by listing
it, and job folders written before the job targets moved still resolve."""

import ast
from pathlib import Path

import napari_nrf

SRC = Path(napari_nrf.__file__).parent


def _import_statements(path: Path):
    """(module, names) of every import of a file (top level and inside functions),
    absolute module names (names: None for ``import m``)."""
    tree = ast.parse(path.read_text())
    pkg = ".".join(("napari_nrf",) + path.relative_to(SRC).parent.parts)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, None
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            yield mod, [a.name for a in node.names]


def _imports(path: Path) -> set[str]:
    """Every module a file imports (top level and inside functions), absolute names."""
    out = set()
    for mod, names in _import_statements(path):
        out.add(mod)
        out.update(f"{mod}.{n}" for n in names or ())
    return out


def _files(under: str = ""):
    return [p for p in (SRC / under).rglob("*.py")]


def _module(path: Path) -> str:
    parts = ("napari_nrf",) + path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module(p): p for p in _files()}


def _own_imports(path: Path) -> set[str]:
    """The package's modules ``path`` imports (a ``from pkg import name`` of a submodule
    counts as that submodule, of anything else as ``pkg``)."""
    def known(m):
        while m and m not in MODULES:
            m = m.rpartition(".")[0]
        return m

    out = set()
    for mod, names in _import_statements(path):
        if names is None:
            out.add(known(mod))
        for n in names or ():
            full = f"{mod}.{n}"
            out.add(full if full in MODULES else known(mod))
    out.discard(_module(path))
    out.discard("")
    return out


GRAPH = {m: _own_imports(p) for m, p in MODULES.items()}

# The layers, lowest first: a module imports only modules of its own layer or below.
# The longest matching prefix of a module's name gives its layer.
LAYERS = [
    ("foundations", ["napari_nrf._version", "napari_nrf.errors", "napari_nrf._docs", "napari_nrf._compat",
                     "napari_nrf._cachedir", "napari_nrf.space", "napari_nrf.settings", "napari_nrf.distributed",
                     "napari_nrf.cluster", "napari_nrf.precision", "napari_nrf.volume_meta", "napari_nrf.mapmetrics",
                     "napari_nrf.guards", "napari_nrf.history", "napari_nrf.bids", "napari_nrf.calibration"]),
    ("data and features", ["napari_nrf.data", "napari_nrf.features", "napari_nrf.simulate", "napari_nrf.movie",
                           "napari_nrf.movie.video", "napari_nrf.movie.dataset", "napari_nrf.movie.importer",
                           "napari_nrf.movie.volumes"]),
    ("contract", ["napari_nrf.models", "napari_nrf.models.base", "napari_nrf.models.bundle"]),
    ("engine", ["napari_nrf.train", "napari_nrf.query", "napari_nrf.query_shard"]),
    ("kinds", ["napari_nrf.models.nrf", "napari_nrf.models.universal", "napari_nrf.models.rest2visual",
               "napari_nrf.models.movie", "napari_nrf.models.movie_features", "napari_nrf.models.rest2visual_field", "napari_nrf.models.ensemble", "napari_nrf.models.official",
               "napari_nrf.kinds", "napari_nrf.recipes"]),
    ("science and application", ["napari_nrf.evaluate", "napari_nrf.baselines", "napari_nrf.finetune",
                                 "napari_nrf.train_jobs", "napari_nrf.jobs",
                                 "napari_nrf.analysis", "napari_nrf.movie.evaluate", "napari_nrf.movie.baselines",
                                 "napari_nrf.movie.view", "napari_nrf.library", "napari_nrf.demo",
                                 "napari_nrf.nifti_layers", "napari_nrf.experiments", "napari_nrf.card",
                                 "napari_nrf.api"]),
    ("cli, widgets and the check battery", ["napari_nrf.cli", "napari_nrf.widgets", "napari_nrf.testing"]),
    # the package's root: its lazy public API (load_model, predict, save) is the top facade
    ("the package's root", ["napari_nrf"]),
]


def layer_of(module: str) -> int:
    best, level = -1, None
    for i, (_, prefixes) in enumerate(LAYERS):
        for pre in prefixes:
            # the package itself ("napari_nrf") names only its __init__, not everything below
            inside = module.startswith(pre + ".") and pre != "napari_nrf"
            if (module == pre or inside) and len(pre) > best:
                best, level = len(pre), i
    return level


def test_every_module_has_a_layer():
    assert all(layer_of(m) is not None for m in MODULES), [m for m in MODULES if layer_of(m) is None]


def test_no_module_imports_a_layer_above_its_own():
    bad = [f"{m} ({LAYERS[layer_of(m)][0]}) -> {t} ({LAYERS[layer_of(t)][0]})"
           for m, targets in sorted(GRAPH.items()) for t in sorted(targets) if layer_of(t) > layer_of(m)]
    assert not bad, "upward imports:\n" + "\n".join(bad)


def _cycles(graph: dict) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_the_cycle_finder_finds_cycles():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_among_the_packages_modules():
    assert _cycles(GRAPH) == []


def test_models_do_not_import_the_training_side_or_anything_above():
    above = ("napari_nrf.train", "napari_nrf.recipes", "napari_nrf.finetune", "napari_nrf.train_jobs",
             "napari_nrf.jobs", "napari_nrf.query", "napari_nrf.cli", "napari_nrf.widgets", "napari_nrf.demo")
    for p in _files("models"):
        bad = {m for m in _imports(p) if m.startswith(above)}
        assert not bad, f"{p.relative_to(SRC)} imports upward: {sorted(bad)}"


def test_the_core_imports_no_qt_napari_or_widgets():
    for p in _files():
        rel = p.relative_to(SRC)
        # the CLI's `demo` command opens the viewer; the check battery renders as the widget does
        if rel.parts[0] in ("widgets", "cli") or rel.as_posix() == "testing.py":
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


def _torch_after(code: str) -> bool:
    """Whether torch is imported after running ``code`` in a fresh interpreter."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), QT_QPA_PLATFORM="offscreen")
    r = subprocess.run([sys.executable, "-c", code + "\nimport sys; print('torch' in sys.modules)"], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout.strip().splitlines()[-1] == "True"


def test_start_up_imports_no_torch():
    """``napari-nrf --help`` and the plugin's widget modules (what napari imports to list
    and open them) stay light: torch comes with the first model."""
    assert not _torch_after("from napari_nrf.cli import build_parser\nbuild_parser().format_help()")
    import yaml

    manifest = yaml.safe_load((SRC / "napari.yaml").read_text())
    mods = sorted({c["python_name"].split(":")[0] for c in manifest["contributions"]["commands"]
                   if ".widgets." in c["python_name"]})
    assert len(mods) >= 7
    assert not _torch_after("import importlib\nfor m in %r:\n    importlib.import_module(m)" % (mods,))
