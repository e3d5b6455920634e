"""images.py: a single image or a folder of images as input, turned upright by EXIF."""

from __future__ import annotations

import media
import numpy as np
import pytest

from streamsr.video.source import open_source


def test_single_image_and_image_folder(tmp_path):
    paths = media.write_images(tmp_path / "imgs", n=3)
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    paths[2].rename(tmp_path / "imgs" / "img_10.png")  # natural order: img_001 < img_10
    with open_source(tmp_path / "imgs") as src:
        frames = list(src)
        assert src.info.frames == 3
    assert [media.read_index(f.rgb) for f in frames] == [0, 1, 2]
    assert [f.name for f in frames] == ["img_000", "img_001", "img_10"]
    with open_source(paths[1]) as src:
        (f,) = list(src)
    assert np.array_equal(f.rgb, media.index_frame(1))


@pytest.mark.parametrize("orientation", [1, 2, 3, 4, 5, 6, 7, 8])
def test_an_image_input_is_turned_upright_by_its_exif_orientation(tmp_path, orientation):
    from PIL import Image, ImageOps

    stored = media.index_frame(37, 64, 48)  # as the camera stored it: 64 wide, 48 high
    path = tmp_path / f"photo{orientation}.jpg"
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(stored).save(path, quality=98, exif=exif)
    with Image.open(path) as im:  # Pillow's reading of the same file is the expectation
        upright = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    with open_source(path) as src:
        (frame,) = list(src)
        assert (src.info.height, src.info.width) == upright.shape[:2]
    assert frame.rgb.shape == upright.shape
    assert np.abs(frame.rgb.astype(int) - upright).mean() < 1.0
    if orientation == 6:  # a portrait photo: 48 wide, 64 high, the picture turned clockwise
        assert frame.rgb.shape == (64, 48, 3)
        assert media.read_index(np.rot90(frame.rgb, 1)) == 37
