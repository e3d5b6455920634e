"""segments.py: rolling segment files cut on stream time."""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from streamsr.video.segments import SegmentSink


class _MemorySink:
    def __init__(self, path: str) -> None:
        self.path, self.frames_written, self.pts, self.closed = path, 0, [], False

    def write(self, rgb, pts, time_base, name=None, duration=None) -> None:
        self.pts.append(pts)
        self.frames_written += 1

    def close(self, trim: bool = False) -> None:
        self.closed = True


def test_segments_roll_on_stream_time(tmp_path):
    opened: list[_MemorySink] = []

    def open_file(path: str) -> _MemorySink:
        opened.append(_MemorySink(path))
        return opened[-1]

    tb = Fraction(1, 90000)
    clock = iter(range(1_700_000_000, 1_700_000_100, 7))
    seg = SegmentSink(str(tmp_path / "cam_%Y%m%d_%H%M%S"), open_file, 1.0,
                      clock=lambda: next(clock))
    rgb = np.zeros((4, 4, 3), np.uint8)
    for i in range(60):  # 2.4 s at 25 fps, with a 2 s outage after frame 30
        seg.write(rgb, i * 3600 + (180000 if i >= 30 else 0), tb)
    seg.close()
    assert [s.frames_written for s in opened] == [25, 5, 25, 5]
    assert all(s.closed for s in opened) and seg.frames_written == 60
    assert all(s.pts[0] == 0 for s in opened), "each segment starts at time zero"
    assert all(p.endswith(".mkv") for p in seg.segments) and len(set(seg.segments)) == 4
