"""frame.py: the one conversion of decoded frames to RGB, shared by files and live feeds
(a size change mid-stream is scaled to the first size; past --max-pixels it is refused)."""

from __future__ import annotations

import logging

import av
import media
import pytest

from streamsr.api import upscale
from streamsr.errors import InputError
from streamsr.video.live import LiveOptions, LiveSource
from streamsr.video.source import open_source

W, H = 32, 24


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
