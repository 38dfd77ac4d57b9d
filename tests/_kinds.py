"""The kinds the tests run over: every registered kind with ``example()``, including each
file of tests/kinds/ (imported here, each registers its kind), and their tiny data."""

import importlib.util
import sys
from pathlib import Path

KINDS_DIR = Path(__file__).parent / "kinds"


def import_test_kinds() -> list[str]:
    """Import every file of tests/kinds/ (each registers its kind); their module names."""
    names = []
    for path in sorted(KINDS_DIR.glob("*.py")):
        name = f"napari_nrf_test_kinds.{path.stem}"
        if name not in sys.modules:
            spec = importlib.util.spec_from_file_location(name, path)
            mod = importlib.util.module_from_spec(spec)
            sys.modules[name] = mod
            spec.loader.exec_module(mod)
        names.append(name)
    return names


def example_kinds() -> dict:
    """kind -> class of every registered kind that can build a tiny instance."""
    from napari_nrf.models import MODEL_KINDS, discover_kinds
    from napari_nrf.models.base import EncodingModel

    discover_kinds()
    import_test_kinds()
    return {k: c for k, c in MODEL_KINDS.items() if c.example.__func__ is not EncodingModel.example.__func__}


def fittable_kinds() -> list[str]:
    """Kinds :func:`napari_nrf.train.fit` trains (not composite, ``supports_fit``)."""
    return sorted(k for k, c in example_kinds().items() if not c.composite and c.supports_fit)


def image_data():
    """A 24-image response set on 60 brain voxels (8 mm apart) and its features."""
    from _nrf_data import synth_set

    return synth_set(n=24, step=8.0, max_n=60, n_val=6, n_test=4, seed=2)


def movie_data(rs=None):
    """The same voxels seen through 24 TRs of film chunks (4 frames of 16 x 16 px each)."""
    from _movie_data import synth_movie_set

    rs = rs if rs is not None else image_data()[0]
    return synth_movie_set(rs.coords, n=24, frames=4, size=16, seed=2, subject=rs.subject)


def data_for(kind: str):
    """(response set, features) a kind reads: film chunks for ``inputs == "frames"``."""
    from napari_nrf.models import MODEL_KINDS

    return movie_data() if MODEL_KINDS[kind].inputs == "frames" else image_data()
