"""The baselines `streamsr bench` compares the pipeline with (streamsr/bench/naive.py,
ffmpeg_ref.py, clip.py and the x4 nearest stand-in): they do the job they claim, on the same
clip, with the same encoder settings and timing as the pipeline (no speed asserts)."""

from __future__ import annotations

import math
import os

import av
import numpy as np
import pytest
import torch
from test_bench import one_thread  # noqa: F401  (autouse: one torch thread here too)

from streamsr.bench import (
    NearestX4,
    clip_frames,
    count_frames,
    encode_options,
    ffmpeg_scale,
    make_clip,
    naive_loop,
)
from streamsr.errors import ConfigError

W, H = 64, 48


def decode_all(path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def psnr_u8(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * math.log10(255.0**2 / max(mse, 1e-12))


def nearest4(frames: np.ndarray) -> np.ndarray:
    return frames.repeat(4, axis=1).repeat(4, axis=2)




def test_clip_has_the_requested_size_frames_and_motion(tmp_path):
    clip = make_clip(tmp_path / "c.mp4", 96, 64, 5)
    frames = decode_all(clip)
    assert frames.shape == (5, 64, 96, 3)
    assert count_frames(clip) == 5
    assert frames.std() > 20  # textured, not flat
    for a, b in zip(frames, frames[1:], strict=False):  # it moves: consecutive frames differ
        assert np.abs(a.astype(int) - b.astype(int)).mean() > 5


def test_ffmpeg_reference_is_a_nearest_x4_scale(tmp_path):
    clip = make_clip(tmp_path / "c.mp4", W, H, 3)
    t = ffmpeg_scale(clip, tmp_path / "f.mp4", encode_options(), method="pyav")
    out = decode_all(tmp_path / "f.mp4")
    assert t.frames == 3 and out.shape == (3, 4 * H, 4 * W, 3)
    assert psnr_u8(out, nearest4(decode_all(clip))) > 28  # only the encoder's loss separates them


def _yuv_planes(path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray() for f in c.decode(video=0)])  # yuv420p, as encoded


def test_ffmpeg_reference_encodes_the_pipelines_pictures(tmp_path):
    """With the pipeline's conversions the reference hands x264 the same pictures (lossless
    encodes compared code value by code value); FFmpeg's defaults make visibly different ones."""
    from streamsr.api import upscale
    from streamsr.video.encoder import EncodeOptions

    clip = make_clip(tmp_path / "c.mp4", W, H, 6)
    lossless = EncodeOptions(crf=0, preset="ultrafast")
    ffmpeg_scale(clip, tmp_path / "same.mp4", lossless, method="pyav", conversion="pipeline")
    ffmpeg_scale(clip, tmp_path / "fast.mp4", lossless, method="pyav", conversion="default")
    upscale(clip, tmp_path / "pipe.mp4", model=NearestX4(), device="cpu", crf=0,
            encoder_preset="ultrafast")
    pipe = _yuv_planes(tmp_path / "pipe.mp4").astype(int)
    same = np.abs(_yuv_planes(tmp_path / "same.mp4") - pipe)
    fast = np.abs(_yuv_planes(tmp_path / "fast.mp4") - pipe)
    assert same.max() <= 2 and same.mean() < 0.2, (same.max(), same.mean())
    assert fast.mean() > 0.5, fast.mean()  # the check above can tell conversions apart
    with pytest.raises(ConfigError, match="conversion"):
        ffmpeg_scale(clip, tmp_path / "x.mp4", lossless, method="pyav", conversion="fastest")


def test_ffmpeg_reference_chooses_its_own_frame_types(tmp_path):
    """Decoded frames carry their I/P/B type through filters and libx264 obeys it: an all-intra
    input would make the reference all-intra too (a different, cheaper job than the pipeline's)."""
    path = tmp_path / "intra.mp4"
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        s.codec_context.options = {"g": "1", "crf": "18"}
        for rgb in clip_frames(W, H, 8):
            for packet in s.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                out.mux(packet)
        for packet in s.encode(None):
            out.mux(packet)
    with av.open(str(path)) as c:
        assert all(p.is_keyframe for p in c.demux(video=0) if p.size)  # every input frame is I
    ffmpeg_scale(path, tmp_path / "ref.mp4", encode_options(), method="pyav")
    with av.open(str(tmp_path / "ref.mp4")) as c:
        keys = [p.is_keyframe for p in c.demux(video=0) if p.size]
    assert len(keys) == 8 and sum(keys) == 1, keys  # x264 chose: one IDR, then P/B frames


def _timing(path):
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        return s.average_rate, [f.pts for f in c.decode(s)]


def test_references_keep_the_clip_frame_rate_and_timestamps(tmp_path):
    # unstamped frames made x264 believe in 2400 fps and encode a smaller, cheaper video than
    # the pipeline's: the references must encode the same timing as the pipeline does
    clip = make_clip(tmp_path / "c.mp4", W, H, 4)
    ffmpeg_scale(clip, tmp_path / "f.mp4", encode_options(), method="pyav")
    naive_loop(clip, tmp_path / "n.mp4", NearestX4(), torch.device("cpu"), encode_options())
    rate, pts = _timing(clip)
    for out in ("f.mp4", "n.mp4"):
        out_rate, out_pts = _timing(tmp_path / out)
        assert out_rate == rate, out
        assert len(out_pts) == 4 and all(b > a for a, b in zip(out_pts, out_pts[1:], strict=False)), (out, out_pts)


def test_nearest_stand_in_equals_torch_nearest():
    x = torch.rand(2, 3, 5, 7)
    assert torch.equal(NearestX4()(x), torch.nn.functional.interpolate(x, scale_factor=4, mode="nearest"))


def test_ffmpeg_auto_falls_back_to_pyav_when_the_program_fails(tmp_path, monkeypatch):
    fake = tmp_path / "bin" / "ffmpeg"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    clip = make_clip(tmp_path / "c.mp4", W, H, 2)
    t = ffmpeg_scale(clip, tmp_path / "f.mp4", encode_options(), method="auto")
    assert t.detail["method"] == "PyAV filter graph" and t.frames == 2
    with pytest.raises(ConfigError):
        ffmpeg_scale(clip, tmp_path / "g.mp4", encode_options(), method="cli")


def test_naive_loop_runs_the_model_on_every_frame(tmp_path):
    clip = make_clip(tmp_path / "c.mp4", W, H, 3)
    t = naive_loop(clip, tmp_path / "n.mp4", NearestX4(), torch.device("cpu"), encode_options())
    out = decode_all(tmp_path / "n.mp4")
    assert t.frames == 3 and out.shape == (3, 4 * H, 4 * W, 3)
    assert psnr_u8(out, nearest4(decode_all(clip))) > 28


def test_the_baselines_read_the_main_video_stream_not_a_cover_picture(tmp_path):
    import media

    clip = media.make_cover_first_mp4(tmp_path / "cover.mp4")
    assert count_frames(clip) == 10
    naive = naive_loop(clip, tmp_path / "n.mp4", NearestX4(), torch.device("cpu"), encode_options())
    ref = ffmpeg_scale(clip, tmp_path / "f.mp4", encode_options(), method="pyav")
    assert naive.frames == ref.frames == 10
    for out in ("n.mp4", "f.mp4"):
        with av.open(str(tmp_path / out)) as c:
            assert (c.streams.video[0].width, c.streams.video[0].height) == (256, 192)

