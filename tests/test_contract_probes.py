"""The contract says everything the rest of the package asks of a model: outside a kind's
own module(s) no code probes a model with ``getattr``/``hasattr`` or compares its
``kind`` with a name (what is asked is a declared member of EncodingModel, with a default)."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "napari_nrf"
# A kind's own code may use its own attributes; the contract (base.py) defines them.
KIND_CODE = ("models/", "kinds/")
MODELISH = {"model", "base", "m", "b", "bm", "self.model", "self.state.model", "state.model"}


def _is_model(node) -> bool:
    text = ast.unparse(node)
    return text in MODELISH or text.endswith("model") or text.endswith("_model")


def _kindish(node) -> bool:
    """``<model>.kind`` or a call of a function about kinds (``_kind_of(base)``)."""
    if isinstance(node, ast.Attribute) and node.attr == "kind":
        return _is_model(node.value)
    return isinstance(node, ast.Call) and ast.unparse(node.func).endswith(("kind_of", "model_kind"))


def _names(node) -> bool:
    """A string constant, or a tuple/list/set of them (kind names)."""
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return bool(node.elts) and all(_names(e) for e in node.elts)
    return isinstance(node, ast.Constant) and isinstance(node.value, str)


def probes(tree) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr"):
            if node.args and _is_model(node.args[0]):
                out.append((node.lineno, ast.unparse(node)))
        elif isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if any(_kindish(s) for s in sides) and any(_names(s) for s in sides):
                out.append((node.lineno, ast.unparse(node)))
    return out


def _files():
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        if not rel.startswith(KIND_CODE):
            yield rel, path


def test_the_probe_finder_finds_probes():
    tree = ast.parse("getattr(model, 'pseudo_subjects', ())\nhasattr(self.model, 'embeddings')\n"
                     "x = model.kind == 'universal'\ny = _kind_of(b) == 'universal'\nz = getattr(args, 'x', 1)\n")
    assert [ln for ln, _ in probes(tree)] == [1, 2, 3, 4]


@pytest.mark.parametrize("rel,path", list(_files()), ids=[r for r, _ in _files()])
def test_no_model_probes_outside_the_kinds(rel, path):
    found = probes(ast.parse(path.read_text(), str(path)))
    assert not found, f"{rel}: ask the contract (a declared member of EncodingModel), not the model: {found}"
