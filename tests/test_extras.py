"""Optional dependencies: a missing extra is one line naming the pip command."""

import sys

import numpy as np
import pytest

from napari_nrf.errors import MissingExtra, NapariNRFError, require


@pytest.mark.parametrize("module,extra", [("av", "movie"), ("open_clip", "clip")])
def test_missing_extra_names_the_pip_command(monkeypatch, module, extra):
    monkeypatch.setitem(sys.modules, module, None)  # as if not installed
    with pytest.raises(MissingExtra) as e:
        require(module, extra, "this")
    msg = str(e.value)
    assert isinstance(e.value, NapariNRFError) and "\n" not in msg
    assert f'pip install "napari-nrf[{extra}]"' in msg


def test_video_without_pyav_and_clip_without_open_clip(monkeypatch, tmp_path):
    from napari_nrf.movie.video import write_video

    monkeypatch.setitem(sys.modules, "av", None)
    with pytest.raises(MissingExtra, match=r'napari-nrf\[movie\]'):
        write_video(tmp_path / "f.mp4", np.zeros((2, 16, 16, 3), np.uint8), fps=2)
    from napari_nrf.features.backbones import ClipViTB16

    monkeypatch.setitem(sys.modules, "open_clip", None)
    with pytest.raises(MissingExtra, match=r'napari-nrf\[clip\]'):
        ClipViTB16()
    from napari_nrf.movie.video import _open_video

    monkeypatch.setitem(sys.modules, "av", None)
    (tmp_path / "f.mp4").write_bytes(b"not really a film")
    with pytest.raises(MissingExtra, match=r'reading video files .*pip install "napari-nrf\[movie\]"'):
        _open_video(tmp_path / "f.mp4")
