"""Packaging for the napari hub: metadata, licence, citation, manifest icon and categories,
and every third-party module the package imports declared as a dependency."""

import ast
import importlib.metadata as md
import re
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "napari_nrf"


def _project():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_project_metadata_licence_and_citation():
    p = _project()
    assert p["license"] == "BSD-3-Clause" and "BSD 3-Clause" in (ROOT / "LICENSE").read_text()
    assert p["authors"] and p["urls"]
    cls = p["classifiers"]
    assert "Framework :: napari" in cls and any(c.startswith("Operating System ::") for c in cls)
    assert {f"Programming Language :: Python :: 3.{v}" for v in (10, 11, 12)} <= set(cls)
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["cff-version"].startswith("1.2") and cff["license"] == "BSD-3-Clause"
    titles = " ".join(r["title"] for r in cff["references"])
    assert "Neural Response Functions" in titles and "Universal Brain Encoder" in titles


def test_manifest_icon_and_categories():
    from importlib.resources import files

    from PIL import Image

    man = yaml.safe_load((SRC / "napari.yaml").read_text())
    assert set(man["categories"]) >= {"Visualization", "IO"}
    pkg, res = man["icon"].split(":")
    with Image.open(files(pkg).joinpath(res)) as im:
        assert im.size[0] == im.size[1] >= 128


def _imported_top_modules() -> set[str]:
    out = set()
    for f in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                out |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                out.add(node.module.split(".")[0])
    return out - set(sys.stdlib_module_names) - {"napari_nrf"}


def test_every_imported_package_is_declared():
    p = _project()
    declared = {re.split(r"[<>=!\[ ;]", d)[0].lower().replace("_", "-") for d in p["dependencies"]}
    for extra in p.get("optional-dependencies", {}).values():
        declared |= {re.split(r"[<>=!\[ ;]", d)[0].lower().replace("_", "-") for d in extra}
    dists = md.packages_distributions()
    # imported only to patch or probe what a declared package brings along
    # (torchvision comes with timm and open_clip_torch; Qt with napari's qtpy)
    # huggingface_hub too (a guarded look-up of cached CLIP weights)
    indirect = {"torchvision", "huggingface_hub", "PyQt5", "PyQt6", "PySide2", "PySide6", "vispy"}
    missing = {}
    for mod in sorted(_imported_top_modules() - indirect):
        names = {d.lower().replace("_", "-") for d in dists.get(mod, [mod])}
        if not names & declared:
            missing[mod] = sorted(names)
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


def test_repository_address_is_the_same_everywhere():
    """One repository address in pyproject's [project.urls] (the napari hub's keys),
    CITATION.cff and the README."""
    urls = _project()["urls"]
    repo = urls["Source Code"]
    assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", repo)
    assert urls["Homepage"] == repo and urls["Bug Tracker"] == repo + "/issues"
    assert urls["Documentation"].startswith(repo + "/blob/main/docs/")
    assert (ROOT / urls["Documentation"].split("/blob/main/", 1)[1]).is_file()
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["repository-code"] == repo
    assert repo in (ROOT / "README.md").read_text()


def test_extras_and_the_two_commands_install_everything():
    """Movies, CLIP and the demo's psutil are extras; the Qt pin is a constraint on
    napari's own Qt extra; the README's two commands (scripts/bootstrap.sh) install all."""
    p = _project()
    core = {re.split(r"[<>=!\[ ;]", d)[0].lower() for d in p["dependencies"]}
    assert not core & {"av", "open-clip-torch", "open_clip_torch", "psutil", "pyside6", "pyside6-essentials"}
    extras = p["optional-dependencies"]
    assert extras["movie"] == ["av>=12"] and extras["clip"][0].startswith("open_clip_torch")
    assert "napari[pyside6]" in extras["all"] and "PySide6<6.12" in extras["all"]
    for name in ("movie", "clip", "demo", "qt"):
        assert set(extras[name]) <= set(extras["all"]), name
    boot = (ROOT / "scripts" / "bootstrap.sh").read_text()
    assert 'EXTRAS="${NRF_EXTRAS:-all,test}"' in boot
    for script in ("demo.sh", "test.sh"):
        assert "bootstrap.sh" in (ROOT / "scripts" / script).read_text()
    assert "scripts/test.sh" in (ROOT / ".ci" / "run").read_text()
