"""Every script in examples/ runs on tiny settings (NRF_EXAMPLE_TINY=1), so none rots."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

# Examples with a dedicated test that also checks their outputs run there, not twice.
DEDICATED = {"train_nrf", "query_volume", "plot_virtual_subjects"}  # test_nrf_examples, test_simulate_example
EXAMPLES = sorted(p for p in (Path(__file__).parents[1] / "examples").glob("*.py") if p.stem not in DEDICATED)


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs(script, tmp_path):
    env = dict(os.environ, NRF_EXAMPLE_TINY="1", MPLBACKEND="Agg", NRF_EXAMPLE_OUT=str(tmp_path))
    r = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, f"{script.name} failed:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"
