"""`streamsr upscale`: options, presets, one-line errors with exit code 2, signals."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import media
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from streamsr.cli import main
from streamsr.inference.engine import Engine, EngineConfig
from streamsr.models.weights import load_model, save_model
from streamsr.video.overlay import side_by_side
from streamsr.video.source import open_source

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def clip(tmp_path) -> Path:
    return media.make_index_clip(tmp_path / "in.mp4", n=3, size=(16, 16))


def _source_frames(path) -> list:
    with open_source(path) as src:
        return list(src)


def _invoke(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def _one_line_error(result, *words: str) -> None:
    assert result.exit_code == 2, (result.exit_code, result.output, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("streamsr: error:"), result.stderr
    assert "Traceback" not in result.output + result.stderr
    for w in words:
        assert w in lines[0], lines[0]


def test_upscale_writes_every_frame_and_prints_a_summary(tmp_path, clip, tiny_weights):
    out = tmp_path / "out.mp4"
    result = _invoke("upscale", clip, out, "--model", tiny_weights, "--device", "cpu",
                     "--encoder-preset", "ultrafast", "--batch", "3")
    assert result.exit_code == 0, result.stderr
    frames, _, _ = media.decode_all(out)
    assert len(frames) == 3 and frames[0].shape == (64, 64, 3)
    assert "3 frames in" in result.stderr and "64x64" in result.stderr
    quiet = _invoke("upscale", clip, out, "--model", tiny_weights, "--device", "cpu", "--quiet",
                    "--overwrite", "--encoder-preset", "ultrafast", "--crf", "30",
                    "--encoder-opt", "tune=zerolatency")
    assert quiet.exit_code == 0 and quiet.stderr.strip() == "" and quiet.output == ""


def test_rate_control_and_encoder_options_reach_the_encoder(tmp_path, clip, tiny_weights):
    base = ["--model", tiny_weights, "--device", "cpu", "-q"]
    r = _invoke("upscale", clip, tmp_path / "crf.mp4", *base, "--crf", "30",
                "--encoder-opt", "tune=zerolatency")
    assert r.exit_code == 0, r.stderr
    opts = media.x264_options(tmp_path / "crf.mp4")
    assert (opts["rc"], opts["crf"]) == ("crf", "30.0")
    assert opts["bframes"] == "0"  # tune=zerolatency (medium alone: bframes=3)
    r = _invoke("upscale", clip, tmp_path / "abr.mp4", *base, "--crf", "30", "--bitrate", "300k")
    assert r.exit_code == 0, r.stderr
    opts = media.x264_options(tmp_path / "abr.mp4")
    assert (opts["rc"], opts["bitrate"]) == ("abr", "300") and "crf" not in opts  # bitrate wins
    assert opts["bframes"] == "3"  # no tune given: medium's B-frames


@pytest.fixture
def contrasty_weights(tiny_weights, tmp_path) -> Path:
    """The tiny weights with the last conv x30: random tiny weights give an almost flat grey
    (0.5 +- 0.01), too flat to tell a tiled run from an untiled one after rounding to uint8."""
    net = load_model(tiny_weights)
    with torch.no_grad():
        net.reconstruct.out.weight.mul_(30)
        net.reconstruct.out.bias.mul_(30)
    save_model(net, tmp_path / "contrasty.safetensors")
    return tmp_path / "contrasty.safetensors"


def test_window_tile_precision_and_side_by_side_reach_the_run(tmp_path, contrasty_weights,
                                                              monkeypatch):
    import streamsr.api
    import streamsr.inference.engine

    calls, configs = [], []
    real_upscale, real_init = streamsr.api.upscale_stream, streamsr.inference.engine.Engine.__init__

    def spy_upscale(*args, **kwargs):
        calls.append(args[2])  # the UpscaleOptions the CLI built
        return real_upscale(*args, **kwargs)

    def spy_init(self, model, config=None):
        configs.append(config)
        real_init(self, model, config)

    monkeypatch.setattr(streamsr.api, "upscale_stream", spy_upscale)
    monkeypatch.setattr(streamsr.inference.engine.Engine, "__init__", spy_init)
    src = media.make_index_clip(tmp_path / "in.mkv", n=25)  # 64x48, 25 fps
    out = tmp_path / "out.mkv"
    r = _invoke("upscale", src, out, "--model", contrasty_weights, "--device", "cpu", "-q",
                "--start", "0.4", "--duration", "0.32", "--tile", "16", "--precision", "fp32",
                "--side-by-side", "--codec", "libx264rgb", "--pix-fmt", "rgb24", "--crf", "0",
                "--encoder-preset", "ultrafast")  # lossless RGB: the output can be compared exactly
    assert r.exit_code == 0, r.stderr
    assert len(calls) == 1 and len(configs) == 1
    opts = calls[0]
    assert (opts.input.start, opts.input.duration, opts.engine.tile, opts.engine.precision,
            opts.output.side_by_side) == (0.4, 0.32, 16, "fp32", True)
    assert (configs[0].tile, configs[0].precision) == (16, "fp32")

    # frames 10..17 (0.4 s to 0.72 s at 25 fps), restarting at 0 s, at x4 and not twice as wide
    frames, _, _ = media.decode_all(out)
    assert len(frames) == 8 and frames[0].shape == (192, 256, 3)
    assert media.frame_times(out) == pytest.approx([k * 0.04 for k in range(8)], abs=1e-3)
    lr = np.stack([f.rgb for f in _source_frames(src)][10:18])
    assert [media.read_index(f) for f in lr] == list(range(10, 18))
    net = load_model(contrasty_weights)
    tiled = Engine(net, EngineConfig(device="cpu", precision="fp32", tile=16)).upscale_batch(lr)
    whole = Engine(net, EngineConfig(device="cpu", precision="fp32", tile=0)).upscale_batch(lr)
    want, untiled = side_by_side(lr, tiled), side_by_side(lr, whole)
    got = np.stack(frames).astype(int)
    assert np.abs(got - want).max() <= 1  # each output frame is its input frame, tiled x4
    assert np.abs(got - untiled).max() >= 5  # which a run that ignored --tile would not give
    for k in range(7):  # and neighbouring frames tell apart (the comparison pins each index)
        assert np.abs(want[k].astype(int) - want[k + 1]).max() > 1


def test_preset_sets_values_and_command_line_wins(tmp_path, clip, tiny_weights, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pipelines").mkdir()
    (tmp_path / "pipelines" / "mine.toml").write_text(
        f'description = "test"\nmodel = "{tiny_weights}"\ncodec = "libx264"\npix_fmt = "yuv444p"\n'
        f'encoder_preset = "ultrafast"\ndevice = "cpu"\n[encoder_opt]\ntune = "zerolatency"\n')
    r = _invoke("upscale", clip, "a.mp4", "--preset", "pipelines/mine.toml", "-q")
    assert r.exit_code == 0, r.stderr
    with av.open("a.mp4") as c:
        assert c.streams.video[0].codec_context.pix_fmt == "yuv444p"
    r = _invoke("upscale", clip, "b.mp4", "--preset", "pipelines/mine.toml", "--pix-fmt", "yuv420p",
                "-q")
    assert r.exit_code == 0, r.stderr
    with av.open("b.mp4") as c:
        assert c.streams.video[0].codec_context.pix_fmt == "yuv420p"
    (tmp_path / "pipelines" / "typo.toml").write_text('crf = "high"\n')
    _one_line_error(_invoke("upscale", clip, "c.mp4", "--preset", "pipelines/typo.toml"), "crf")
    (tmp_path / "pipelines" / "class.toml").write_text('network = "my.module.Net"\n')
    _one_line_error(_invoke("upscale", clip, "c.mp4", "--preset", "pipelines/class.toml"), "unknown option")


def test_user_errors_are_one_line_with_exit_code_2(tmp_path, clip, tiny_weights):
    (tmp_path / "text.mp4").write_text("no video here " * 50)
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "exists.mp4").write_bytes(b"x")
    audio = media.make_audio_only(tmp_path / "a.m4a")
    base = ["--model", tiny_weights, "--device", "cpu"]
    cases = [
        ([tmp_path / "missing.mp4", tmp_path / "o.mp4"], ["not found"]),
        ([tmp_path / "text.mp4", tmp_path / "o.mp4"], ["not a video"]),
        ([tmp_path / "empty.mp4", tmp_path / "o.mp4"], ["empty"]),
        ([audio, tmp_path / "o.mp4"], ["no video stream"]),
        ([clip, tmp_path / "exists.mp4"], ["--overwrite"]),
        ([clip, tmp_path / "nodir" / "o.mp4"], ["does not exist"]),
        ([clip, tmp_path / "o.mp4", "--codec", "nosuchcodec"], ["unknown encoder"]),
        ([clip, tmp_path / "o.mp4", "--encoder-opt", "novalue"], ["key=value"]),
        ([clip, tmp_path / "o.mp4", "--preset", "../../x"], ["bad preset name"]),
        ([clip, tmp_path / "o.mp4", "--bitrate", "lots"], ["bitrate"]),
    ]
    for args, words in cases:
        _one_line_error(_invoke("upscale", *args, *base), *words)
    r = _invoke("upscale", clip, tmp_path / "o.mp4", "--model", tmp_path / "nope.safetensors")
    _one_line_error(r)
    assert not (tmp_path / "o.mp4").exists()


def test_truncated_input_exits_0_with_a_warning(tmp_path, tiny_weights):
    src = media.make_truncated(tmp_path / "cut.mkv", n=30, keep=0.45, size=(32, 24))
    good = len(media.decode_all(src)[0])
    assert 0 < good < 30
    # a real process: under pytest the CLI's logging handler never reaches CliRunner's stderr
    r = subprocess.run([sys.executable, "-m", "streamsr", "upscale", str(src), str(tmp_path / "o.mp4"),
                        "--model", str(tiny_weights), "--device", "cpu", "--encoder-preset", "ultrafast"],
                       capture_output=True, text=True, cwd=REPO, timeout=120,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    warnings = [line for line in r.stderr.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 1, r.stderr  # warned once, not by the source and again by the pipeline
    assert "truncated" in warnings[0] and f"kept the {good} frames" in warnings[0], warnings
    assert f"{good} frames in" in r.stderr  # the summary
    assert len(media.decode_all(tmp_path / "o.mp4")[0]) == good


def test_sigterm_via_the_cli_exits_143_with_a_playable_file(tmp_path, tiny_weights):
    src = media.make_index_clip(tmp_path / "in.mkv", n=300, size=(64, 48))
    out = tmp_path / "out.mkv"
    proc = subprocess.Popen([sys.executable, "-m", "streamsr", "upscale", str(src), str(out),
                             "--model", str(tiny_weights), "--device", "cpu", "--batch", "1",
                             "--encoder-preset", "ultrafast"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    err = bytearray()
    reader = threading.Thread(target=lambda: [err.extend(b) for b in iter(lambda: proc.stderr.read1(4096), b"")],
                              daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:  # wait for the bar to pass 10 frames
            done = [int(n) for n in re.findall(rb"(\d+)/300", bytes(err))]
            if done and max(done) >= 10:
                break
            time.sleep(0.05)
        assert proc.poll() is None, bytes(err)[-2000:]
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        reader.join(timeout=10)
    finally:
        proc.kill()
    text = bytes(err).decode(errors="replace")
    assert proc.returncode == 143, text[-2000:]
    assert "Traceback" not in text and "interrupted by SIGTERM" in text
    frames, _, _ = media.decode_all(out)
    assert 10 <= len(frames) < 300
    times = media.frame_times(out)  # the first len(frames) input timestamps, in order
    assert times == pytest.approx([k * 0.04 for k in range(len(frames))], abs=1e-3)


class _StopOnceX4(media.BicubicX4):
    """Bicubic x4 that counts its 64x48 frames and sends itself SIGINT once after `stop_after`."""

    def __init__(self, stop_after: int | None = None) -> None:
        super().__init__()
        self.seen, self.stop_after = 0, stop_after

    def forward(self, x):
        if x.shape[-2:] == (48, 64):  # not the engine's trial run
            self.seen += x.shape[0]
            if self.stop_after is not None and self.seen >= self.stop_after:
                self.stop_after = None
                os.kill(os.getpid(), signal.SIGINT)
        return super().forward(x)


def test_resume_and_part_frames_via_the_cli(tmp_path, monkeypatch):
    import json

    import streamsr.jobs.parts as parts_job

    src = media.make_index_clip(tmp_path / "in.mp4", n=24,
                                options={"crf": "12", "preset": "ultrafast", "g": "6",
                                         "x264-params": "scenecut=0"})
    out, parts = tmp_path / "out.mp4", tmp_path / "out.mp4.parts"
    args = ["upscale", src, out, "--resume", "--part-frames", "6", "--device", "cpu", "--batch",
            "2", "--encoder-preset", "ultrafast", "-q"]
    model = _StopOnceX4(stop_after=8)  # Ctrl-C during the second of four 6-frame parts
    monkeypatch.setattr(parts_job, "resolve_model", lambda name: model)  # reads `model` per call
    first = _invoke(*args)
    assert first.exit_code == 130, (first.exit_code, first.stderr)  # 128 + SIGINT
    assert not out.exists()
    manifest = json.loads((parts / "manifest.json").read_text())
    assert [s["frames"] for s in manifest["segments"]] == [6, 6, 6, 6]  # --part-frames 6
    assert sorted(p.name for p in parts.glob("part_*")) == ["part_00000.mp4"]

    model = _StopOnceX4()
    second = _invoke(*args)
    assert second.exit_code == 0, second.stderr
    assert model.seen == 18  # the three missing parts only
    frames, _, _ = media.decode_all(out)
    assert [media.read_index(f) for f in frames] == list(range(24))
    assert not parts.exists()

    # An output cut off by a run without --resume is refused in one line, not taken as finished.
    from streamsr.api import upscale
    from streamsr.errors import Interrupted

    short = tmp_path / "short.mp4"
    with pytest.raises(Interrupted):
        upscale(src, short, model=_StopOnceX4(stop_after=8), device="cpu", batch=2,
                encoder_preset="ultrafast")
    have = len(media.decode_all(short)[0])
    _one_line_error(_invoke(*args[:2], short, *args[3:]), f"incomplete ({have} of 24 frames)",
                    "--overwrite")


@pytest.mark.parametrize("option, words", [
    (["--start", "5"], "no video frames at or after --start 5 s"),
    (["--start", "nan"], "--start must be a finite number of seconds"),
    (["--start", "1e308"], "--start must be 0 or more seconds and at most"),
    (["--duration", "nan"], "--duration must be a finite number of seconds"),
])
def test_a_start_past_the_end_or_a_nan_window_is_one_line_and_no_file(tmp_path, clip,
                                                                      tiny_weights, option, words):
    out = tmp_path / "out.mp4"
    result = _invoke("upscale", clip, out, "--model", tiny_weights, "--device", "cpu", *option)
    _one_line_error(result, words)
    assert not out.exists()


def test_compile_reaches_the_engine(tmp_path, clip, tiny_weights, monkeypatch):
    """`upscale --compile` runs the model through torch.compile (spied: compiling for real
    takes minutes on CPU); without it, torch.compile is never called."""
    compiled = []

    def fake_compile(model, *args, **kwargs):
        compiled.append(type(model).__name__)
        return model

    monkeypatch.setattr(torch, "compile", fake_compile)
    base = [clip, "--model", tiny_weights, "--device", "cpu", "-q", "--encoder-preset", "ultrafast"]
    r = _invoke("upscale", base[0], tmp_path / "plain.mp4", *base[1:])
    assert r.exit_code == 0 and compiled == []
    r = _invoke("upscale", base[0], tmp_path / "c.mp4", *base[1:], "--compile")
    assert r.exit_code == 0, r.stderr
    assert compiled == ["DeblurSR"] and len(media.decode_all(tmp_path / "c.mp4")[0]) == 3


def test_outscale_size_and_ext_options(tmp_path, tiny_weights):
    """--outscale, --size and --ext from the command line: sizes of the written frames, the
    image format, one frame of a video into an image; bad values are one line, exit 2."""
    from PIL import Image

    src = media.make_index_clip(tmp_path / "in.mp4", n=30, size=(32, 24))
    base = ["--model", tiny_weights, "--device", "cpu", "-q", "--encoder-preset", "ultrafast"]
    r = _invoke("upscale", src, tmp_path / "o2.mp4", *base, "--outscale", "2", "--frames", "2")
    assert r.exit_code == 0, r.stderr
    assert media.decode_all(tmp_path / "o2.mp4")[0][0].shape == (48, 64, 3)
    r = _invoke("upscale", src, tmp_path / "s.mkv", *base, "--size", "-1x50", "--frames", "2")
    assert r.exit_code == 0, r.stderr
    assert media.decode_all(tmp_path / "s.mkv")[0][0].shape == (50, 66, 3)  # 66.7 -> even
    r = _invoke("upscale", src, tmp_path / "frames", *base, "--ext", "jpg", "--frames", "2")
    assert r.exit_code == 0, r.stderr
    names = sorted(p.name for p in (tmp_path / "frames").iterdir())
    assert names == ["frame_000000.jpg", "frame_000001.jpg"]
    assert Image.open(tmp_path / "frames" / names[0]).format == "JPEG"
    r = _invoke("upscale", src, tmp_path / "one.webp", *base, "--start", "0.4", "--frames", "1")
    assert r.exit_code == 0, r.stderr
    with Image.open(tmp_path / "one.webp") as img:
        assert img.format == "WEBP" and img.size == (128, 96)
    for bad, word in ((["--outscale", "5"], "--outscale"), (["--outscale", "nan"], "--outscale"),
                      (["--size", "big"], "--size"), (["--size", "999x-1"], "only scales down"),
                      (["--outscale", "2", "--size", "64x-1"], "not both"),
                      (["--ext", "gif"], "--ext")):
        r = _invoke("upscale", src, tmp_path / "bad.mp4", *base, *bad)
        _one_line_error(r, word)
        assert not (tmp_path / "bad.mp4").exists()
