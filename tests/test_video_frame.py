"""frame.py: the one conversion of decoded frames to RGB, shared by files and live feeds
(a size change mid-stream is scaled to the first size; past --max-pixels it is refused)."""

from __future__ import annotations

import logging
from pathlib import Path

import av
import media
import numpy as np
import pytest
import torch
from media import (
    CPU_FAST,
    H,
    W,
    assert_one_line,
    cli,
    decodable,
    indices,
    model_args,
    psnr,
    run_api,
)

from streamsr.api import upscale
from streamsr.errors import InputError
from streamsr.models import TINY, DeblurSR
from streamsr.models.ops import bicubic_uint8
from streamsr.video.live import LiveOptions, LiveSource
from streamsr.video.source import open_source


def _spliced(tmp_path, first: int, then: int):
    """MPEG-TS of `first` 32x24 frames, then `then` 64x48 frames (a broadcast splice)."""
    return media.make_size_change_ts(tmp_path / "spliced.ts", first, then, (W, H))


def _read_until_error(source) -> tuple[int, str]:
    done = 0
    with source, pytest.raises(InputError) as err:
        for _ in source:
            done += 1
    return done, str(err.value)


def test_a_feed_growing_past_max_pixels_is_refused_as_a_file_is(tmp_path):
    src = _spliced(tmp_path, 24, 4)
    file_done, file_error = _read_until_error(open_source(src, max_pixels=W * H))
    live_done, live_error = _read_until_error(
        LiveSource(str(src), LiveOptions(drop="none"), max_pixels=W * H))
    assert file_done == live_done == 24  # every frame before the change
    assert live_error == file_error
    assert ("frame size changes at frame 25: 32x24 -> 64x48, larger than the limit of 768 "
            "pixels (raise --max-pixels to allow them)") in live_error


def test_a_feed_that_changes_size_is_scaled_to_its_first_size_with_one_warning(tmp_path, caplog):
    src = _spliced(tmp_path, 10, 10)
    with caplog.at_level(logging.WARNING, logger="streamsr"), \
            LiveSource(str(src), LiveOptions(drop="none")) as live:
        frames = list(live)
    assert len(frames) == 20 and {f.rgb.shape for f in frames} == {(H, W, 3)}
    assert [media.read_index(f.rgb) for f in frames[:10]] == list(range(10))
    warnings = [r.getMessage() for r in caplog.records if "frame size changes" in r.getMessage()]
    assert len(warnings) == 1 and "at frame 11: 32x24 -> 64x48" in warnings[0], warnings


def test_a_feed_larger_than_max_pixels_is_refused_when_it_opens(tmp_path):
    src = _spliced(tmp_path, 4, 0)
    with pytest.raises(InputError, match="32x24 frames are larger than the limit of 100 pixels"):
        LiveSource(str(src), LiveOptions(drop="none"), max_pixels=100)


def test_a_live_run_whose_feed_grows_past_max_pixels_stops_with_the_files_error(tmp_path):
    # through the API as a live run (drop none: every frame before the change is kept)
    src = _spliced(tmp_path, 24, 4)
    with pytest.raises(InputError, match="frame size changes at frame 25: 32x24 -> 64x48, larger "
                                         "than the limit of 768 pixels"):
        upscale(src, tmp_path / "out", model=media.BicubicX4(), live=True, max_pixels=W * H,
                live_options=LiveOptions(drop="none"), device="cpu", encoder_preset="ultrafast",
                batch=2)
    with av.open(str(tmp_path / "out.mkv")) as c:  # the frames done are in a finalised file
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert [media.read_index(f) for f in frames] == list(range(24))


# -- fault cases (docs/faults.md; `pytest -k fault_` runs them all) ---------------------------

@pytest.mark.parametrize("size", [(1, 1), (2, 2)])
def test_fault_09_one_and_two_pixel_frames_through_the_real_model(tmp_path, size):
    w, h = size
    src = media.write_clip(tmp_path / "tiny.mkv", (media.smooth_frame(i, w, h) for i in range(2)),
                           codec="ffv1", pix_fmt="yuv444p", options={})
    torch.manual_seed(0)
    stats = upscale(src, tmp_path / "out.mkv", model=DeblurSR(TINY).eval(), **CPU_FAST)
    got = media.decode_all(tmp_path / "out.mkv")[0]
    assert stats.frames == len(got) == 2 and got[0].shape == (4 * h, 4 * w, 3)
    bic = run_api(src, tmp_path / "pngs")  # a PNG folder: the pixels as computed
    assert bic.frames == 2
    import cv2

    pngs = sorted((tmp_path / "pngs").glob("*.png"))
    first = cv2.cvtColor(cv2.imread(str(pngs[0])), cv2.COLOR_BGR2RGB)
    assert psnr(first, bicubic_uint8(media.smooth_frame(0, w, h), (4 * h, 4 * w))) > 40


@pytest.mark.parametrize("size,codec,pix_fmt", [((33, 17), "ffv1", "yuv420p"),
                                                 ((31, 23), "libx264", "yuv444p"),
                                                 ((45, 2), "ffv1", "yuv444p")])
def test_fault_10_odd_sizes(tmp_path, size, codec, pix_fmt):
    w, h = size
    originals = [media.smooth_frame(i, w, h) for i in range(3)]
    src = media.write_clip(tmp_path / "odd.mkv", originals, codec=codec, pix_fmt=pix_fmt,
                           options={} if codec == "ffv1" else {"crf": "8", "preset": "ultrafast"})
    stats = run_api(src, tmp_path / "out.mp4", crf=8)  # yuv420p output of an odd-sized input x4
    got = media.decode_all(tmp_path / "out.mp4")[0]
    assert stats.frames == len(got) == 3 and got[0].shape == (4 * h, 4 * w, 3)
    for orig, out in zip(originals, got, strict=True):
        assert psnr(out, bicubic_uint8(orig, (4 * h, 4 * w))) > 36  # a wrong matrix: < 30


def _gray(rgb: np.ndarray) -> np.ndarray:
    y = rgb.mean(axis=2, keepdims=True).round().astype(np.uint8)
    return np.ascontiguousarray(np.repeat(y, 3, axis=2))


@pytest.mark.parametrize("codec,pix_fmt,gray,threshold", [
    ("libx264", "yuv420p10le", False, 36),  # 10 bit
    ("libx264", "yuv444p", False, 38),  # 4:4:4
    ("ffv1", "gray", True, 46),  # grey (exact up to bicubic/encode rounding)
    ("ffv1", "gray10le", True, 46),
    ("libx264rgb", "rgb24", False, 40),  # RGB, no Y'CbCr at all
    ("ffv1", "yuv444p16le", False, 40),
])
def test_fault_11_pixel_formats(tmp_path, codec, pix_fmt, gray, threshold):
    originals = [media.smooth_frame(i, W, H) for i in range(3)]
    if gray:
        originals = [_gray(f) for f in originals]
    opts = {} if codec == "ffv1" else {"crf": "4" if codec == "libx264" else "0", "preset": "ultrafast"}
    src = media.write_clip(tmp_path / "in.mkv", originals, codec=codec, pix_fmt=pix_fmt, options=opts)
    stats = run_api(src, tmp_path / "out.mkv", crf=4)
    got = media.decode_all(tmp_path / "out.mkv")[0]
    assert stats.frames == len(got) == 3 and got[0].shape == (4 * H, 4 * W, 3)
    scores = [psnr(out, bicubic_uint8(orig, (4 * H, 4 * W))) for orig, out in zip(originals, got, strict=True)]
    assert min(scores) > threshold, scores
    if gray:  # grey in, grey out: no colour cast from a wrong matrix
        assert max(np.abs(f.astype(int) - _gray(f).astype(int)).max() for f in got) <= 3


def _size_change_ts(tmp_path: Path, first: int, then: int) -> Path:
    """`_spliced`, checked: the file really holds both sizes."""
    path = _spliced(tmp_path, first, then)
    with av.open(str(path)) as c:
        assert {(f.width, f.height) for f in c.decode(video=0)} == {(W, H), (2 * W, 2 * H)}
    return path


def test_fault_24_frame_size_change_mid_stream_is_scaled_to_the_first_size(tmp_path, caplog):
    src = _size_change_ts(tmp_path, 10, 10)
    with caplog.at_level("WARNING", logger="streamsr"):
        stats = run_api(src, tmp_path / "out.mkv")
    got = decodable(tmp_path / "out.mkv")
    assert stats.frames == len(got) == 20  # the whole video, not the first part
    assert {f.shape for f in got} == {(4 * H, 4 * W, 3)}
    assert indices(got) == list(range(20))
    for k in (12, 19):  # a 64x48 frame scaled to 32x24, then x4: close to the 32x24 drawing
        assert psnr(got[k], bicubic_uint8(media.index_frame(k, W, H), (4 * H, 4 * W))) > 18
    warnings = [r.getMessage() for r in caplog.records if "frame size changes" in r.getMessage()]
    assert len(warnings) == 1, warnings  # once, not for each of the 10 frames
    assert "at frame 11: 32x24 -> 64x48" in warnings[0] and "to 32x24" in warnings[0]


def test_fault_24_frame_size_change_past_max_pixels_is_refused_keeping_the_frames_done(tmp_path,
                                                                                tiny_weights):
    # --max-pixels is checked on every new size, so a stream cannot switch to a huge size later
    src = _size_change_ts(tmp_path, 24, 4)
    with pytest.raises(InputError, match="frame size changes at frame 25: 32x24 -> 64x48, larger "
                                         "than the limit of 768 pixels"):
        run_api(src, tmp_path / "api.mkv", max_pixels=W * H)
    got = decodable(tmp_path / "api.mkv")
    # every frame before the change is upscaled and finalised, in order (the frames still
    # queued when the input went bad are finished before the error is raised)
    assert indices(got) == list(range(24))
    assert {f.shape for f in got} == {(4 * H, 4 * W, 3)}
    # through the CLI: one line, exit 2, a playable partial output
    out = tmp_path / "cli.mkv"
    r = cli("upscale", src, out, "--max-pixels", W * H, "--batch", "2", *model_args(tiny_weights))
    assert_one_line(r.returncode, r.stderr, "frame size changes at frame 25: 32x24 -> 64x48",
                    "--max-pixels")
    got = decodable(out)
    assert len(got) == 24 and {f.shape for f in got} == {(4 * H, 4 * W, 3)}, len(got)
