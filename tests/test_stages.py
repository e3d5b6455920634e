"""Stages: decode thread -> batcher + engine -> encode thread, in order, each frame with its times."""

from __future__ import annotations

from fractions import Fraction
from types import SimpleNamespace

import numpy as np
import pytest
import torch.nn.functional as F
from torch import nn

from streamsr.errors import InputError
from streamsr.inference.engine import Engine, EngineConfig
from streamsr.inference.pack import Yuv420
from streamsr.inference.stages import Stages
from streamsr.video.source import Frame


class Nearest(nn.Module):
    scale = 4

    def forward(self, x):
        return F.interpolate(x, scale_factor=4, mode="nearest")


class ListSource:
    """Frames from a list; raises `fail` after them when given."""

    def __init__(self, frames: list[Frame], fail: Exception | None = None) -> None:
        self.frames, self.fail = frames, fail
        self.info = SimpleNamespace(frames=len(frames))

    def __iter__(self):
        yield from self.frames
        if self.fail is not None:
            raise self.fail


class RecordingSink:
    def __init__(self, yuv420: Yuv420 | None = None) -> None:
        self.yuv420 = yuv420
        self.written: list[tuple[np.ndarray, int | None, Fraction, str | None, int | None]] = []

    @property
    def frames_written(self) -> int:
        return len(self.written)

    def write(self, pixels, pts, time_base, name=None, duration=None) -> None:
        self.written.append((pixels, pts, time_base, name, duration))


def _frames(sizes: list[tuple[int, int]]) -> list[Frame]:
    rng = np.random.default_rng(0)
    return [Frame(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), pts=1000 + 7 * i,
                  time_base=Fraction(1, 90000), index=i, wallclock=0.0, name=f"n{i}", duration=7)
            for i, (h, w) in enumerate(sizes)]


def _run(frames, sink, batch=3, sbs=False, fail=None):
    engine = Engine(Nearest(), EngineConfig(device="cpu", batch=batch))
    stages = Stages(ListSource(frames, fail), sink, engine, batch, 4, sbs, None)
    stages.go()
    return stages


def test_every_frame_leaves_in_order_with_its_own_times_across_size_changes():
    frames = _frames([(8, 12)] * 4 + [(6, 10)] * 3 + [(8, 12)])  # sizes change: new batches
    sink = RecordingSink()
    _run(frames, sink)
    assert [(w[1], w[3], w[4]) for w in sink.written] == [(f.pts, f.name, f.duration)
                                                          for f in frames]
    for (pixels, *_), f in zip(sink.written, frames, strict=True):
        np.testing.assert_array_equal(pixels, f.rgb.repeat(4, axis=0).repeat(4, axis=1))


def test_a_sink_that_takes_planes_gets_planes_unless_side_by_side():
    frames = _frames([(8, 12)] * 2)
    planes, sbs = RecordingSink(Yuv420.for_matrix("bt709", "tv")), RecordingSink(Yuv420.for_matrix("bt709", "tv"))
    _run(frames, planes)
    _run(frames, sbs, sbs=True)
    assert [w[0].shape for w in planes.written] == [(48, 48)] * 2  # 32x48 as yuv420p planes
    assert [w[0].shape for w in sbs.written] == [(32, 48, 3)] * 2  # composed in RGB


def test_a_bad_input_keeps_the_frames_decoded_before_it():
    frames = _frames([(8, 12)] * 5)
    sink = RecordingSink()
    with pytest.raises(InputError, match="broken"):
        _run(frames, sink, batch=2, fail=InputError("broken"))
    assert [w[1] for w in sink.written] == [f.pts for f in frames]


def test_max_frames_cuts_and_says_so():
    frames = _frames([(8, 12)] * 5)
    sink = RecordingSink()
    engine = Engine(Nearest(), EngineConfig(device="cpu", batch=2))
    stages = Stages(ListSource(frames), sink, engine, 2, 4, False, None)
    stages.max_frames = 3
    stages.go()
    assert sink.frames_written == 3 and stages.cut
