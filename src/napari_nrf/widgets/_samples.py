"""napari sample-data contributions."""

from __future__ import annotations


def mni152_template():
    """The MNI152 T1 template (nilearn, 2 mm) placed in MNI world coordinates."""
    from napari_nrf import space

    grid = space.Grid.mni(2.0)
    data, kwargs = space.layer_data(space.template(grid), grid)
    kwargs.update(name="MNI152", colormap="gray", blending="translucent_no_depth")
    return [(data, kwargs, "image")]
