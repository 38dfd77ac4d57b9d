"""The model contract test battery, run over every registered kind: a parametrization
over :func:`napari_nrf.testing.check_kind` (the importable battery).

Cases: every kind that provides ``example()`` (the built-in kinds, each file of
tests/kinds/, the toy kind shipped as a package of its own in tests/kinds/toy_pkg and
registered through the entry point group, any later kind), and every composite kind (the
ensemble) over each of them. Each case: one epoch of ``fit`` (or the kind's clear
refusal), save/load round trip, ``predict`` shapes, the query engine, the CLI's ``query``
(and ``train --kind`` / ``evaluate`` where the kind trains on response sets), the render
core of the Response volume widget, a voxelwise ensemble over it, a fit on two gloo ranks
equal to one; and below, a render in the real Response volume widget.
"""

import numpy as np
import pytest
import torch

from napari_nrf.models import MODEL_KINDS
from napari_nrf.testing import build_example, check_kind, example_data

from _kinds import example_kinds

KINDS = example_kinds()
SIMPLE = sorted(k for k, c in KINDS.items() if not c.composite)
COMPOSITE = sorted(k for k, c in KINDS.items() if c.composite)
CASES = [(k, None) for k in SIMPLE] + [(k, b) for k in COMPOSITE for b in SIMPLE]
IDS = [k if b is None else f"{k}[{b}]" for k, b in CASES]
CHECKS = [(case, check, name) for case in CASES for check, name in check_kind(*case)]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_the_battery_covers_every_kind():
    ids = set(IDS)
    assert {"nrf", "universal", "rest2visual", "movie", "toy-voxel-readout", "toy-linear", "ensemble[nrf]",
            "ensemble[universal]"} <= ids
    for k, c in MODEL_KINDS.items():  # every kind shipped with the package can be built tiny
        if c.__module__.startswith("napari_nrf."):
            assert k in {kk for kk, _ in CASES}, f"kind {k!r} provides no example()"
    names = {(case, n) for case, _, n in CHECKS}
    for kind in ("nrf", "universal", "rest2visual", "movie", "toy-linear", "toy-voxel-readout"):
        assert ((kind, None), "two_ranks") in names  # the loss entry point on every rank
    for kind in ("nrf", "universal", "toy-linear"):
        assert ((kind, None), "cli_train_evaluate") in names


@pytest.mark.parametrize("case,check,name", CHECKS,
                         ids=[f"{k if b is None else f'{k}[{b}]'}-{n}" for (k, b), _, n in CHECKS])
def test_contract(case, check, name, tmp_path):
    check(tmp_path)


@pytest.fixture(params=CASES, ids=IDS)
def case(request):
    kind, base = request.param
    rs, _ = example_data(frames=MODEL_KINDS[base or kind].inputs == "frames")
    return request.param, build_example(kind, rs, base=base).eval()


@pytest.fixture
def data(case):
    (kind, base), _ = case
    return example_data(frames=MODEL_KINDS[base or kind].inputs == "frames")


@pytest.fixture(scope="module")
def probe_png(tmp_path_factory):
    from PIL import Image

    p = tmp_path_factory.mktemp("probe") / "probe.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(p)
    return p


@pytest.mark.gui
def test_response_volume_widget_renders(case, data, probe_png, effnet, make_napari_viewer, qtbot):
    from PIL import Image

    from _plugin import open_widgets
    from napari_nrf.widgets._state import state_for

    (kind, _), model = case
    rs, _ = data
    object.__setattr__(model, "_backbone", effnet)  # the session's backbone: no rebuild
    viewer = make_napari_viewer()
    vw = open_widgets(viewer, ["Response volume"])["Response volume"]
    state_for(viewer).set_model(model)
    vw.resolution.setValue(4.0)
    if not model.continuous:
        vw.subject.setCurrentText(rs.subject)
    rendered = []
    vw.on_rendered(rendered.extend)
    vw.render_images([np.asarray(Image.open(probe_png))], ["probe"])
    qtbot.waitUntil(lambda: bool(rendered) or "failed" in vw.status.text(), timeout=60000)
    assert rendered, vw.status.text()
    assert np.isfinite(np.asarray(rendered[0].data)).sum() > 0
