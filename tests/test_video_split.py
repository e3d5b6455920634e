"""Keyframe split (`streamsr.video.split`): the keyframe index read from packets, plans cut at
keyframes into contiguous parts, and parts of other containers keeping every frame and timestamp.
(Joining parts and torchrun runs: tests/test_jobs_parts.py; the torchrun environment:
tests/test_runtime.py.)"""

from __future__ import annotations

from fractions import Fraction

import media
import pytest
from media import file_indices as indices

from streamsr.api import upscale
from streamsr.jobs.parts import assign_contiguous, upscale_parts
from streamsr.runtime import DistEnv
from streamsr.video.split import KeyframeIndex, Segment, plan_segments, read_keyframe_index

GOP6 = {"crf": "12", "preset": "fast", "g": "6", "x264-params": "scenecut=0"}  # B-frames, IDR every 6
# Open GOPs: the B-frames after each I-frame (in decode order) show earlier frames and refer back.
OPEN_GOP6 = {"crf": "12", "preset": "fast", "g": "6", "x264-params": "scenecut=0:open-gop=1:bframes=3"}


def test_keyframe_index_from_packets(tmp_path):
    src = media.make_index_clip(tmp_path / "in.mp4", n=24, options=GOP6)
    index = read_keyframe_index(src)
    assert index.frames == 24
    assert index.keyframes == (0, 6, 12, 18)
    _, pts, tb = media.decode_all(src)
    assert list(index.pts) == pts and index.time_base == tb and index.start_time == pts[0]


@pytest.mark.parametrize("ext", [".ts", ".mkv"])
def test_parts_of_other_containers_keep_every_frame_and_timestamp(tmp_path, ext):
    # MPEG-TS starts at 0.08 s and seeks by decode time (past the keyframe); MKV counts in ms.
    src = media.make_index_clip(tmp_path / f"in{ext}", n=24, options=OPEN_GOP6)
    single, parts = tmp_path / "single.mp4", tmp_path / "parts.mp4"
    upscale(src, single, model=media.BicubicX4(), encoder_preset="ultrafast", handle_signals=False)
    stats = upscale_parts(src, parts, model=media.BicubicX4(), part_frames=6, env=DistEnv(),
                          encoder_preset="ultrafast", handle_signals=False)
    assert stats.frames == 24 and indices(parts) == list(range(24))
    assert media.frame_times(parts) == media.frame_times(single) == media.frame_times(src)


def test_plan_cuts_at_keyframes_into_contiguous_parts():
    index = KeyframeIndex(Fraction(1, 25), 0, tuple(range(0, 240, 10)), (0, 6, 12, 18))
    two = plan_segments(index, 2)
    assert [(s.first, s.frames, s.start_pts, s.end_pts) for s in two] == [(0, 12, 0, 120), (12, 12, 120, None)]
    three = plan_segments(index, 3)  # targets 8 and 16 -> nearest keyframes 6 and 18
    assert [s.first for s in three] == [0, 6, 18] and sum(s.frames for s in three) == 24
    assert len(plan_segments(index, 10)) == 4  # never more parts than keyframes
    single = plan_segments(KeyframeIndex(Fraction(1, 25), 0, tuple(range(24)), (0,)), 4)
    assert [(s.first, s.frames, s.end_pts) for s in single] == [(0, 24, None)]
    segs = [Segment(i, 6 * i, 6, 60 * i, None) for i in range(5)]
    assert assign_contiguous(segs, 2) == [[0, 1], [2, 3, 4]]  # contiguous, 12 vs 18 frames
    assert assign_contiguous(segs, 5) == [[0], [1], [2], [3], [4]]
    assert sorted(sum(assign_contiguous(segs[:1], 3), [])) == [0]  # one part: one rank works
