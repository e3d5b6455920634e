"""The whole pipeline (`streamsr.upscale`): nothing lost, nothing reordered, colours kept."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import media
import numpy as np
import pytest
import torch
from media import ENV, REPO, H, W, assert_one_line, model_args

import streamsr
from streamsr.api import upscale
from streamsr.errors import ConfigError, InputError, OutputError
from streamsr.models import TINY, DeblurSR
from streamsr.models.ops import bicubic_uint8, resize_bicubic
from streamsr.video.overlay import side_by_side
from streamsr.video.source import open_source

HERE = Path(__file__).parent
FAST = dict(encoder_preset="ultrafast", device="cpu", batch=3)  # odd batch: partial last batch


def _run(src, dst, **kw):
    return upscale(src, dst, **{"model": media.BicubicX4(), **FAST, **kw})


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255 ** 2 / mse)


def _source_frames(path) -> list:
    with open_source(path) as src:
        return list(src)


@pytest.mark.parametrize("ext", [".mp4", ".mkv"])
def test_every_frame_once_in_order_with_the_same_timestamps(tmp_path, ext):
    src = media.make_index_clip(tmp_path / f"in{ext}", n=14)
    stats = _run(src, tmp_path / f"out{ext}")
    frames, _, _ = media.decode_all(tmp_path / f"out{ext}")
    assert [media.read_index(f) for f in frames] == list(range(14))
    assert np.allclose(media.frame_times(tmp_path / f"out{ext}"), media.frame_times(src), atol=1e-3)
    assert stats.frames == 14 and stats.dropped == 0
    assert stats.output_size == (256, 192) and stats.input_size == (64, 48)
    assert stats.output_bytes == (tmp_path / f"out{ext}").stat().st_size
    assert "14 frames" in stats.summary()


def test_variable_frame_rate_survives(tmp_path):
    src = media.make_vfr_clip(tmp_path / "vfr.mkv")
    _run(src, tmp_path / "out.mp4")
    expected = np.concatenate([[0], np.cumsum(media.VFR_DURATIONS_MS)[:-1]]) / 1000
    assert np.allclose(media.frame_times(tmp_path / "out.mp4"), expected, atol=1e-3)
    frames, _, _ = media.decode_all(tmp_path / "out.mp4")
    assert [media.read_index(f) for f in frames] == list(range(len(expected)))


def test_bicubic_stand_in_matches_bicubic_of_decoded_input(tmp_path):
    src = media.make_smooth_clip(tmp_path / "in.mp4", n=7)
    _run(src, tmp_path / "out.mp4")  # default encoder settings: CRF 18 yuv420p
    inputs, outputs = _source_frames(src), _source_frames(tmp_path / "out.mp4")
    assert len(inputs) == len(outputs) == 7
    for fin, fout in zip(inputs, outputs, strict=True):
        ref = bicubic_uint8(fin.rgb, (192, 256))
        assert _psnr(fout.rgb, ref) > 35


def test_audio_subtitles_chapters_copied(tmp_path):
    src = media.make_av_clip(tmp_path / "in.mkv", n=25)
    _run(src, tmp_path / "out.mkv")
    assert media.packets(tmp_path / "out.mkv") == media.packets(src)
    assert media.packets(tmp_path / "out.mkv", "subtitle") == media.packets(src, "subtitle")
    with av.open(str(tmp_path / "out.mkv")) as c:
        assert len(c.chapters()) == 2 and c.metadata.get("title") == "streamsr test"
        assert {s.type for s in c.streams} == {"video", "audio", "subtitle"}


@pytest.mark.parametrize("full", [False, True])
def test_bt709_and_full_range_keep_mean_colour(tmp_path, full):
    rgb = (60, 170, 220)
    src = media.make_color_clip(tmp_path / "in.mp4", rgb=rgb, matrix="bt709", full_range=full, n=3)
    _run(src, tmp_path / "out.mp4")
    mean_in = np.mean([f.rgb.reshape(-1, 3).mean(0) for f in _source_frames(src)], axis=0)
    mean_out = np.mean([f.rgb.reshape(-1, 3).mean(0) for f in _source_frames(tmp_path / "out.mp4")], axis=0)
    assert np.abs(mean_out - mean_in).max() <= 1.0, (mean_in, mean_out)
    assert np.abs(mean_in - rgb).max() <= 1.0
    with av.open(str(tmp_path / "out.mp4")) as c:
        f = next(c.decode(video=0))
        assert (f.colorspace, f.color_range) == (1, 2 if full else 1)


def test_rotation_kept_and_10bit_in_and_out(tmp_path):
    _run(media.make_rotated_clip(tmp_path / "r.mp4", rotation=270), tmp_path / "r_out.mp4")
    with av.open(str(tmp_path / "r_out.mp4")) as c:
        assert next(c.decode(video=0)).rotation == -90  # 270 ccw == -90
    src = media.make_10bit_clip(tmp_path / "ten.mp4", n=4)
    stats = _run(src, tmp_path / "eight.mp4")
    assert stats.frames == 4
    stats = _run(src, tmp_path / "ten_out.mkv", codec="libx264", pix_fmt="yuv420p10le")
    with av.open(str(tmp_path / "ten_out.mkv")) as c:
        assert c.streams.video[0].codec_context.pix_fmt == "yuv420p10le"
    ref = [bicubic_uint8(f.rgb, (192, 256)) for f in _source_frames(src)]
    out = [f.rgb for f in _source_frames(tmp_path / "ten_out.mkv")]
    assert len(out) == 4 and min(_psnr(a, b) for a, b in zip(out, ref, strict=True)) > 35


def test_10bit_input_to_a_10bit_output_keeps_10_bits(tmp_path, monkeypatch):
    src = media.make_10bit_gradient_clip(tmp_path / "grad.mkv", n=2)  # grey, 64x48, lossless
    x265 = {"x265-params": "lossless=1:log-level=error:frame-threads=1:pools=none"}

    def run(name: str, **kw) -> np.ndarray:
        _run(src, tmp_path / name, codec="libx265", pix_fmt="yuv420p10le", encoder_options=x265, **kw)
        return np.stack(media.luma_planes(tmp_path / name)).astype(np.float64)

    # truth: the input's 10-bit grey levels upscaled by the same bicubic in float, as luma codes
    grey = np.stack([media.gradient_luma10(i) for i in range(2)]).astype(np.float64)
    grey = torch.from_numpy((grey[:, None] - 64) / 876)
    ref = (64 + 876 * resize_bicubic(grey, (192, 256)).clamp(0, 1))[:, 0].numpy()
    # what handing the x4 frames over as 8-bit RGB costs at the least (grey: R = G = B)
    bound = np.abs(64 + 876 * np.round((ref - 64) / 876 * 255) / 255 - ref).mean()
    assert bound > 0.7  # ~ a quarter of a 10-bit step per 8-bit step: 876 / 255 / 4
    out = run("ten.mkv")
    assert np.abs(out - ref).max() <= 1  # one 10-bit code value
    assert np.abs(out - ref).mean() < bound / 2
    assert len(np.unique(out)) > 256  # more levels than any 8-bit hand-over can carry
    sbs = run("sbs.mkv", side_by_side_view=True)  # labels drawn into 16-bit frames too
    assert sbs.shape == out.shape and np.abs(sbs - ref)[:, 40:, 136:].max() <= 1
    # the same run with an 8-bit hand-over (how it was before): the checks above tell it apart
    monkeypatch.setattr("streamsr.jobs.stream.component_bits", lambda pix_fmt: 8)
    old = run("eight_inside.mkv")
    assert len(np.unique(old)) <= 256 and np.abs(old - ref).mean() > bound * 0.9


def test_image_and_image_folder_inputs(tmp_path):
    paths = media.write_images(tmp_path / "imgs", n=4)
    stats = _run(tmp_path / "imgs", tmp_path / "out")
    assert stats.frames == 4
    import cv2

    for i, p in enumerate(paths):
        img = cv2.imread(str(tmp_path / "out" / p.name))[:, :, ::-1]
        assert np.array_equal(img, bicubic_uint8(media.index_frame(i), (192, 256)))
    stats = _run(paths[2], tmp_path / "one.png")
    assert stats.frames == 1
    assert media.read_index(cv2.imread(str(tmp_path / "one.png"))) == 2
    _run(tmp_path / "imgs", tmp_path / "fromimgs.mp4")  # a folder can become a video too
    assert [media.read_index(f) for f in media.decode_all(tmp_path / "fromimgs.mp4")[0]] == [0, 1, 2, 3]


def test_input_without_extension_still_gets_its_audio_copied(tmp_path):
    src = media.make_av_clip(tmp_path / "in.mkv", n=10, subtitles=False)
    bare = src.rename(tmp_path / "recording")
    _run(bare, tmp_path / "out.mkv")
    assert media.packets(tmp_path / "out.mkv") == media.packets(bare)


def test_start_and_duration(tmp_path):
    src = media.make_av_clip(tmp_path / "in.mkv", n=25, subtitles=False)
    stats = _run(src, tmp_path / "part.mkv", start=0.4, duration=0.32)
    frames, _, _ = media.decode_all(tmp_path / "part.mkv")
    assert [media.read_index(f) for f in frames] == list(range(10, 18)) and stats.frames == 8
    times = media.frame_times(tmp_path / "part.mkv")
    assert abs(times[0]) < 1e-3  # the part starts at 0 in the output
    with av.open(str(tmp_path / "part.mkv")) as c:
        audio = [float(p.pts * p.time_base) for p in c.demux(audio=0) if p.size]
    assert audio and -0.05 <= min(audio) and max(audio) < 0.36


def test_side_by_side_halves(tmp_path, monkeypatch):
    class Inverted(media.BicubicX4):
        def forward(self, x):
            return 1 - super().forward(x)

    src = media.make_smooth_clip(tmp_path / "in.mp4", n=3)
    _run(src, tmp_path / "sbs.mp4", model=Inverted(), side_by_side_view=True)
    inputs, outputs = _source_frames(src), _source_frames(tmp_path / "sbs.mp4")
    for fin, fout in zip(inputs, outputs, strict=True):
        bic = bicubic_uint8(fin.rgb, (192, 256))
        rows = slice(40, 192)  # below the labels
        assert _psnr(fout.rgb[rows, 8:120], bic[rows, 8:120]) > 30
        assert _psnr(fout.rgb[rows, 136:248], 255 - bic[rows, 136:248]) > 30
    lr = media.smooth_frame(0)[None]
    sr = np.zeros((1, 192, 256, 3), np.uint8)
    out = side_by_side(lr, sr)
    monkeypatch.setattr("streamsr.video.overlay._label", lambda img, text, x: None)
    bare = side_by_side(lr, sr)
    assert out.shape == bare.shape == sr.shape
    changed = np.abs(out.astype(int) - bare.astype(int)).max(axis=(0, 3)) > 0  # (H, W)
    half = 128
    assert not changed[:, half].any()  # the divider column is the same in both renders
    rows = np.flatnonzero(changed.any(axis=1))
    assert rows.size and rows.max() < 40  # labels only at the top
    left, right = changed[:, :half], changed[:, half + 1:]
    assert left.sum() > 50 and right.sum() > 50, (left.sum(), right.sum())  # a label in each half
    monkeypatch.undo()
    deep = side_by_side(lr.astype(np.uint16) * 257, sr.astype(np.uint16) * 257)  # 16-bit frames
    assert deep.dtype == np.uint16  # the same picture, labels too (OpenCV blends 8-bit AA roughly)
    assert np.abs(deep / 257 - out).max() <= 1.5


def test_tiny_model_from_a_weights_file(tmp_path):
    torch.manual_seed(0)
    net = DeblurSR(TINY).eval()
    streamsr.save_model(net, tmp_path / "tiny.safetensors")
    src = media.make_index_clip(tmp_path / "in.mp4", n=2, size=(32, 24))
    stats = streamsr.upscale(src, tmp_path / "b.mp4", model=tmp_path / "tiny.safetensors", **FAST)
    assert stats.frames == 2 and stats.output_size == (128, 96)
    with torch.inference_mode():
        ref = net(torch.from_numpy(_source_frames(src)[0].rgb).permute(2, 0, 1)[None].float() / 255).hr
    ref = (ref[0].permute(1, 2, 0).numpy() * 255).round().clip(0, 255).astype(np.uint8)
    assert _psnr(_source_frames(tmp_path / "b.mp4")[0].rgb, ref) > 33


def test_bad_inputs_and_outputs(tmp_path):
    src = media.make_index_clip(tmp_path / "in.mp4", n=3)
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "text.mp4").write_text("not a video " * 100)
    for bad, words in [(tmp_path / "missing.mp4", "not found"), (tmp_path / "empty.mp4", "empty"),
                       (tmp_path / "text.mp4", "not a video"),
                       (media.make_audio_only(tmp_path / "a.m4a"), "no video stream")]:
        with pytest.raises(InputError, match=words):
            _run(bad, tmp_path / "never.mp4")
    assert not (tmp_path / "never.mp4").exists()
    (tmp_path / "exists.mp4").write_bytes(b"keep")
    with pytest.raises(OutputError, match="--overwrite"):
        _run(src, tmp_path / "exists.mp4")
    assert (tmp_path / "exists.mp4").read_bytes() == b"keep"
    assert _run(src, tmp_path / "exists.mp4", overwrite=True).frames == 3
    with pytest.raises(OutputError):
        _run(src, tmp_path / "in.mp4" / "out.mp4")  # parent is a file
    with pytest.raises(ConfigError, match="unknown encoder"):
        _run(src, tmp_path / "x.mp4", codec="libnothing")
    assert not (tmp_path / "x.mp4").exists()


def test_truncated_input_keeps_good_frames(tmp_path, caplog):
    src = media.make_truncated(tmp_path / "cut.mkv", n=30, keep=0.6)
    good = len(_source_frames(src))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="streamsr"):
        stats = _run(src, tmp_path / "out.mp4")
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warned) == 1 and "truncated" in warned[0] and f"{good} frames" in warned[0], warned
    assert stats.truncated and stats.frames == good > 0
    frames, _, _ = media.decode_all(tmp_path / "out.mp4")
    assert [media.read_index(f) for f in frames] == list(range(good))
    assert "truncated" in stats.summary()


def test_corrupt_packets_skipped(tmp_path):
    src = media.make_corrupt_packets(tmp_path / "bad.mkv", n=12, bad=(4,))
    stats = _run(src, tmp_path / "out.mp4")
    assert stats.skipped_packets == 1 and stats.frames == 11
    frames, _, _ = media.decode_all(tmp_path / "out.mp4")
    assert [media.read_index(f) for f in frames] == [i for i in range(12) if i != 4]


@pytest.mark.parametrize("size", [(1, 1), (101, 57)])
def test_odd_sizes(tmp_path, size):
    src = media.write_clip(tmp_path / "odd.mkv", (media.smooth_frame(i, *size) for i in range(4)),
                           codec="ffv1", pix_fmt="yuv444p", options={})
    stats = _run(src, tmp_path / "out.mp4")
    frames, _, _ = media.decode_all(tmp_path / "out.mp4")
    assert stats.frames == len(frames) == 4
    assert frames[0].shape == (size[1] * 4, size[0] * 4, 3)


def test_model_error_midway_still_finalises_the_output(tmp_path):
    class Breaks(media.BicubicX4):
        calls = 0

        def forward(self, x):
            Breaks.calls += x.shape[-1] == 64  # count real batches (not the engine's trial run)
            if Breaks.calls == 3:
                raise RuntimeError("boom")
            return super().forward(x)

    src = media.make_index_clip(tmp_path / "in.mp4", n=12)
    with pytest.raises(RuntimeError, match="boom"):
        upscale(src, tmp_path / "out.mp4", model=Breaks(), encoder_preset="ultrafast", device="cpu", batch=2)
    frames, _, _ = media.decode_all(tmp_path / "out.mp4")  # playable, with the first batches
    assert [media.read_index(f) for f in frames] == list(range(len(frames))) and len(frames) == 4


_SLOW_CHILD = """
import json, sys, time
sys.path.insert(0, {here!r})
import media
from streamsr.errors import Interrupted
from streamsr.api import upscale

class Slow(media.BicubicX4):
    def forward(self, x):
        time.sleep(0.05)
        return super().forward(x)

def progress(done, total):
    print(done, flush=True)

try:
    upscale({src!r}, {dst!r}, model=Slow(), batch=1, device="cpu", encoder_preset="ultrafast",
            progress=progress)
except Interrupted as exc:
    print(json.dumps({{"frames": exc.stats.frames}}), flush=True)
    sys.exit(exc.exit_code)
"""


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_halfway_finalises_a_playable_output(tmp_path, sig, code):
    src = media.make_av_clip(tmp_path / "in.mp4", n=200, subtitles=False)
    dst = tmp_path / "out.mp4"
    script = _SLOW_CHILD.format(here=str(HERE), src=str(src), dst=str(dst))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:
            if line.strip().isdigit() and int(line) >= 10:
                break
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == code, err[-2000:]
    written = json.loads(out.strip().splitlines()[-1])["frames"]
    frames, _, _ = media.decode_all(dst)
    assert 10 <= written < 200
    assert [media.read_index(f) for f in frames] == list(range(written))
    with av.open(str(dst)) as c:  # audio stops with the video, it does not run on alone
        audio_end = max(float((p.pts + p.duration) * p.time_base) for p in c.demux(audio=0) if p.size)
    assert audio_end <= written * 0.04 + 0.1


_RSS_CHILD = """
import resource, sys
sys.path.insert(0, {here!r})
import media
from streamsr.api import upscale
src = media.make_smooth_clip({src!r}, n={n}, size=(160, 120))
upscale(src, {dst!r}, model=media.BicubicX4(), batch=2, device="cpu", encoder_preset="ultrafast")
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def test_peak_memory_does_not_grow_with_clip_length(tmp_path):
    peaks = {}
    for n in (20, 60):
        script = _RSS_CHILD.format(here=str(HERE), src=str(tmp_path / f"in{n}.mkv"),
                                   dst=str(tmp_path / f"out{n}.mkv"), n=n)
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                              timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert proc.returncode == 0, proc.stderr[-2000:]
        peaks[n] = int(proc.stdout.split()[-1]) / 1024  # MiB
        assert len(media.decode_all(tmp_path / f"out{n}.mkv")[0]) == n
    # Keeping every 640x480 output frame would add 40 x 0.9 MB; the bound is well below that.
    assert peaks[60] - peaks[20] < 15, peaks


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision,floor", [("fp32", 35), ("bf16", 30)])
def test_cuda_pipeline_keeps_order_and_matches_bicubic(tmp_path, precision, floor):
    """The pinned double-buffered CUDA path: every frame once, in order, right pixels."""
    src = media.make_index_clip(tmp_path / "idx.mp4", n=23)
    stats = upscale(src, tmp_path / "idx_out.mp4", model=media.BicubicX4(), device="cuda",
                    precision=precision, batch=4, encoder_preset="ultrafast")
    frames, _, _ = media.decode_all(tmp_path / "idx_out.mp4")
    assert stats.frames == 23 and [media.read_index(f) for f in frames] == list(range(23))
    src = media.make_smooth_clip(tmp_path / "s.mp4", n=9)
    upscale(src, tmp_path / "s_out.mp4", model=media.BicubicX4(), device="cuda",
            precision=precision, batch=4, encoder_preset="ultrafast")
    for fin, fout in zip(_source_frames(src), _source_frames(tmp_path / "s_out.mp4"), strict=True):
        assert _psnr(fout.rgb, bicubic_uint8(fin.rgb, (192, 256))) > floor


# -- a part of the input, impossible windows, sparse timestamps (issue 16) ------------------------

def _audio_times(path) -> list[float]:
    with av.open(str(path)) as c:
        return [float(p.pts * p.time_base) for p in c.demux(audio=0) if p.size]


def test_frames_keeps_only_the_audio_of_that_part(tmp_path):
    src = media.make_av_clip(tmp_path / "in.mp4", n=50, subtitles=False)  # 2 s of video and audio
    stats = _run(src, tmp_path / "part.mp4", frames=10)  # the first 0.4 s
    assert stats.frames == 10 and len(media.frame_times(tmp_path / "part.mp4")) == 10
    audio = _audio_times(tmp_path / "part.mp4")
    assert audio and 0.3 < max(audio) <= 0.4 + 1e-6, max(audio)
    # --frames as large as the input is not a part: all of the audio stays
    _run(src, tmp_path / "all.mp4", frames=50)
    assert media.packets(tmp_path / "all.mp4") == media.packets(src)


@pytest.mark.parametrize("options, error, words", [
    (dict(start=5.0), InputError, r"no video frames at or after --start 5 s \(its video lasts 0.48 s\)"),
    (dict(start=float("nan")), ConfigError, r"--start must be a finite number of seconds, got nan"),
    (dict(start=1e308), ConfigError, r"--start must be 0 or more seconds and at most 1e\+09"),
    (dict(duration=float("nan")), ConfigError, r"--duration must be a finite number"),
    (dict(duration=float("inf")), ConfigError, r"--duration must be a finite number"),
    (dict(frames=0), ConfigError, r"--frames must be a whole number of frames, 1 or more"),
    (dict(frames=2.5), ConfigError, r"--frames must be a whole number"),
])
def test_a_window_without_frames_fails_in_one_line_and_writes_nothing(tmp_path, options, error,
                                                                      words):
    src = media.make_index_clip(tmp_path / "in.mp4", n=12)
    with pytest.raises(error, match=words) as err:
        _run(src, tmp_path / "out.mp4", **options)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out.mp4").exists()


def test_sparse_frames_hours_apart_keep_their_times_and_length(tmp_path):
    tb = Fraction(1, 1000)
    src = media.write_clip(tmp_path / "sparse.mp4", [media.index_frame(i) for i in range(3)],
                           pts=[0, 3_600_000, 7_200_000], time_base=tb)
    _run(src, tmp_path / "out.mp4")
    assert media.frame_times(tmp_path / "out.mp4") == pytest.approx([0, 3600, 7200], abs=1e-3)
    with av.open(str(src)) as a, av.open(str(tmp_path / "out.mp4")) as b:
        assert b.duration / 1e6 == pytest.approx(a.duration / 1e6, abs=0.01)  # 7200.04 s


# -- output sizes other than x4, image formats, one frame of a video -----------------------------

class _NearestX4(torch.nn.Module):
    """x4 nearest: sharp block edges, so a downscale that aliases is easy to tell apart."""

    scale = 4

    def forward(self, x):
        return torch.nn.functional.interpolate(x, scale_factor=4, mode="nearest")


def _noise_images(folder, n: int = 2, size=(32, 24)) -> None:
    import cv2

    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        cv2.imwrite(str(folder / f"img_{i}.png"),
                    rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def _pil_downscale(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(rgb).resize(size, Image.BICUBIC))


@pytest.mark.parametrize("outscale", [2, 0.5])
def test_outscale_is_a_good_downscale_of_the_x4_output(tmp_path, outscale):
    """PNG outputs (lossless): each outscaled frame matches PIL's antialiased bicubic reduction
    of the same run's x4 output, independently computed, to within rounding."""
    _noise_images(tmp_path / "in")
    opts = dict(model=_NearestX4(), device="cpu")
    upscale(tmp_path / "in", tmp_path / "x4", **opts)
    stats = upscale(tmp_path / "in", tmp_path / "out", outscale=outscale, **opts)
    w, h = round(32 * outscale), round(24 * outscale)
    assert stats.output_size == (w, h) and stats.frames == 2
    for name in ("img_0.png", "img_1.png"):
        x4 = media.decode_all(tmp_path / "x4" / name)[0][0]
        ours = media.decode_all(tmp_path / "out" / name)[0][0]
        assert ours.shape == (h, w, 3) and x4.shape == (96, 128, 3)
        assert _psnr(ours, _pil_downscale(x4, (w, h))) > 40
        k = round(4 / outscale)  # every k-th pixel: what a downscale without a filter gives
        assert _psnr(ours, x4[k // 2::k, k // 2::k]) < 30


@pytest.mark.parametrize("rule, expected", [(dict(outscale=1.5), (96, 72)),
                                            (dict(size="100x-1"), (100, 76)),
                                            (dict(size="-1x90"), (120, 90))])
def test_outscaled_video_has_the_asked_even_size_and_matches_a_downscale(tmp_path, rule, expected):
    src = media.make_smooth_clip(tmp_path / "in.mp4", n=4)
    _run(src, tmp_path / "x4")  # x4 reference: a folder of (lossless) PNGs
    stats = _run(src, tmp_path / "out.mp4", **rule)
    frames, _, _ = media.decode_all(tmp_path / "out.mp4")
    assert stats.output_size == expected and len(frames) == 4
    assert all(f.shape == (expected[1], expected[0], 3) for f in frames)
    refs = [media.decode_all(p)[0][0] for p in sorted((tmp_path / "x4").iterdir())]
    for ours, x4 in zip(frames, refs, strict=True):  # CRF 18 4:2:0 against a lossless downscale
        assert _psnr(ours, _pil_downscale(x4, expected)) > 35


def test_outscale_with_side_by_side_and_resume_parts(tmp_path):
    src = media.make_smooth_clip(tmp_path / "in.mp4", n=5)
    stats = _run(src, tmp_path / "sbs.mp4", outscale=2, side_by_side_view=True)
    assert stats.output_size == (128, 96)
    assert media.decode_all(tmp_path / "sbs.mp4")[0][0].shape == (96, 128, 3)
    stats = upscale(src, tmp_path / "parts.mp4", resume=True, outscale=2,
                    **{"model": media.BicubicX4(), **FAST})
    assert stats.output_size == (128, 96) and stats.frames == 5
    assert media.decode_all(tmp_path / "parts.mp4")[0][0].shape == (96, 128, 3)


@pytest.mark.parametrize("ext, magic", [(".jpg", b"\xff\xd8\xff"), (".webp", b"RIFF"),
                                        (".png", b"\x89PNG")])
def test_image_outputs_are_written_in_the_asked_format(tmp_path, ext, magic):
    """A single image file by its extension, and a folder by `image_ext`: decoded back, each
    file is of that format and of the x4 size."""
    from PIL import Image

    media.write_images(tmp_path / "in", n=2)
    single = tmp_path / f"one{ext}"
    _run(tmp_path / "in" / "img_000.png", single)
    _run(tmp_path / "in", tmp_path / "folder", image_ext=ext.lstrip(".").upper())
    files = [single, *sorted((tmp_path / "folder").iterdir())]
    assert [p.name for p in files[1:]] == [f"img_000{ext}", f"img_001{ext}"]
    fmt = {".jpg": "JPEG", ".webp": "WEBP", ".png": "PNG"}[ext]
    for path in files:
        assert path.read_bytes()[:len(magic)] == magic
        with Image.open(path) as img:
            assert img.format == fmt and img.size == (256, 192)
        idx = media.read_index(np.asarray(Image.open(path).convert("RGB").resize((64, 48))))
        assert idx == (1 if path.name == "img_001" + ext else 0)


def test_one_frame_of_a_video_to_an_image(tmp_path):
    """`frames=1` (with `start`) writes that one frame as an image; without it a video into
    one image file is still refused with a hint."""
    src = media.make_index_clip(tmp_path / "in.mp4", n=60)
    stats = _run(src, tmp_path / "f.png", start=1.0, frames=1)
    assert stats.frames == 1 and stats.output_size == (256, 192)
    import cv2

    img = cv2.cvtColor(cv2.imread(str(tmp_path / "f.png")), cv2.COLOR_BGR2RGB)
    assert media.read_index(cv2.resize(img, (64, 48), interpolation=cv2.INTER_AREA)) == 25
    with pytest.raises(OutputError, match="--frames 1"):
        _run(src, tmp_path / "g.jpg")
    assert not (tmp_path / "g.jpg").exists()
    with pytest.raises(ConfigError, match="--ext"):
        _run(src, tmp_path / "v.mp4", image_ext="jpg")
    with pytest.raises(ConfigError, match="image format"):
        _run(src, tmp_path / "folder", image_ext="gif")


def test_frames_limit_is_the_progress_total(tmp_path):
    src = media.make_index_clip(tmp_path / "in.mp4", n=12)
    seen = []
    _run(src, tmp_path / "out.mp4", frames=5, progress=lambda done, total: seen.append(total))
    assert seen == [5] * 5


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_outscale_downscales_on_the_device(tmp_path):
    """The pinned CUDA path (CUDA graphs on) with --outscale: every frame, in order, at the
    asked size."""
    src = media.make_index_clip(tmp_path / "idx.mp4", n=9)
    stats = upscale(src, tmp_path / "o.mp4", model=media.BicubicX4(), device="cuda",
                    precision="fp32", batch=4, encoder_preset="ultrafast", outscale=2)
    frames, _, _ = media.decode_all(tmp_path / "o.mp4")
    assert stats.output_size == (128, 96) and len(frames) == 9
    assert [media.read_index(f) for f in frames] == list(range(9))


def test_image_folder_of_mixed_sizes_to_a_video_scales_to_the_first_image(tmp_path, caplog):
    """A video has one frame size: images of other sizes are scaled to the first image's (one
    warning naming the first such file), as a size change inside a video is; a folder output
    keeps each image's own size."""
    import cv2

    folder = tmp_path / "imgs"
    media.write_images(folder, n=2, size=(32, 24))
    odd = folder / "img_002.png"  # twice the size, then the first size again
    cv2.imwrite(str(odd), cv2.cvtColor(media.index_frame(2, 64, 48), cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(folder / "img_003.png"),
                cv2.cvtColor(media.index_frame(3, 32, 24), cv2.COLOR_RGB2BGR))
    with caplog.at_level("WARNING", logger="streamsr"):
        stats = _run(folder, tmp_path / "out.mp4")
    frames = media.decode_all(tmp_path / "out.mp4")[0]
    assert stats.frames == len(frames) == 4
    assert {f.shape for f in frames} == {(96, 128, 3)}
    assert [media.read_index(f) for f in frames] == [0, 1, 2, 3]
    assert _psnr(frames[2], bicubic_uint8(media.index_frame(2, 32, 24), (96, 128))) > 18
    warnings = [r.getMessage() for r in caplog.records if "img_002.png" in r.getMessage()]
    assert len(warnings) == 1 and "64x48" in warnings[0] and "32x24" in warnings[0], warnings
    stats = _run(folder, tmp_path / "out")  # images stay images of their own size
    assert stats.frames == 4
    assert cv2.imread(str(tmp_path / "out" / "img_002.png")).shape == (192, 256, 3)
    assert cv2.imread(str(tmp_path / "out" / "img_003.png")).shape == (96, 128, 3)


# -- fault cases (docs/faults.md; `pytest -k fault_` runs them all) ---------------------------

@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130)])  # SIGTERM: test_cli_upscale.py
def test_fault_17_signals_mid_run_finalise_a_playable_mp4(tmp_path, tiny_weights, sig, code):
    n = 1500  # a minute of video: far more than the run gets through before the signal
    src = media.make_av_clip(tmp_path / "in.mp4", n=n, size=(W, H), subtitles=False)
    out = tmp_path / "out.mp4"
    proc = subprocess.Popen([sys.executable, "-m", "streamsr", "upscale", str(src), str(out),
                             *map(str, model_args(tiny_weights)), "--batch", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            env=ENV)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if out.exists() and out.stat().st_size > 1000:  # frames are being written
                break
            time.sleep(0.1)
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    line = assert_one_line(proc.returncode, err, f"interrupted by {signal.Signals(sig).name}",
                           "(finalised)", expect=code)
    written = int(line.split("interrupted by")[1].split()[1])
    frames = media.decode_all(out)[0]  # strict: an MP4 with its index, i.e. finalised
    assert 0 < written < n and len(frames) == written
    assert frames[0].shape == (4 * H, 4 * W, 3)
    with av.open(str(out)) as c:  # the audio was trimmed to the video, not left running on
        end = max(float((p.pts + p.duration) * p.time_base) for p in c.demux(audio=0) if p.size)
    assert end <= written / 25 + 0.1
