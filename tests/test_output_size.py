"""Output sizes other than x4 (`--outscale`, `--size`): the size rule and the downscale."""

from __future__ import annotations

import pytest
import torch

from streamsr.errors import ConfigError
from streamsr.inference.output_size import OutputSize, parse_size


@pytest.mark.parametrize("rule, size, expected", [
    (dict(outscale=2), (64, 48), (128, 96)),
    (dict(outscale=1.5), (66, 50), (100, 76)),  # 99x75 -> even sides for 4:2:0 video
    (dict(outscale=4), (33, 17), (132, 68)),
    (dict(outscale=0.25), (64, 48), (16, 12)),
    (dict(size="100x-1"), (64, 48), (100, 76)),  # 100 x 75 -> 76
    (dict(size="-1x100"), (64, 48), (134, 100)),  # 133.3 -> 134
    (dict(size="0x96"), (64, 48), (128, 96)),
    (dict(size="200x100"), (64, 48), (134, 100)),  # fits the box: height decides
    (dict(size="100x200"), (64, 48), (100, 76)),  # width decides
    (dict(size=(256, 192)), (64, 48), (256, 192)),
])
def test_output_size_rule(rule, size, expected):
    assert OutputSize.from_options(**rule).for_input(*size, scale=4) == expected


def test_image_outputs_round_to_the_nearest_pixel_not_to_even():
    assert OutputSize.from_options(outscale=1.5, even=False).for_input(66, 50, 4) == (99, 75)
    assert OutputSize.from_options(outscale=1, even=False).for_input(101, 57, 4) == (101, 57)


@pytest.mark.parametrize("rule", [dict(outscale=0.1), dict(outscale=float("nan")),
                                  dict(outscale=float("inf")), dict(outscale="two"),
                                  dict(size="abc"), dict(size="-1x-1"), dict(size="1280"),
                                  dict(size="12.5x10"), dict(outscale=2, size="100x-1")])
def test_bad_output_sizes_are_config_errors(rule):
    with pytest.raises(ConfigError):
        OutputSize.from_options(**rule)


def test_more_than_the_model_gives_is_refused():
    with pytest.raises(ConfigError, match="only scales down"):
        OutputSize.from_options(size="300x-1").for_input(64, 48, 4)
    with pytest.raises(ConfigError, match="more than the model"):
        OutputSize.from_options(outscale=3).for_input(64, 48, 2)


def test_parse_size():
    assert parse_size("1280x720") == (1280, 720)
    assert parse_size(" 1280X-1 ") == (1280, -1)
    assert parse_size("-1:720") == (-1, 720)


def test_resize_is_an_antialiased_downscale_matching_pil():
    """The downscale is PIL's antialiased bicubic reduction (independent implementation) to
    within rounding, and leaves a tensor already at the output size alone."""
    import numpy as np
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    y = torch.rand(1, 3, 96, 128, generator=g)
    rule = OutputSize.from_options(outscale=0.5)  # 32x24 input, x4 model: 128x96 -> 16x12
    out = rule.resize(y, 32, 24, 4)
    assert out.shape == (1, 3, 12, 16)
    img = Image.fromarray((y[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    ref = np.asarray(img.resize((16, 12), Image.BICUBIC), dtype=np.float64)
    ours = out[0].permute(1, 2, 0).clamp(0, 1).numpy() * 255
    assert np.abs(ours - ref).max() < 2.0
    # a plain (aliasing) bicubic sampling of this noise is far from it
    naive = torch.nn.functional.interpolate(y, size=(12, 16), mode="bicubic")
    assert np.abs(naive[0].permute(1, 2, 0).clamp(0, 1).numpy() * 255 - ref).mean() > 20
    same = OutputSize.from_options(outscale=4)
    assert same.resize(y, 32, 24, 4) is y
