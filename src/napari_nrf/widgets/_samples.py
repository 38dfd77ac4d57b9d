"""napari sample-data contributions.

Both samples put the plugin's MNI152 template layer in (the layer that
:func:`napari_nrf.widgets._render.ensure_template` finds, so later renders reuse it rather
than add a second template) and set up the viewer as the widgets do (neurological
orientation, mm axes, orientation letters: :func:`napari_nrf.widgets._view.setup_mni_view`).
"""

from __future__ import annotations


def _setup_current_viewer():
    """The viewer that File > Open Sample is filling (given the plugin's view), or None."""
    try:
        import napari

        viewer = napari.current_viewer()
    except Exception:  # no Qt viewer (a script calling the function directly)
        viewer = None
    if viewer is not None:
        from ._view import setup_mni_view

        setup_mni_view(viewer)
    return viewer


def mni152_template():
    """The MNI152 T1 template (nilearn, 2 mm) placed in MNI world coordinates."""
    from ._render import template_layer_data

    _setup_current_viewer()
    return [template_layer_data(2.0)]


def demo_response_volume():
    """The demo NRF model's predicted response to a sample image, 2 mm, in MNI world coordinates,
    where the model has data (NaN, shown transparent, elsewhere).

    Loads the demo model (shipped in the package, or trained once and cached; see
    :func:`napari_nrf.demo.demo_model`) and renders one of the virtual subjects' stimuli.
    """
    from napari_nrf.demo import demo_sample_volume

    from ._render import template_layer_data, volume_layer_data

    vol, grid, name = demo_sample_volume()
    from ._render import layer_kind

    viewer = _setup_current_viewer()
    layers = [volume_layer_data(vol, grid, name, image=name, mask="data")]
    if viewer is None or not any(layer_kind(ly) == "template" for ly in viewer.layers):
        layers.insert(0, template_layer_data(2.0))  # no second template
    return layers
