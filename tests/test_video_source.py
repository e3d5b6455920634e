"""source.py: decoding files (order, timestamps, frame threads, variable frame rate, rotation,
10-bit, --start/--duration), which stream is the video, and broken inputs."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import av
import media
import numpy as np
import pytest
from video_io import decode_with_source, stream_pts

from streamsr.errors import ConfigError, InputError
from streamsr.video.source import open_source


def test_source_yields_every_frame_in_order_with_decoded_timestamps(tmp_path):
    path = media.make_index_clip(tmp_path / "idx.mp4", n=12)
    frames = decode_with_source(path)
    assert [media.read_index(f.rgb) for f in frames] == list(range(12))
    assert [f.index for f in frames] == list(range(12))
    assert [f.pts for f in frames] == stream_pts(path)
    f = frames[0]
    assert f.rgb.shape == (48, 64, 3) and f.rgb.dtype == np.uint8 and f.rgb.flags.c_contiguous
    with open_source(path) as src:
        assert (src.info.width, src.info.height, src.info.frames) == (64, 48, 12)
        assert src.info.fps == 25 and not src.info.is_live


def test_source_decodes_a_file_with_frame_threads(tmp_path):
    # PyAV opens decoders with slice threads only; the source asks for frame + slice threads
    # (FFmpeg's thread count 0: one per available core) and still flushes every frame out.
    from av.codec.context import ThreadType

    path = media.make_index_clip(tmp_path / "idx.mp4", n=12)
    with av.open(str(path)) as c:
        assert c.streams.video[0].codec_context.thread_type == ThreadType.SLICE  # the default
    with open_source(path) as src:
        cc = src.stream.codec_context
        assert cc.thread_type == ThreadType.AUTO == ThreadType.FRAME | ThreadType.SLICE
        if len(os.sched_getaffinity(0)) > 1:
            assert cc.thread_count > 1  # FFmpeg resolved "auto" to several threads
        assert [media.read_index(f.rgb) for f in src] == list(range(12))


def test_source_keeps_variable_frame_rate(tmp_path):
    path = media.make_vfr_clip(tmp_path / "vfr.mkv")
    frames = decode_with_source(path)
    times = [float(f.pts * f.time_base) for f in frames]
    expected = np.concatenate([[0], np.cumsum(media.VFR_DURATIONS_MS)[:-1]]) / 1000
    assert np.allclose(times, expected, atol=1e-6)
    assert [media.read_index(f.rgb) for f in frames] == list(range(len(expected)))


def test_source_reads_rotation_and_10bit(tmp_path):
    with open_source(media.make_rotated_clip(tmp_path / "r.mp4", rotation=90)) as src:
        assert src.info.rotation == 90
    path = media.make_10bit_clip(tmp_path / "ten.mp4", n=3)
    with open_source(path) as src:
        assert src.info.pix_fmt == "yuv420p10le"
        frames = list(src)
    assert len(frames) == 3
    for i, f in enumerate(frames):
        err = np.abs(f.rgb.astype(int) - media.smooth_frame(i)).mean()
        assert err < 4, err


def test_deep_source_gives_16_bit_rgb_for_high_bit_depth_inputs_only(tmp_path):
    ten = media.make_10bit_gradient_clip(tmp_path / "grad.mkv", n=2)
    with open_source(ten, deep=True) as src:
        assert src.deep
        frames = list(src)
    with open_source(ten) as src:  # not asked for: 8-bit RGB as before
        assert not src.deep
        shallow = list(src)
    assert len(frames) == len(shallow) == 2
    for i, (f, f8) in enumerate(zip(frames, shallow, strict=True)):
        assert f.rgb.dtype == np.uint16 and f.rgb.shape == (48, 64, 3) and f.rgb.flags.c_contiguous
        assert f8.rgb.dtype == np.uint8
        codes = media.gradient_luma10(i)
        assert (f.rgb == f.rgb[..., :1]).all()  # grey stays grey
        # every 10-bit level keeps its own 16-bit value, in order; 8 bits merge neighbours
        levels = {int(c): int(v) for c, v in zip(codes.ravel(), f.rgb[..., 0].ravel(), strict=True)}
        values = [levels[c] for c in sorted(levels)]
        assert len(set(values)) == len(levels) > 400 and values == sorted(values)
        assert len(np.unique(f8.rgb)) < 256 < len(levels)
        # limited range: (Y - 64) / 876 of full scale, less swscale's gain for deep RGB (limited
        # white becomes 65283, not 65535; its encoder maps 65283 back to 940, so it cancels)
        ideal = (codes.astype(np.float64) - 64) / 876 * 65535
        assert np.abs(f.rgb[..., 0] - ideal * 65283 / 65535).max() <= 2
    eight = media.make_index_clip(tmp_path / "idx.mp4", n=2)
    with open_source(eight, deep=True) as src:  # an 8-bit input stays on the 8-bit path
        assert not src.deep and next(iter(src)).rgb.dtype == np.uint8


def test_source_start_and_duration(tmp_path):
    path = media.make_index_clip(tmp_path / "idx.mp4", n=15)
    with open_source(path, start=0.2, duration=0.2) as src:
        got = [media.read_index(f.rgb) for f in src]
        assert src.info.frames == 5
    assert got == [5, 6, 7, 8, 9]
    with open_source(path, start=0.4) as src:
        assert [media.read_index(f.rgb) for f in src] == list(range(10, 15))


def test_bad_inputs_fail_with_one_clear_input_error(tmp_path):
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "text.mp4").write_text("hello, I am not a video\n" * 20)
    (tmp_path / "nothing").mkdir()
    audio = media.make_audio_only(tmp_path / "audio.m4a")
    cases = {
        tmp_path / "missing.mp4": "not found",
        tmp_path / "empty.mp4": "empty",
        tmp_path / "text.mp4": "not a video",
        audio: "no video stream",
        tmp_path / "nothing": "no images",
    }
    for path, words in cases.items():
        with pytest.raises(InputError, match=words):
            open_source(path)


def test_absurd_resolution_is_refused_before_decoding(tmp_path):
    path = media.make_index_clip(tmp_path / "idx.mp4", n=2)
    with pytest.raises(InputError, match="larger than the limit"):
        open_source(path, max_pixels=64 * 48 - 1)
    with open_source(path, max_pixels=64 * 48) as src:
        assert len(list(src)) == 2


def test_truncated_file_keeps_decodable_frames_and_warns_once(tmp_path, caplog):
    path = media.make_truncated(tmp_path / "cut.mkv", n=30, keep=0.6)
    with caplog.at_level(logging.WARNING, logger="streamsr"):
        with open_source(path) as src:
            got = [media.read_index(f.rgb) for f in src]
            assert src.truncated
    assert 0 < len(got) < 30
    assert got == list(range(len(got)))
    assert len([r for r in caplog.records if "truncated" in r.getMessage()]) == 1


def test_corrupt_packet_in_the_middle_is_skipped_with_one_warning(tmp_path, caplog):
    path = media.make_corrupt_packets(tmp_path / "bad.mkv", n=12, bad=(5, 8))
    with caplog.at_level(logging.WARNING, logger="streamsr"):
        with open_source(path) as src:
            got = [media.read_index(f.rgb) for f in src]
            assert src.skipped_packets == 2
    assert got == [i for i in range(12) if i not in (5, 8)]
    assert len([r for r in caplog.records if "undecodable" in r.getMessage()]) == 1


@pytest.fixture
def cover_first(tmp_path) -> list[Path]:
    return [media.make_cover_first_mp4(tmp_path / "cover.mp4"),
            media.make_thumbnail_first_mkv(tmp_path / "thumb.mkv")]


def test_the_main_video_stream_is_taken_not_a_cover_picture(cover_first, caplog):
    from streamsr.video.split import read_keyframe_index

    for path in cover_first:
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="streamsr"):
            with open_source(path) as src:
                got = [media.read_index(f.rgb) for f in src]
                assert (src.info.width, src.info.height) == (64, 48)
        assert got == list(range(10))
        said = [r.getMessage() for r in caplog.records if "video stream #1" in r.getMessage()]
        assert len(said) == 1 and "64x48" in said[0] and "#0" in said[0], said
        assert read_keyframe_index(path).frames == 10  # the parts of --resume index it too


def test_a_file_with_only_a_cover_picture_has_no_video(tmp_path):
    path = tmp_path / "song.m4a"
    out = av.open(str(path), "w", format="mp4")
    cover, packets = media.cover_picture(out)
    audio = out.add_stream("aac", rate=48000)
    audio.layout = "stereo"
    for p in packets:
        out.mux(p)
    media._write_tone(out, audio, 0.5)
    out.close()
    with pytest.raises(InputError, match=r"no video stream \(only audio streams and an attached pic"):
        open_source(path)


@pytest.mark.parametrize("start, duration", [
    (float("nan"), None), (float("inf"), None), (1e308, None), (-1.0, None), ("5", None),
    (None, float("nan")), (None, float("inf")), (None, 0.0), (None, -2.0), (None, 1e308)])
def test_start_and_duration_no_input_can_have_are_refused_in_one_line(tmp_path, start, duration):
    clip = media.make_index_clip(tmp_path / "idx.mp4", n=3)
    images = media.write_images(tmp_path / "imgs", n=2)
    for path in (clip, images[0].parent):
        with pytest.raises(ConfigError, match=r"^--(start|duration) must be") as err:
            open_source(path, start=start, duration=duration)
        assert "\n" not in str(err.value)


def test_start_past_the_end_is_an_input_error(tmp_path):
    path = media.make_index_clip(tmp_path / "idx.mp4", n=12)  # 0.48 s
    for start in (5.0, 0.48):
        with pytest.raises(InputError, match=rf"no video frames at or after --start {start:g} s "
                                             r"\(its video lasts 0.48 s\)"):
            open_source(path, start=start)
    with open_source(path, start=0.44) as src:  # the last frame is still there
        assert [media.read_index(f.rgb) for f in src] == [11]


def test_a_truncated_file_with_audio_is_still_called_truncated(tmp_path):
    src = media.make_av_clip(tmp_path / "av.mkv", n=50, subtitles=False)
    data = src.read_bytes()
    src.write_bytes(data[:int(len(data) * 0.6)])
    with open_source(src) as s:
        got = len(list(s))
        assert s.truncated and 0 < got < 50
