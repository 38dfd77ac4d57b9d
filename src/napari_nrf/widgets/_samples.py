"""napari sample-data contributions."""

from __future__ import annotations


def mni152_template():
    """The MNI152 T1 template (nilearn, 2 mm) placed in MNI world coordinates."""
    from napari_nrf import space

    grid = space.Grid.mni(2.0)
    data, kwargs = space.layer_data(space.template(grid), grid)
    kwargs.update(name="MNI152", colormap="gray", blending="translucent_no_depth")
    return [(data, kwargs, "image")]


def demo_response_volume():
    """The demo NRF model's predicted response to a sample image, 2 mm, in MNI world coordinates.

    Loads the demo model (shipped in the package, or trained once and cached; see
    :func:`napari_nrf.demo.demo_model`) and renders one of the virtual subjects' stimuli.
    """
    from napari_nrf.demo import demo_sample_volume

    from ._render import template_layer_data, volume_layer_data

    vol, grid, name = demo_sample_volume()
    return [template_layer_data(2.0), volume_layer_data(vol, grid, name, image=name, mask="data")]
