"""Parameter forms built with magicgui (labelled rows, typed values, napari's look).

Each builder returns a magicgui ``Container`` whose sub-widgets are reached by name
(``form.resolution.value``); the widgets read their settings from these values. The Qt
widget under each one (``form.resolution.native``: a ``QDoubleSpinBox``, ``QComboBox``...)
stays reachable for code that drives the dock as a user would (tests, demo).
"""

from __future__ import annotations

from magicgui.widgets import ComboBox, Container, FileEdit, FloatSpinBox, LineEdit, SpinBox

DEFAULT_BOX = "-70, -110, -30, 70, 0, 40"


def render_settings_form(extents, outside_choices) -> Container:
    """The Response volume's settings: ``resolution`` (mm, 0.5-4), ``extent`` (one of
    ``extents``), ``roi_layer`` (a Labels layer name), ``roi_file`` (an ROI NIfTI),
    ``box`` (six MNI mm numbers), ``subject`` and ``outside`` (one of ``outside_choices``)."""
    resolution = FloatSpinBox(name="resolution", label="resolution", value=2.0, min=0.5, max=4.0, step=0.5,
                              tooltip="Grid spacing of the rendered volume; the NRF field is continuous, "
                                      "so any resolution queries the same function")
    resolution.native.setSuffix(" mm")
    extent = ComboBox(name="extent", label="extent", choices=list(extents),
                      tooltip="Where to compute the field. A model trained on part of the brain only "
                              "extrapolates elsewhere: the default is where it has data.")
    roi_layer = ComboBox(name="roi_layer", label="ROI layer", choices=[],
                         tooltip="A Labels layer: its non-zero voxels are the extent")
    roi_file = FileEdit(name="roi_file", label="ROI file", mode="r", filter="NIfTI (*.nii *.nii.gz)",
                        tooltip="An ROI NIfTI file (any MNI grid): its non-zero voxels are the extent")
    roi_file.line_edit.native.setPlaceholderText("ROI NIfTI file (any MNI grid)")
    box = LineEdit(name="box", label="box (mm)", value=DEFAULT_BOX,
                   tooltip="xmin, ymin, zmin, xmax, ymax, zmax in MNI mm")
    subject = ComboBox(name="subject", label="subject", choices=[],
                       tooltip="Models with several subjects: whose voxels to predict")
    outside = ComboBox(name="outside", label="outside the extent", choices=list(outside_choices),
                       tooltip="What exported volumes hold outside the extent: NaN (not computed) or 0 "
                               "(for tools that turn NaN regions into 0 anyway, like nilearn's maskers)")
    form = Container(widgets=[resolution, extent, roi_layer, roi_file, box, subject, outside], labels=True)
    form.margins = (0, 0, 0, 0)
    return form


def cluster_settings_form(resolutions, k: int = 20, resolution: str = "2") -> Container:
    """The Voxel clusters' settings: ``k`` (2-500 clusters) and ``resolution`` (grid mm, one of
    ``resolutions`` as text)."""
    kw = SpinBox(name="k", label="clusters k", value=k, min=2, max=500,
                 tooltip="Number of k-means clusters of the voxel embeddings")
    res = ComboBox(name="resolution", label="grid (mm)", choices=list(resolutions), value=resolution,
                   tooltip="Grid the cluster maps are drawn on")
    form = Container(widgets=[kw, res], labels=True)
    form.margins = (0, 0, 0, 0)
    return form


def set_choices(combo: ComboBox, items) -> None:
    """Replace a ComboBox's choices, keeping the current one when it is still offered."""
    items = list(items)
    cur = combo.value
    if list(combo.choices) == items:
        return
    combo.choices = items
    if cur in items:
        combo.value = cur
