"""The field Rest2Visual (kind ``rest2visual-field``, the default of train-rest2visual): the
shared image field (an NRF) plus the person's rest-map term, zero-initialised."""

import numpy as np
import pytest
import torch

from napari_nrf import space
from napari_nrf.models.rest2visual import POPULATION

from _nrf_data import SHAPES, brain_coords, fake_features, true_field

G8 = space.Grid.mni(8.0)
SHIFT = np.array([16.0, 0.0, 0.0])


CENTRES = np.array([[-20.0, -80.0, 0.0], [20.0, -80.0, 0.0], [0.0, -60.0, 20.0]])


def _areas(xyz, sign):
    """Soft memberships (N, 3) of a person's three areas, displaced by ``sign`` x SHIFT."""
    d2 = ((xyz[:, None, :] - (CENTRES + sign * SHIFT)[None]) ** 2).sum(-1)
    return np.exp(-d2 / (2 * 14.0 ** 2))


def two_people(n=120, seed=0):
    """Two people whose areas sit 2 x 16 mm apart along x. Each area answers the image with
    its own amplitude (linear in the embedding, the same for both people); the rest map
    shows the areas with couplings +1, -1, +0.5 (as a seed map does): only the rest map
    says where a person's areas are."""
    from napari_nrf.data.responseset import ResponseSet

    feats = fake_features(n, seed)
    e = feats["embedding"]
    amp = e @ np.random.default_rng(5).standard_normal((e.shape[1], 3)) / np.sqrt(e.shape[1])  # (n, 3)
    xyz = brain_coords(6.0, 700, seed)
    xyz = xyz[(xyz[:, 1] < -20) & (np.abs(xyz[:, 2]) < 50)]
    split = np.zeros(n, np.uint8)
    split[n - 12:n - 6] = 1
    split[n - 6:] = 2
    sets, truths = [], []
    for k, sign in enumerate((1.0, -1.0)):
        truth = (amp @ _areas(xyz, sign).T).astype(np.float32)
        truth /= truth.std()
        rs = ResponseSet(responses=truth, coords=xyz.copy(), split=split, images=np.zeros((n, 8, 8, 3), np.uint8),
                         truth=truth, subject=f"sub-0{k + 1}")
        rest = (_areas(G8.coords(), sign) @ np.array([1.0, -1.0, 0.5])).reshape(G8.shape).astype(np.float32)
        rs.set_rest_maps(np.stack([rest, rest]), G8)
        sets.append(rs)
        truths.append(truth)
    return sets, [feats, feats], truths


@pytest.fixture(scope="module")
def trained():
    from napari_nrf.recipes import train_rest2visual

    sets, feats, truths = two_people()
    model, hist = train_rest2visual(sets, preset="field-tiny", feature_shapes=SHAPES, token_maps={},
                                    features=feats, steps=300, batch_images=8, lr=3e-3, weight_decay=0.0)
    return model, sets, feats, truths


def test_the_individual_model_identifies_both_people(trained):
    """Each person's predicted test maps are closer to their own truth than to the other's."""
    model, sets, feats, truths = trained
    rows = sets[0].indices("test")
    f = {k: torch.from_numpy(v[rows]) for k, v in feats[0].items()}
    xyz = sets[0].coords
    with torch.no_grad():
        pred = [model.predict(f, coords=xyz, subject=s).numpy() for s in ("sub-01", "sub-02")]
        shared = model.field.predict(f, coords=xyz).numpy()
    # map r per image, maps centred on their test-set mean (each voxel's image-independent offset out)
    r = lambda a, b: np.mean([np.corrcoef(x, y)[0, 1] for x, y in zip(a - a.mean(0), b - b.mean(0))])  # noqa: E731
    t = [tr[rows] for tr in truths]
    assert r(pred[0], t[0]) > r(pred[0], t[1]) + 0.3
    assert r(pred[1], t[1]) > r(pred[1], t[0]) + 0.3
    # and better than the shared field (the image-only part) for each of them
    assert r(pred[0], t[0]) > r(shared, t[0]) + 0.1 and r(pred[1], t[1]) > r(shared, t[1]) + 0.1


def test_starts_as_the_image_only_field_and_population_is_it():
    """Zero-initialised individual term: a new model predicts what its NRF trunk predicts,
    for every person; the population pseudo-subject stays exactly the trunk."""
    from napari_nrf.models.rest2visual_field import build_rest2visual_field

    sets, feats, _ = two_people(n=16)
    model = build_rest2visual_field(preset="field-tiny", feature_shapes=SHAPES, token_maps={})
    model.set_reference([(rs.rest_maps, rs.rest_grid) for rs in sets])
    for rs in sets:
        model.add_subject(rs.subject, rs.rest_maps, rs.rest_grid, coords=rs.coords)
    f = {k: torch.from_numpy(v[:3]) for k, v in feats[0].items()}
    with torch.no_grad():
        base = model.field.predict(f, coords=sets[0].coords)
        for s in ("sub-01", "sub-02", POPULATION):
            torch.testing.assert_close(model.predict(f, coords=sets[0].coords, subject=s), base)


def test_new_person_bundle_query_engine_and_old_bundles(trained, tmp_path):
    """A person added from a rest-map NIfTI (no training) is predicted through the query
    engine as by predict; the bundle round-trips; a U-Net bundle still loads."""
    from napari_nrf.models import load_model
    from napari_nrf.models.rest2visual import build_rest2visual, subject_from_rest_map
    from napari_nrf.calibration import apply_model
    from napari_nrf.query import QueryEngine

    model, sets, feats, _ = trained
    p = tmp_path / "new_rest.nii.gz"
    g4 = space.Grid.mni(4.0)
    space.save_nifti((_areas(g4.coords(), 1.0) @ np.array([1.0, -1.0, 0.5])).reshape(g4.shape).astype(np.float32),
                     g4, p)
    name = subject_from_rest_map(model, p)
    f = {k: torch.from_numpy(v[:2]) for k, v in feats[0].items()}
    g = space.Grid.mni(8.0)
    m = space.brain_mask(g)
    vol = QueryEngine(model, device="cpu").volume(f, g, mask="brain", subject=name)
    with torch.no_grad():
        direct = model.predict(f, coords=g.coords(m), subject=name).numpy()
    direct = apply_model(model, direct, coords=g.coords(m), subject=name)  # the engine applies the gain
    np.testing.assert_allclose(vol[:, m], direct, atol=1e-5)
    back = load_model(model.save(tmp_path / "f.safetensors"))
    assert back.kind == "rest2visual-field" and set(back.rest_maps) == {"sub-01", "sub-02", name}
    with torch.no_grad():
        torch.testing.assert_close(back.predict(f, coords=sets[0].coords, subject=name),
                                   model.predict(f, coords=sets[0].coords, subject=name))
    unet = build_rest2visual(preset="tiny", feature_shapes=SHAPES)
    unet.add_subject("sub-01", sets[0].rest_maps, sets[0].rest_grid)
    assert load_model(unet.save(tmp_path / "u.safetensors")).kind == "rest2visual"


def test_start_from_a_trained_image_only_nrf():
    """--base: the trunk is a copy of an image-only NRF of the same size; another size is
    refused in one line naming what differs."""
    from napari_nrf.models.nrf import build_nrf
    from napari_nrf.models.rest2visual import Rest2VisualError
    from napari_nrf.models.rest2visual_field import build_rest2visual_field

    sets, feats, _ = two_people(n=16)
    model = build_rest2visual_field(preset="field-tiny", feature_shapes=SHAPES, token_maps={})
    nrf = build_nrf("efficientnet-lite0", "tiny", feature_shapes=SHAPES, token_maps={}, seed=5)
    model.copy_trunk(nrf)
    f = {k: torch.from_numpy(v[:2]) for k, v in feats[0].items()}
    with torch.no_grad():
        torch.testing.assert_close(model.field.predict(f, coords=sets[0].coords), nrf.predict(f, coords=sets[0].coords))
    with pytest.raises(Rest2VisualError, match="differs from the field's trunk in .*width"):
        model.copy_trunk(build_nrf("efficientnet-lite0", "demo", feature_shapes=SHAPES, token_maps={}))
