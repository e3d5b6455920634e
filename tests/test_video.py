"""Source and sink on their own: decoding, colour, timestamps, broken inputs, muxing, copying."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import av
import media
import numpy as np
import pytest

from streamsr.errors import ConfigError, InputError, OutputError
from streamsr.models.ops import bicubic_uint8
from streamsr.video.color import default_matrix
from streamsr.video.encoder import EncodeOptions, TimestampRepair, parse_bitrate, repair_timestamps
from streamsr.video.sink import open_sink
from streamsr.video.source import open_source

FAST = EncodeOptions(preset="ultrafast")


def _decode_with_source(path) -> list:
    with open_source(path) as src:
        return list(src)


def _stream_pts(path) -> list[int]:
    """Presentation timestamps straight from PyAV, for comparison with the source."""
    with av.open(str(path)) as c:
        return [f.pts for f in c.decode(video=0)]


def _copy(src, dst, *, scale: int = 4, **kw):
    """Decode `src`, upscale bicubically (nearest for flat colour tests), write `dst`."""
    with open_source(src) as s:
        with open_sink(dst, s.info, scale=scale, copy_from=str(src), **kw) as sink:
            for f in s:
                h, w = f.rgb.shape[:2]
                sink.write(bicubic_uint8(f.rgb, (h * scale, w * scale)), f.pts, f.time_base, name=f.name)
    return sink


def _plane(plane) -> np.ndarray:
    """One 8-bit plane's samples without the line padding."""
    rows = np.frombuffer(bytes(plane), np.uint8).reshape(-1, plane.line_size)
    return rows[:plane.height, :plane.width]


# -- source -------------------------------------------------------------------------------------

def test_source_yields_every_frame_in_order_with_decoded_timestamps(tmp_path):
    path = media.make_index_clip(tmp_path / "idx.mp4", n=12)
    frames = _decode_with_source(path)
    assert [media.read_index(f.rgb) for f in frames] == list(range(12))
    assert [f.index for f in frames] == list(range(12))
    assert [f.pts for f in frames] == _stream_pts(path)
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
    frames = _decode_with_source(path)
    times = [float(f.pts * f.time_base) for f in frames]
    expected = np.concatenate([[0], np.cumsum(media.VFR_DURATIONS_MS)[:-1]]) / 1000
    assert np.allclose(times, expected, atol=1e-6)
    assert [media.read_index(f.rgb) for f in frames] == list(range(len(expected)))


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
    frames = _decode_with_source(path)
    mean = frames[0].rgb.reshape(-1, 3).mean(0)
    assert np.abs(mean - rgb).max() <= 1.0, mean


def test_default_matrix_by_size():
    assert default_matrix(720, 576) == "smpte170m"
    assert default_matrix(1280, 720) == "bt709"
    assert default_matrix(1920, 1080) == "bt709"


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


# -- sink ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("ext", [".mp4", ".mkv"])
def test_sink_round_trip_keeps_order_and_timestamps(tmp_path, ext):
    src = media.make_index_clip(tmp_path / f"in{ext}", n=10)
    sink = _copy(src, tmp_path / f"out{ext}", encode=FAST)
    assert sink.frames_written == 10
    frames, _, _ = media.decode_all(tmp_path / f"out{ext}")
    assert [media.read_index(f) for f in frames] == list(range(10))
    assert frames[0].shape == (192, 256, 3)
    assert np.allclose(media.frame_times(tmp_path / f"out{ext}"), media.frame_times(src), atol=1e-3)


def test_sink_defaults_h264_crf18_medium_yuv420p_mp4_faststart_mkv_by_name(tmp_path):
    src = media.make_index_clip(tmp_path / "in.mp4", n=3)
    _copy(src, tmp_path / "out.mp4")
    data = (tmp_path / "out.mp4").read_bytes()
    assert data.find(b"moov") < data.find(b"mdat")  # faststart: index before the media data
    with av.open(str(tmp_path / "out.mp4")) as c:
        cc = c.streams.video[0].codec_context
        assert (cc.name, cc.pix_fmt) == ("h264", "yuv420p")
        assert c.format.name.startswith("mov,mp4")
    opts = media.x264_options(tmp_path / "out.mp4")
    assert (opts["rc"], opts["crf"]) == ("crf", "18.0")
    # x264's "medium" preset (ultrafast would say subme=0 ref=1 rc_lookahead=0 bframes=0)
    medium = {"subme": "7", "ref": "3", "rc_lookahead": "40", "me": "hex", "trellis": "1", "bframes": "3"}
    assert {k: opts[k] for k in medium} == medium
    _copy(src, tmp_path / "out.mkv")
    with av.open(str(tmp_path / "out.mkv")) as c:
        assert c.format.name == "matroska,webm"
        assert c.streams.video[0].codec_context.name == "h264"
    assert media.matroska_doctype(tmp_path / "out.mkv")
    assert not media.matroska_doctype(tmp_path / "out.mp4")


def test_sink_refuses_existing_output_and_bad_paths(tmp_path):
    src = media.make_index_clip(tmp_path / "in.mp4", n=2)
    out = tmp_path / "out.mp4"
    out.write_bytes(b"precious")
    with pytest.raises(OutputError, match="--overwrite"):
        _copy(src, out)
    assert out.read_bytes() == b"precious"
    _copy(src, out, overwrite=True, encode=FAST)
    assert len(media.decode_all(out)[0]) == 2
    (tmp_path / "afile").write_text("x")
    with pytest.raises(OutputError):
        _copy(src, tmp_path / "afile" / "out.mp4")
    with pytest.raises(OutputError, match="does not exist"):
        _copy(src, tmp_path / "no" / "such" / "out.mp4")
    with pytest.raises(OutputError, match="container format"):
        _copy(src, tmp_path / "out.notaformat")


def test_unknown_codec_and_bad_options_are_config_errors_and_leave_no_file(tmp_path):
    src = media.make_index_clip(tmp_path / "in.mp4", n=2)
    for encode, words in [(EncodeOptions(codec="nosuchcodec"), "unknown encoder"),
                          (EncodeOptions(codec="aac"), "not a video encoder"),
                          (EncodeOptions(pix_fmt="rgb48le"), "pixel format"),
                          (EncodeOptions(preset="warp-speed"), "refuses these settings.*warp-speed")]:
        with pytest.raises(ConfigError, match=words):
            _copy(src, tmp_path / "out.mp4", encode=encode)
        assert not (tmp_path / "out.mp4").exists()
    assert parse_bitrate("8M") == 8_000_000 and parse_bitrate("2500k") == 2_500_000
    with pytest.raises(ConfigError):
        parse_bitrate("fast")


def test_audio_subtitles_chapters_and_tags_are_copied(tmp_path):
    src = media.make_av_clip(tmp_path / "in.mkv", n=25)
    _copy(src, tmp_path / "out.mkv", encode=FAST)
    assert media.packets(tmp_path / "out.mkv") == media.packets(src)  # same count, same bytes
    assert media.packets(tmp_path / "out.mkv", "subtitle") == media.packets(src, "subtitle")
    with av.open(str(tmp_path / "out.mkv")) as c:
        assert c.metadata.get("title") == "streamsr test"
        assert [ch["metadata"]["title"] for ch in c.chapters()] == ["first half", "second half"]
    # MP4 holds AAC as is; subrip text becomes mov_text
    _copy(src, tmp_path / "out.mp4", encode=FAST)
    assert media.packets(tmp_path / "out.mp4") == media.packets(src)
    subs = media.packets(tmp_path / "out.mp4", "subtitle")
    assert [s[2:] for s in subs] == media.packets(src, "subtitle")
    with av.open(str(tmp_path / "out.mp4")) as c:
        assert c.metadata.get("title") == "streamsr test"
        assert len(c.chapters()) == 2


def test_audio_the_container_cannot_hold_is_reencoded_and_logged(tmp_path, caplog):
    src = media.write_clip(tmp_path / "pcm.mkv", (media.index_frame(i) for i in range(10)), audio="pcm_s16le")
    with caplog.at_level(logging.WARNING, logger="streamsr"):
        _copy(src, tmp_path / "out.mp4", encode=FAST)
    with av.open(str(tmp_path / "out.mp4")) as c:
        a = c.streams.audio[0]
        assert a.codec_context.name == "aac"
        seconds = sum(f.samples for f in c.decode(audio=0)) / a.codec_context.sample_rate
    assert abs(seconds - 0.4) < 0.05
    assert any("re-encoding audio" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("full", [False, True])
def test_colour_tags_and_values_survive_the_sink(tmp_path, full):
    src = media.make_color_clip(tmp_path / "c.mp4", rgb=(60, 170, 220), matrix="bt709",
                                full_range=full, n=2)
    _copy(src, tmp_path / "out.mkv", encode=FAST)
    with av.open(str(src)) as a, av.open(str(tmp_path / "out.mkv")) as b:
        fa, fb = next(a.decode(video=0)), next(b.decode(video=0))
        for attr in ("colorspace", "color_range", "color_primaries", "color_trc"):
            assert getattr(fb, attr) == getattr(fa, attr), attr
        for pa, pb in zip(fa.planes, fb.planes, strict=True):  # stored Y', Cb, Cr means
            assert abs(_plane(pa).mean() - _plane(pb).mean()) <= 1.0


def test_rotation_is_kept(tmp_path):
    src = media.make_rotated_clip(tmp_path / "r.mp4", rotation=90)
    for ext in (".mp4", ".mkv"):
        _copy(src, tmp_path / f"out{ext}", encode=FAST)
        with av.open(str(tmp_path / f"out{ext}")) as c:
            assert next(c.decode(video=0)).rotation == 90


def test_10bit_output_with_libx265(tmp_path):
    src = media.make_10bit_clip(tmp_path / "ten.mp4", n=2)
    _copy(src, tmp_path / "out.mkv",
          encode=EncodeOptions(codec="libx265", pix_fmt="yuv420p10le", preset="ultrafast",
                               options={"x265-params": "log-level=error:frame-threads=1:pools=none"}))
    with av.open(str(tmp_path / "out.mkv")) as c:
        assert c.streams.video[0].codec_context.pix_fmt == "yuv420p10le"
        assert len(list(c.decode(video=0))) == 2


@pytest.mark.parametrize("pts, dts, last, expected", [
    (5, 2, 1, (5, 2)),            # a B-frame stream's normal packet is left alone
    (0, 1, None, (0, 0)),         # libx265's occasional first packet with dts after pts
    (0, 2**62, None, (0, 0)),     # ... or with an uninitialised dts
    (5, 7, 3, (5, 5)),            # middle of pts 5, dts 7, last + 1 = 4
    (2, 3, 3, (4, 4)),            # middle is 3, not after last: moved to 4
    (6, 3, 3, (6, 4)),            # dts not increasing: next tick, pts already later
    (None, 3, 5, (None, 6)),
])
def test_repair_timestamps(pts, dts, last, expected):
    assert repair_timestamps(pts, dts, last) == expected


def _repaired(packets):
    r = TimestampRepair()
    out = [t for i, (pts, dts) in enumerate(packets) for t in r.push(i, pts, dts)] + r.flush()
    assert [t[0] for t in out] == list(range(len(packets)))  # every packet once, in order
    return [t[1:] for t in out]


def test_broken_first_packet_of_a_b_frame_stream_does_not_shift_the_rest():
    # I P B B P B B: real dts start at -2; the first packet's dts is garbage
    pts = [0, 3, 1, 2, 6, 4, 5]
    dts = [-2, -1, 0, 1, 2, 3, 4]
    assert _repaired(list(zip(pts, [2**62] + dts[1:], strict=True))) == list(zip(pts, dts, strict=True))
    assert _repaired(list(zip(pts, dts, strict=True))) == list(zip(pts, dts, strict=True))  # sound: untouched
    assert _repaired([(0, 1), (1, 1), (2, 2)]) == [(0, 0), (1, 1), (2, 2)]  # what libx265 did
    assert _repaired([(0, 7)]) == [(0, 0)]  # a one-packet stream is released at the end


def test_png_folder_and_single_image_outputs(tmp_path):
    paths = media.write_images(tmp_path / "imgs", n=2)
    _copy(tmp_path / "imgs", tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["img_000.png", "img_001.png"]
    import cv2
    img = cv2.imread(str(tmp_path / "out" / "img_001.png"))[:, :, ::-1]
    assert np.array_equal(img, bicubic_uint8(media.index_frame(1), (192, 256)))
    with pytest.raises(OutputError, match="not empty"):
        _copy(tmp_path / "imgs", tmp_path / "out")
    _copy(paths[0], tmp_path / "single.png")
    with pytest.raises(OutputError, match="single image"):  # refused before anything is written
        _copy(media.make_index_clip(tmp_path / "v.mp4", n=3), tmp_path / "three.png")
    assert not (tmp_path / "three.png").exists()
    assert cv2.imread(str(tmp_path / "single.png")).shape == (192, 256, 3)


@pytest.mark.parametrize("size", [(1, 1), (101, 57)])
def test_odd_sizes(tmp_path, size):
    src = media.write_clip(tmp_path / "odd.mkv", (media.smooth_frame(i, *size) for i in range(3)),
                           codec="ffv1", pix_fmt="yuv444p", options={})
    sink = _copy(src, tmp_path / "out.mp4", encode=FAST)
    frames, _, _ = media.decode_all(tmp_path / "out.mp4")
    assert sink.frames_written == 3 and len(frames) == 3
    assert frames[0].shape == (size[1] * 4, size[0] * 4, 3)


def test_disk_full_is_an_output_error_and_the_partial_file_plays(tmp_path):
    script = textwrap.dedent(f"""
        import resource, signal, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import numpy as np, media
        from fractions import Fraction
        from streamsr.errors import OutputError
        from streamsr.video.sink import EncodeOptions, open_sink
        from streamsr.video.source import open_source
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG
        with open_source(media.make_smooth_clip({str(tmp_path / 's.mkv')!r}, n=1)) as s:
            info = s.info
        resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000))
        try:
            with open_sink({str(tmp_path / 'full.mkv')!r}, info, encode=EncodeOptions(preset="ultrafast")) as k:
                for i in range(400):
                    k.write(np.ascontiguousarray(np.repeat(np.repeat(media.smooth_frame(i), 4, 0), 4, 1)),
                            i * 40, Fraction(1, 1000))
        except OutputError as exc:
            print("OutputError:", exc)
            sys.exit(3)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "cannot write" in proc.stdout
    frames, _, _ = media.decode_all(tmp_path / "full.mkv")
    assert len(frames) > 10


# -- which stream, which part, which way up (issue 16) -----------------------------------------

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


def make_long_audio_clip(path: Path, n: int = 25, audio_seconds: float = 3.0) -> Path:
    """`n` index frames at 25 fps (1 s) with an AAC tone that goes on for `audio_seconds`."""
    out = av.open(str(path), "w")
    vs = out.add_stream("libx264", rate=25, options={"preset": "ultrafast"})
    vs.width, vs.height, vs.pix_fmt = 64, 48, "yuv420p"
    audio = out.add_stream("aac", rate=48000)
    audio.layout = "stereo"
    for i in range(n):
        f = av.VideoFrame.from_ndarray(media.index_frame(i), format="rgb24")
        f.pts = i
        for p in vs.encode(f):
            out.mux(p)
    for p in vs.encode(None):
        out.mux(p)
    media._write_tone(out, audio, audio_seconds)
    out.close()
    return path


@pytest.mark.parametrize("ext", [".mp4", ".mkv"])
def test_audio_longer_than_the_video_is_kept_whole_and_not_called_truncated(tmp_path, ext, caplog):
    src = make_long_audio_clip(tmp_path / f"long{ext}")
    with caplog.at_level(logging.INFO, logger="streamsr"):
        sink = _copy(src, tmp_path / f"out{ext}", encode=FAST)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert sink.frames_written == 25
    assert media.packets(tmp_path / f"out{ext}") == media.packets(src)  # every audio packet
    said = [r.getMessage() for r in caplog.records if "past the last video frame" in r.getMessage()]
    assert len(said) == 1 and "kept whole" in said[0], said
    with open_source(src) as s:
        assert len(list(s)) == 25 and not s.truncated


def test_a_truncated_file_with_audio_is_still_called_truncated(tmp_path):
    src = media.make_av_clip(tmp_path / "av.mkv", n=50, subtitles=False)
    data = src.read_bytes()
    src.write_bytes(data[:int(len(data) * 0.6)])
    with open_source(src) as s:
        got = len(list(s))
        assert s.truncated and 0 < got < 50


def test_sparse_frames_keep_their_times_and_the_last_frame_its_duration(tmp_path):
    """Frames an hour apart: the output's timestamps and its length are the input's (the
    muxer's default for the last frame, one average frame time, would add 40 minutes)."""
    from fractions import Fraction

    tb = Fraction(1, 1000)
    src = media.write_clip(tmp_path / "sparse.mp4", [media.index_frame(i) for i in range(3)],
                           pts=[0, 3_600_000, 7_200_000], time_base=tb)
    with av.open(str(src)) as c:
        length = c.duration / 1e6  # 7200.04: the last frame shows for 1/25 s
    with open_source(src) as s, open_sink(tmp_path / "out.mp4", s.info, encode=FAST) as sink:
        for f in s:
            sink.write(np.repeat(np.repeat(f.rgb, 4, 0), 4, 1), f.pts, f.time_base,
                       duration=f.duration)
    assert media.frame_times(tmp_path / "out.mp4") == pytest.approx([0, 3600, 7200], abs=1e-3)
    with av.open(str(tmp_path / "out.mp4")) as c:
        assert c.duration / 1e6 == pytest.approx(length, abs=0.01)
