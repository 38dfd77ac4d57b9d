"""The importable check battery (napari_nrf.testing.check_kind) over every kind: the
built-in ones, the test-local file kinds (tests/kinds/*.py) and the toy kind shipped as a
package of its own (tests/kinds/toy_pkg, registered through the entry point group)."""

import pytest
import torch

from napari_nrf.testing import check_kind

from _kinds import example_kinds

KINDS = sorted(example_kinds())
CASES = [(kind, check, name) for kind in KINDS for check, name in check_kind(kind)]


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_the_battery_covers_every_kind_and_the_toy_package():
    assert {"nrf", "universal", "rest2visual", "movie", "ensemble", "toy-linear", "toy-voxel-readout"} <= set(KINDS)
    names = {(k, n) for k, _, n in CASES}
    for kind in ("nrf", "universal", "rest2visual", "movie", "toy-linear", "toy-voxel-readout"):
        assert (kind, "two_ranks") in names and (kind, "fit") in names
    for kind in ("nrf", "universal", "toy-linear"):
        assert (kind, "cli_train_evaluate") in names


@pytest.mark.parametrize("kind,check,name", CASES, ids=[f"{k}-{n}" for k, _, n in CASES])
def test_check(kind, check, name, tmp_path):
    check(tmp_path)
