"""remux.py: the input's audio, subtitles, chapters and tags copied into the output."""

from __future__ import annotations

import logging
from pathlib import Path

import av
import media
import pytest
from video_io import FAST, copy_through_sink

from streamsr.video.source import open_source


def test_audio_subtitles_chapters_and_tags_are_copied(tmp_path):
    src = media.make_av_clip(tmp_path / "in.mkv", n=25)
    copy_through_sink(src, tmp_path / "out.mkv", encode=FAST)
    assert media.packets(tmp_path / "out.mkv") == media.packets(src)  # same count, same bytes
    assert media.packets(tmp_path / "out.mkv", "subtitle") == media.packets(src, "subtitle")
    with av.open(str(tmp_path / "out.mkv")) as c:
        assert c.metadata.get("title") == "streamsr test"
        assert [ch["metadata"]["title"] for ch in c.chapters()] == ["first half", "second half"]
    # MP4 holds AAC as is; subrip text becomes mov_text
    copy_through_sink(src, tmp_path / "out.mp4", encode=FAST)
    assert media.packets(tmp_path / "out.mp4") == media.packets(src)
    subs = media.packets(tmp_path / "out.mp4", "subtitle")
    assert [s[2:] for s in subs] == media.packets(src, "subtitle")
    with av.open(str(tmp_path / "out.mp4")) as c:
        assert c.metadata.get("title") == "streamsr test"
        assert len(c.chapters()) == 2


def test_audio_the_container_cannot_hold_is_reencoded_and_logged(tmp_path, caplog):
    src = media.write_clip(tmp_path / "pcm.mkv", (media.index_frame(i) for i in range(10)), audio="pcm_s16le")
    with caplog.at_level(logging.WARNING, logger="streamsr"):
        copy_through_sink(src, tmp_path / "out.mp4", encode=FAST)
    with av.open(str(tmp_path / "out.mp4")) as c:
        a = c.streams.audio[0]
        assert a.codec_context.name == "aac"
        seconds = sum(f.samples for f in c.decode(audio=0)) / a.codec_context.sample_rate
    assert abs(seconds - 0.4) < 0.05
    assert any("re-encoding audio" in r.getMessage() for r in caplog.records)


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
        sink = copy_through_sink(src, tmp_path / f"out{ext}", encode=FAST)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert sink.frames_written == 25
    assert media.packets(tmp_path / f"out{ext}") == media.packets(src)  # every audio packet
    said = [r.getMessage() for r in caplog.records if "past the last video frame" in r.getMessage()]
    assert len(said) == 1 and "kept whole" in said[0], said
    with open_source(src) as s:
        assert len(list(s)) == 25 and not s.truncated
