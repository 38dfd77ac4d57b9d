"""benchmarks/gpu/run.sh --dry-run: the prepared GPU run end to end on the CPU, tiny sizes."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_run_script_dry_run(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path / "out"), "NRF_GPU_SITE": str(tmp_path / "site"),
           "OMP_NUM_THREADS": "1", "NAPARI_NRF_CACHE": str(tmp_path / "cache")}
    env.pop("NAPARI_NRF_TEST_DEVICE", None)
    p = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu" / "run.sh"), "--dry-run"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    out = tmp_path / "out"
    # The device tool brings back at most 8 files: the run writes 3 (4 with the extras).
    assert sorted(f.name for f in out.iterdir()) == ["log.txt", "pytest_cuda.json", "results.json"]
    res = json.loads((out / "results.json").read_text())
    stages = res["stages"]
    expected = {"env", "matmul", "guard", "query_2mm", "query_1mm", "chunk", "oom", "train_nrf", "universal"}
    assert set(stages) == expected
    bad = {k: v.get("error") for k, v in stages.items() if not v["ok"]}
    assert not bad, bad
    assert res["summary"]["all_ok"] and res["summary"]["dry_run"]
    q = stages["query_2mm"]
    assert q["n_points"] > 1000 and q["engine_bf16_b1"]["s_per_image"] > 0
    assert q["straightforward_bf16"]["vs_engine_bf16"]["pearson_r"] > 0.999
    assert stages["chunk"]["largest_chunk_that_fits"] >= 1024
    assert stages["oom"]["skipped"].startswith("no CUDA")
    assert stages["train_nrf"]["bf16_autocast"]["images_per_s"] > 0
    assert stages["universal"]["train_step_fp32_tf32"]["steps_per_s"] > 0
    assert stages["guard"]["shipped_demo_model"]["passed"]
    pt = json.loads((out / "pytest_cuda.json").read_text())
    assert pt["rc"] == 0 and pt["tests"] >= 5 and pt["failures"] == 0 and pt["errors"] == 0
