"""Rest2Visual's inference speed-ups (issue 16) give the same predictions: oneDNN
convolutions in the query hook, normalised sampling coordinates as the per-grid state."""

import numpy as np
import torch
from torch import nn

from napari_nrf import space
from napari_nrf.models.rest2visual import _mkldnn_convs, build_rest2visual
from napari_nrf.query import QueryEngine


def _model():
    torch.manual_seed(0)
    model = build_rest2visual("efficientnet-lite0", "tiny").eval()
    for p in model.parameters():  # non-zero AdaGN (zero-initialised): the image matters
        p.data += 0.05 * torch.randn_like(p)
    g = space.Grid.mni(8.0)
    model.add_subject("s", np.random.default_rng(0).standard_normal(g.shape).astype(np.float32), g)
    return model


def test_query_hook_equals_the_plain_forward_and_restores_the_layers():
    model = _model()
    feats = {"embedding": torch.randn(2, 1280)}
    grid = space.Grid.mni(6.0)
    xyz = torch.from_numpy(grid.coords(space.brain_mask(grid)).astype(np.float32))
    with torch.no_grad():
        plain = model.sample(model.volume(feats, "s"), xyz).numpy()  # no hook: PyTorch's own conv3d
        model._enc_cache.clear()
        fast = model.query_predict(model.query_images(feats, "s"), model.query_points(xyz)).numpy()
    np.testing.assert_allclose(fast, plain, atol=1e-5, rtol=1e-5)
    # the same through the query engine on a whole grid
    vol = QueryEngine(model, device="cpu").volume(feats, grid, mask="brain", subject="s")
    np.testing.assert_allclose(vol.reshape(2, -1)[:, space.brain_mask(grid).ravel()], plain, atol=1e-5, rtol=1e-5)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv3d)]
    assert convs and all("_conv_forward" not in m.__dict__ for m in convs)


def test_hook_is_off_for_training_and_autograd():
    model = _model()
    with _mkldnn_convs(model):  # grad enabled: nothing patched
        assert all("_conv_forward" not in m.__dict__ for m in model.modules())
    with torch.no_grad():
        model.train()
        with _mkldnn_convs(model):
            assert all("_conv_forward" not in m.__dict__ for m in model.modules())
        model.eval()
        with _mkldnn_convs(model):
            assert any("_conv_forward" in m.__dict__ for m in model.modules())
