"""The shared docstring dictionary (napari_nrf._docs): placeholders are filled at import."""

import inspect

import pytest

from napari_nrf._docs import DOCDICT, fill_doc


def test_fill_doc_indents_the_entry_and_keeps_the_rest():
    def f(progress=None):
        """Do it.

        Parameters
        ----------
        %(progress)s
            Called after each step.
        """

    doc = fill_doc(f).__doc__
    assert "%(" not in doc
    lines = doc.split("\n")
    assert any(x.startswith("        progress : callable(done, total") for x in lines)
    assert "            Called after each step." in lines
    assert any(x.startswith("            Progress of the work") for x in lines)  # the body at the indent + 4


def test_a_misspelt_placeholder_fails_at_import():
    def f():
        """%(progres)s"""

    with pytest.raises(KeyError):
        fill_doc(f)


@pytest.mark.parametrize("target", ["napari_nrf.query:QueryEngine.volume", "napari_nrf.analysis.regions:region_scores",
                                    "napari_nrf.analysis.clusters:cluster_maps",
                                    "napari_nrf.finetune:finetune_ensemble",
                                    "napari_nrf.features.extract:extract_features"])
def test_the_package_uses_it(target):
    import importlib

    mod, _, attr = target.partition(":")
    obj = importlib.import_module(mod)
    for part in attr.split("."):
        obj = getattr(obj, part)
    doc = inspect.getdoc(obj)
    assert "%(" not in doc
    assert any(DOCDICT[k].split("\n")[0] in doc for k in DOCDICT)
