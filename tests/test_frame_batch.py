"""FrameBatch: the engine hands each batch's frames back with its output, in the asked layout."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from streamsr.inference.batch import FrameBatch, check_frames
from streamsr.inference.engine import Engine, EngineConfig
from streamsr.inference.pack import Yuv420
from streamsr.video.source import Frame

BT709 = Yuv420.for_matrix("bt709", "tv")


class Nearest(nn.Module):
    scale = 4

    def forward(self, x):
        return F.interpolate(x, scale_factor=4, mode="nearest")


def _frames(n: int, h: int, w: int, start: int = 0) -> list[Frame]:
    rng = np.random.default_rng(start)
    return [Frame(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), pts=3 * (start + i),
                  time_base=Fraction(1, 30), index=start + i, wallclock=0.0, name=f"f{start + i}",
                  duration=3) for i in range(n)]


def test_of_stacks_the_frames_and_keeps_them():
    frames = _frames(3, 8, 12)
    batch = FrameBatch.of(frames)
    assert batch.pixels.shape == (3, 8, 12, 3) and batch.layout == "rgb" and len(batch) == 3
    assert list(batch.frames) == frames
    np.testing.assert_array_equal(batch.pixels[1], frames[1].rgb)


def test_with_pixels_tells_planes_from_rgb():
    batch = FrameBatch.of(_frames(2, 8, 12))
    assert batch.with_pixels(np.zeros((2, 48, 32), np.uint8)).layout == "yuv420p"
    assert batch.with_pixels(np.zeros((2, 32, 48, 3), np.uint8)).layout == "rgb"
    assert batch.with_pixels(np.zeros((2, 48, 32), np.uint8)).frames is batch.frames


@pytest.mark.parametrize("yuv420", [None, BT709])
def test_map_returns_each_batch_with_its_own_frames(yuv420):
    engine = Engine(Nearest(), EngineConfig(device="cpu", batch=2))
    groups = [_frames(2, 8, 12, 0), _frames(1, 8, 12, 2), _frames(3, 6, 10, 3)]
    outs = list(engine.map((FrameBatch.of(g) for g in groups), yuv420=yuv420))
    assert [list(o.frames) for o in outs] == groups
    assert [f.pts for o in outs for f in o.frames] == [0, 3, 6, 9, 12, 15]
    for out, group in zip(outs, groups, strict=True):
        h, w = group[0].rgb.shape[:2]
        if yuv420 is None:
            assert out.layout == "rgb" and out.pixels.shape == (len(group), 4 * h, 4 * w, 3)
            np.testing.assert_array_equal(out.pixels, np.stack([f.rgb for f in group])
                                          .repeat(4, axis=1).repeat(4, axis=2))
        else:
            assert out.layout == "yuv420p" and out.pixels.shape == (len(group), 6 * h, 4 * w)


def test_map_keeps_plain_arrays_plain():
    engine = Engine(Nearest(), EngineConfig(device="cpu", batch=2))
    x = np.zeros((2, 5, 7, 3), np.uint8)
    rgb, planes = engine.map([x, x]), engine.map([x], yuv420=BT709)
    assert [o.shape for o in rgb] == [(2, 20, 28, 3)] * 2
    out, = planes
    assert isinstance(out, np.ndarray) and out.shape == (2, 30, 28)  # 20x28 planes
    batch, = engine.map([FrameBatch(x)])
    assert batch.layout == "rgb" and batch.frames is None


def test_check_frames_names_the_caller_bug():
    with pytest.raises(TypeError, match="uint8 or uint16"):
        check_frames(np.zeros((1, 4, 4, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\)"):
        check_frames(np.zeros((4, 4, 3), np.uint8))
    assert check_frames(torch.zeros(1, 4, 4, 3, dtype=torch.uint8).numpy()).flags.c_contiguous


def test_pinned_ring_pairs_each_result_with_its_batch(monkeypatch):
    """The CUDA ring yields batch n-1 after starting batch n: with the copies stood in for on
    the CPU, every result still comes back with its own frames, in order."""
    import streamsr.inference.pinned as pinned

    class CpuRing:
        def __init__(self, device) -> None:
            self.out: dict[int, np.ndarray] = {}

        def upload(self, slot, frames):
            return torch.from_numpy(frames)

        def download(self, slot, out):
            self.out[slot] = out.numpy().copy()

        def collect(self, slot, shape):
            assert self.out[slot].shape == shape
            return self.out[slot]

    monkeypatch.setattr(pinned, "_Ring", CpuRing)
    groups = [_frames(2, 4, 6, 0), _frames(1, 4, 6, 2), _frames(2, 4, 6, 3)]
    double = lambda x: x.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)  # noqa: E731
    outs = list(pinned.map_pinned((FrameBatch.of(g) for g in groups), double, torch.device("cpu")))
    assert [list(o.frames) for o in outs] == groups
    for out, group in zip(outs, groups, strict=True):
        np.testing.assert_array_equal(out.pixels, np.stack([f.rgb for f in group])
                                      .repeat(2, axis=1).repeat(2, axis=2))
    with pytest.raises(TypeError, match="uint8 frames"):
        list(pinned.map_pinned([FrameBatch(np.zeros((1, 4, 4, 3), np.uint16))], double,
                               torch.device("cpu")))
