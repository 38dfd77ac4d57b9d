"""Parallel adaptation (issue 18): K bases finetuned concurrently, one per device, give
the ensemble of one-after-another finetuning, bit for bit."""

import numpy as np
import torch

from napari_nrf.finetune import finetune_ensemble
from napari_nrf.models.bundle import load_bundle

from _adapt_data import make_adaptation_files


def test_bases_on_two_cpu_workers_equal_sequential(tmp_path):
    torch.set_num_threads(1)
    bases, data = make_adaptation_files(tmp_path)
    kw = dict(n_images=10, epochs=2, batch_images=4, batch_voxels=30, seed=1, device="cpu",
              feature_cache=tmp_path / "cache")
    stages = []
    finetune_ensemble(bases, data, out=tmp_path / "seq.safetensors", **kw)
    _, info = finetune_ensemble(bases, data, out=tmp_path / "par.safetensors", devices=["cpu", "cpu"],
                                checkpoint_dir=tmp_path / "ck", on_epoch=stages.append, **kw)
    a, b = load_bundle(tmp_path / "seq.safetensors")[0], load_bundle(tmp_path / "par.safetensors")[0]
    assert a.keys() == b.keys() and all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)
    assert len(info["histories"]) == 2 and all(h is not None for h in info["histories"])
    assert {r["base"] for r in stages} == {0, 1}
    assert (tmp_path / "ck" / "finetuned-0.safetensors").exists() and (tmp_path / "ck" / "finetuned-1.safetensors").exists()
