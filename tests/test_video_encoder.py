"""encoder.py: encoder settings checked before any work (one line for what the encoder
refuses), HEVC tagged for Apple's players, timestamps the muxer would refuse repaired."""

from __future__ import annotations

from pathlib import Path

import av
import media
import numpy as np
import pytest
from click.testing import CliRunner
from media import H, W, invoke, model_args
from video_io import Counting, copy_through_sink

from streamsr.api import upscale
from streamsr.cli import main
from streamsr.errors import ConfigError
from streamsr.video.encoder import (
    EncodeOptions,
    TimestampRepair,
    check_encoder,
    parse_bitrate,
    repair_timestamps,
)


@pytest.fixture
def src(tmp_path) -> Path:
    return media.make_index_clip(tmp_path / "in.mp4", n=4, size=(32, 24))


@pytest.mark.parametrize("settings, words", [
    (dict(bitrate="99999999999999999999G"), "more than any encoder takes"),
    (dict(bitrate="9" * 400), "more than any encoder takes"),
    (dict(codec="libsvtav1", bitrate="1G", crf=None), "libsvtav1 refuses these settings"),
    (dict(pix_fmt="foo"), "unknown pixel format 'foo'"),
    (dict(codec="rawvideo", pix_fmt="foo"), "unknown pixel format 'foo'"),  # no format list
    (dict(pix_fmt="yuv420p10le", codec="mpeg4"), "cannot write pixel format"),
    (dict(encoder_options={"bogus": "1"}), "has no option 'bogus'"),
    (dict(encoder_options={"crf": "18", "tune": "film", "x264opts": "keyint=30", "no-such": "2"}),
     "has no option 'no-such'"),
    (dict(encoder_preset="warpspeed"), "preset/tune warpspeed"),
])
def test_settings_the_encoder_refuses_are_one_line_before_any_work(tmp_path, src, settings,
                                                                      words):
    model = Counting()
    out = tmp_path / "out.mp4"
    with pytest.raises(ConfigError, match=words):
        upscale(src, out, model=model, device="cpu", **settings)
    assert model.calls == 0 and not out.exists()


def test_encoder_options_it_knows_still_reach_it():
    check_encoder(EncodeOptions(options={"tune": "film", "x264-params": "keyint=30", "g": "12"}))
    check_encoder(EncodeOptions(codec="libx265", options={"x265-params": "log-level=error"}))
    assert parse_bitrate("2500k") == 2_500_000 and parse_bitrate("8M") == 8_000_000


def test_the_cli_says_which_option_is_unknown(tmp_path, src):
    result = CliRunner().invoke(main, ["upscale", str(src), str(tmp_path / "o.mp4"), "--device",
                                       "cpu", "--encoder-opt", "crf_typo=20"])
    lines = [x for x in result.stderr.splitlines() if x.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.stderr
    assert "has no option 'crf_typo'" in lines[0] and "Traceback" not in result.stderr
    assert not (tmp_path / "o.mp4").exists()


@pytest.mark.parametrize("name", ["out.mp4", "out.mov"])
def test_hevc_in_mp4_and_mov_is_tagged_hvc1(tmp_path, src, name):
    out = tmp_path / name
    upscale(src, out, model=media.BicubicX4(), device="cpu", codec="libx265",
            encoder_preset="ultrafast", encoder_options={"x265-params": "log-level=error"})
    with av.open(str(out)) as c:
        assert c.streams.video[0].codec_context.codec_tag == "hvc1"
        assert sum(1 for _ in c.decode(video=0)) == 4


def test_unknown_codec_and_bad_options_are_config_errors_and_leave_no_file(tmp_path):
    src = media.make_index_clip(tmp_path / "in.mp4", n=2)
    for encode, words in [(EncodeOptions(codec="nosuchcodec"), "unknown encoder"),
                          (EncodeOptions(codec="aac"), "not a video encoder"),
                          (EncodeOptions(pix_fmt="rgb48le"), "pixel format"),
                          (EncodeOptions(preset="warp-speed"), "refuses these settings.*warp-speed")]:
        with pytest.raises(ConfigError, match=words):
            copy_through_sink(src, tmp_path / "out.mp4", encode=encode)
        assert not (tmp_path / "out.mp4").exists()
    assert parse_bitrate("8M") == 8_000_000 and parse_bitrate("2500k") == 2_500_000
    with pytest.raises(ConfigError):
        parse_bitrate("fast")


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


# -- fault cases (docs/faults.md; `pytest -k fault_` runs them all) ---------------------------

def test_fault_13_variable_frame_rate_through_the_cli(tmp_path, tiny_weights):
    src = media.make_vfr_clip(tmp_path / "vfr.mkv", size=(W, H))
    r = invoke("upscale", src, tmp_path / "out.mp4", *model_args(tiny_weights))
    assert r.exit_code == 0, r.stderr
    expected = np.concatenate([[0], np.cumsum(media.VFR_DURATIONS_MS)[:-1]]) / 1000
    assert np.allclose(media.frame_times(tmp_path / "out.mp4"), expected, atol=1e-3)
