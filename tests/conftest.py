"""Shared fixtures. Every test runs with its own feature cache so that nothing touches the
user's ~/.cache (the BrainGlobe habit of autouse fixtures that isolate user config)."""

import os

import numpy as np
import pytest

os.environ.setdefault("MPLBACKEND", "Agg")
# The tests compare the query engine with the plain forward pass to 1e-5, so inference runs
# in fp32 on every machine: under "auto" a CPU with AVX-512 BF16 or AMX units (some CI and
# developer machines) would run bf16. tests/test_precision.py clears this to test "auto"
# and forces bf16 where it tests that path; subprocesses (the CLI tests) inherit it.
os.environ["NAPARI_NRF_PRECISION"] = "fp32"


def _register_toy_kind_package() -> None:
    """tests/kinds/toy_pkg is a model kind in a package of its own, registered through the
    entry-point group ``napari_nrf.model_kinds`` as a pip install would: its folder and a
    dist-info holding the entry point go on sys.path (a clean clone needs no install), and
    on PYTHONPATH for the CLI's subprocesses. Done at import, before anything lists kinds."""
    import sys
    import tempfile
    from pathlib import Path

    pkg = Path(__file__).parent / "kinds" / "toy_pkg"
    site = Path(tempfile.mkdtemp(prefix="napari-nrf-toy-kind-"))
    info = site / "napari_nrf_toy-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: napari-nrf-toy\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("[napari_nrf.model_kinds]\ntoy-linear = napari_nrf_toy\n")
    for p in (str(pkg), str(site)):
        if p not in sys.path:
            sys.path.append(p)
    os.environ["PYTHONPATH"] = os.pathsep.join([os.environ.get("PYTHONPATH", ""), str(pkg), str(site)]).strip(os.pathsep)


_register_toy_kind_package()


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("NAPARI_NRF_CACHE", str(tmp_path_factory.getbasetemp() / "nrf-cache"))


@pytest.fixture(scope="session")
def effnet():
    """The offline EfficientNet-Lite0 backbone, built once per session (about 3 s)."""
    from napari_nrf.features import get_backbone

    return get_backbone("efficientnet-lite0")


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def tiny_model():
    """A tiny untrained NRF with two training voxels in the occipital lobes."""
    from napari_nrf.models.nrf import build_nrf

    m = build_nrf("efficientnet-lite0", "tiny")
    m.subjects = {"sub-01": np.array([[-40.0, -80, 0], [40, -80, 0]], np.float32)}
    return m


# ---- a clean exit ---------------------------------------------------------------------------
# The "Fatal Python error: none_dealloc" that once turned green runs into exit 134 was
# PySide6 6.12.0 losing a reference to None/True per signal emit (tests/test_qt_refcount.py;
# constraints.txt keeps 6.12 out). As a belt and braces, the session still ends with
# pytest's own exit status and skips interpreter finalisation, where any other C
# extension's late abort would hide the result.
# NAPARI_NRF_TEST_CLEAN_EXIT=0 keeps the normal interpreter shutdown (for debugging).
_SESSION = {}


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus):
    _SESSION["status"] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    if "status" in _SESSION and os.environ.get("NAPARI_NRF_TEST_CLEAN_EXIT", "1") == "1":
        import sys

        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_SESSION["status"])


# ---- tests that need a source checkout -------------------------------------------------------
# They read scripts/, examples/, benchmarks/, docs/, the README or pyproject.toml. After
# `pip install "napari-nrf[all,test]"` the rest of the suite runs with -m "not source".
# Module -> its source tests (None: the whole module).
SOURCE_TESTS = {
    "test_examples": None, "test_gpu_dry_run": None, "test_movie_science": None, "test_nrf_examples": None,
    "test_simulate_example": None, "test_universal_scripts": None, "test_user_guide": None,
    "test_packaging": None, "test_docs": None,
    "test_import_nsd": {"test_benchmark_tiny_runs"},
    "test_jobs_finetune": {"test_science_script_tiny"},
    "test_precision": {"test_bench_query_records_cpu_and_precision_next_to_every_number"},
    "test_scale_query": {"test_bench_scale_tiny"},
    "test_rest2visual_cli": {"test_science_benchmark_small_version", "test_speed_benchmark_small_version"},
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        mod = getattr(item, "module", None)
        name = mod.__name__.rsplit(".", 1)[-1] if mod is not None else ""
        if name in SOURCE_TESTS:
            fns = SOURCE_TESTS[name]
            if fns is None or getattr(item, "originalname", item.name) in fns:
                item.add_marker(pytest.mark.source)
