"""color.py: the matrix and range frames are decoded with, and the tags and values an output
keeps."""

from __future__ import annotations

import av
import media
import numpy as np
import pytest
from video_io import FAST, copy_through_sink, decode_with_source, plane_samples

from streamsr.video.color import default_matrix


@pytest.mark.parametrize("matrix,full,size,tag", [
    ("bt709", False, (64, 48), True),       # tagged BT.709 on an SD-sized clip: the tag wins
    ("bt709", True, (64, 48), True),        # full range
    ("smpte170m", False, (64, 48), False),  # untagged SD: BT.601
    ("bt709", False, (1280, 720), False),   # untagged HD: BT.709
])
def test_source_converts_with_the_inputs_matrix_and_range(tmp_path, matrix, full, size, tag):
    rgb = (200, 100, 50)
    path = media.make_color_clip(tmp_path / "c.mp4", rgb=rgb, matrix=matrix, full_range=full,
                                 size=size, tag=tag, n=2)
    frames = decode_with_source(path)
    mean = frames[0].rgb.reshape(-1, 3).mean(0)
    assert np.abs(mean - rgb).max() <= 1.0, mean


def test_default_matrix_by_size():
    assert default_matrix(720, 576) == "smpte170m"
    assert default_matrix(1280, 720) == "bt709"
    assert default_matrix(1920, 1080) == "bt709"


@pytest.mark.parametrize("full", [False, True])
def test_colour_tags_and_values_survive_the_sink(tmp_path, full):
    src = media.make_color_clip(tmp_path / "c.mp4", rgb=(60, 170, 220), matrix="bt709",
                                full_range=full, n=2)
    copy_through_sink(src, tmp_path / "out.mkv", encode=FAST)
    with av.open(str(src)) as a, av.open(str(tmp_path / "out.mkv")) as b:
        fa, fb = next(a.decode(video=0)), next(b.decode(video=0))
        for attr in ("colorspace", "color_range", "color_primaries", "color_trc"):
            assert getattr(fb, attr) == getattr(fa, attr), attr
        for pa, pb in zip(fa.planes, fb.planes, strict=True):  # stored Y', Cb, Cr means
            assert abs(plane_samples(pa).mean() - plane_samples(pb).mean()) <= 1.0
