"""docs/user_guide.md matches the plugin: its widget count and table name every widget of
the manifest, and every picture it, the README and the other docs show exists."""

import re
from pathlib import Path

from napari_nrf.widgets import widget_commands

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "user_guide.md"
RAW = "https://raw.githubusercontent.com/napari-nrf/napari-nrf/main/"



def test_guide_states_the_widget_count_and_names_each_widget():
    text = GUIDE.read_text()
    names = [n for n, _ in widget_commands()]
    m = re.search(r"\*\*(\d+) dock widgets\*\* under \*\*Plugins → napari-nrf\*\*", text)
    assert m and int(m.group(1)) == len(names), "the guide's widget count differs from napari.yaml"
    table = re.findall(r"^\s*\| ([^|]+?) \| ", text, flags=re.M)
    assert set(names) <= {t.strip() for t in table}
    assert "All widgets" in text and "napari -w napari-nrf" in text
    for menu in ("File → Open Sample", "File → Save Selected Layers", "File → Open File(s)"):
        assert menu in text


def test_every_picture_in_the_docs_exists():
    for md in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for ref in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md.read_text()):
            if ref.startswith(RAW):  # the README's absolute URLs (PyPI, the napari hub): files of this tree
                ref = str(ROOT / ref[len(RAW):])
            assert (md.parent / ref).is_file(), f"{md.name}: missing picture {ref}"
    made = set(re.findall(r'OUT / "([\w.]+\.png)"', (ROOT / "docs" / "make_screenshots.py").read_text()))
    shown = set(re.findall(r"images/([\w.]+\.png)", GUIDE.read_text()))
    assert shown <= made | {"nrf_vs_ridge.png", "query_demo_1mm.png"}, "a guide picture no script makes"


def test_readme_pictures_use_absolute_urls():
    """PyPI and the napari hub show the README without the repository beside it."""
    refs = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", (ROOT / "README.md").read_text())
    assert refs and all(r.startswith(RAW + "docs/images/") for r in refs), refs
