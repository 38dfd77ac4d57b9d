"""The documentation: the README's five-line Python example runs, the examples gallery is
current, mkdocs.yml names every page, and the site builds (when mkdocs is installed)."""

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_readme_python_example_runs(tmp_path, monkeypatch):
    from PIL import Image

    text = (ROOT / "README.md").read_text()
    code = next(b for b in re.findall(r"```python\n(.*?)```", text, flags=re.S) if "napari_nrf.predict" in b)
    assert len([ln for ln in code.splitlines() if ln.strip()]) <= 5
    monkeypatch.chdir(tmp_path)
    Image.fromarray((np.random.default_rng(0).random((40, 40, 3)) * 255).astype(np.uint8)).save("cat.png")
    ns = {}
    exec(compile(code, "README.md", "exec"), ns)  # noqa: S102 - our own README
    import nibabel as nib

    assert isinstance(ns["img"], nib.Nifti1Image) and ns["img"].shape == (91, 109, 91)
    assert (tmp_path / "out" / "space-MNI152NLin6Asym_res-2mm_desc-cat_response.json").is_file()
    assert (tmp_path / "out" / "dataset_description.json").is_file()


def test_gallery_is_current():
    spec = importlib.util.spec_from_file_location("make_gallery", ROOT / "docs" / "make_gallery.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert (ROOT / "docs" / "gallery.md").read_text() == mod.gallery(), "run docs/make_gallery.py"


def test_mkdocs_nav_names_every_page():
    import yaml

    cfg = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    pages = {next(iter(item.values())) for item in cfg["nav"]}
    assert pages == {p.name for p in (ROOT / "docs").glob("*.md")}


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None, reason="mkdocs is not installed (the docs extra)")
def test_site_builds(tmp_path):
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
                        "-d", str(tmp_path / "site")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "site" / "gallery" / "index.html").is_file()
