"""Write docs/gallery.md: one entry per script of examples/ (its docstring, how to run it,
the figure it makes when there is one). Run after changing an example:

    .venv/bin/python docs/make_gallery.py

tests/test_docs.py fails when the page is not current."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REPO = "https://github.com/napari-nrf/napari-nrf/blob/main/"
# Figures the docs already show for an example (docs/images/...).
FIGURES = {
    "plot_virtual_subjects.py": "sim_areas.png",
    "query_volume.py": "query_demo_1mm.png",
    "movie.py": "movie_reconstructions.png",
    "rest2visual.py": "rest2visual.png",
}


def gallery() -> str:
    out = ["# Examples gallery", "",
           "Short runnable scripts, one per workflow, in `examples/` of the source tree. Each runs on",
           "tiny settings in seconds with `NRF_EXAMPLE_TINY=1` (that is how the tests run them) and",
           "on real sizes with the arguments its docstring shows. This page is made from their",
           "docstrings by `docs/make_gallery.py`.", ""]
    for path in sorted((ROOT / "examples").glob("*.py")):
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        title, _, rest = doc.partition("\n\n")  # the first paragraph
        title = " ".join(title.split())
        out += [f"## {path.stem.replace('_', ' ').capitalize()}", "",
                f"[`examples/{path.name}`]({REPO}examples/{path.name}): {title.strip()}", ""]
        body = rest.strip("\n")
        if body:
            # indented command lines become a code block; prose stays prose
            blocks = re.split(r"\n\s*\n", body)
            for b in blocks:
                lines = b.splitlines()
                if all(ln.startswith("    ") for ln in lines):
                    out += ["```bash", *[ln[4:] for ln in lines], "```", ""]
                else:
                    out += [" ".join(ln.strip() for ln in lines), ""]
        if path.name in FIGURES:
            out += [f"![{path.stem}](images/{FIGURES[path.name]})", ""]
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    (ROOT / "docs" / "gallery.md").write_text(gallery())
    print("wrote docs/gallery.md")
