"""`streamsr bench`: it runs, its numbers are consistent, its parts do what they claim (no speed asserts)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys

import av
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from streamsr.bench import (
    PARTS,
    BenchConfig,
    NearestX4,
    clip_frames,
    count_frames,
    encode_options,
    ffmpeg_scale,
    format_result,
    format_sweep,
    make_clip,
    naive_loop,
    parse_resolution,
    run_bench,
    run_sweep,
)
from streamsr.cli import main
from streamsr.errors import ConfigError

TINY_PARAMS = 112_088  # the `tiny` config's parameter count (tests/test_cli.py checks it too)
W, H, N = 64, 48, 4
RESULT_KEYS = {"model_only", "pipeline", "naive", "io_pipeline", "io_ffmpeg"}
MACHINE_KEYS = {"cpu", "cpu_cores", "cpus_available", "torch_threads", "gpu", "gpu_memory_gib",
                "torch", "cuda", "cudnn", "pyav", "ffmpeg", "ffmpeg_cli", "python", "platform",
                "load_average"}


def decode_all(path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def psnr_u8(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * math.log10(255.0**2 / max(mse, 1e-12))


def nearest4(frames: np.ndarray) -> np.ndarray:
    return frames.repeat(4, axis=1).repeat(4, axis=2)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: on a busy shared machine two spinning threads make tiny models 10x slower.

    (The engine keeps a thread count the user pinned with OMP_NUM_THREADS.)
    """
    old_env, old_threads = os.environ.get("OMP_NUM_THREADS"), torch.get_num_threads()
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old_threads)
    if old_env is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = old_env


@pytest.fixture(scope="module")
def cpu_result():
    return run_bench(BenchConfig(resolution=(W, H), frames=N, io_frames=N + 2, model="tiny",
                                 device="cpu"))


def check_result(data: dict, frames: int, io_frames: int, device: str) -> None:
    """Schema, positive finite fps, fps = frames / seconds, ratios = quotients of reported fps."""
    assert data["schema"] == "streamsr-bench-v1"
    assert set(data) == {"schema", "date", "machine", "config", "model", "engine", "results",
                         "ratios", "notes"}
    assert data["date"].endswith("Z")
    assert set(data["machine"]) == MACHINE_KEYS
    assert data["machine"]["cpu_cores"] >= 1 and data["machine"]["torch"] == torch.__version__
    assert data["machine"]["pyav"] == av.__version__
    assert data["model"] == {"name": "tiny", "parameters": TINY_PARAMS, "trained": False}
    assert data["engine"]["device"].startswith(device) and data["engine"]["batch"] >= 1
    assert data["config"]["resolution"] == [W, H] and data["config"]["frames"] == frames
    assert data["config"]["clip_frames"] == frames
    results = data["results"]
    assert set(results) == RESULT_KEYS
    for name, t in results.items():
        assert set(t) == {"fps", "frames", "seconds", "detail"}, name
        assert math.isfinite(t["fps"]) and t["fps"] > 0, name
        assert t["seconds"] > 0 and t["fps"] == pytest.approx(t["frames"] / t["seconds"], rel=1e-9)
    # Every frame of the clip comes out of every video path, exactly once.
    assert results["pipeline"]["frames"] == results["pipeline"]["detail"]["output_frames"] == frames
    assert results["pipeline"]["detail"]["stats_frames"] == frames
    assert data["config"]["io_frames"] == io_frames
    assert results["io_pipeline"]["frames"] == results["io_pipeline"]["detail"]["output_frames"] == io_frames
    assert results["naive"]["frames"] == frames
    assert results["io_ffmpeg"]["frames"] == io_frames
    batch = data["engine"]["batch"]
    assert results["model_only"]["frames"] == math.ceil(frames / batch) * batch
    r, fps = data["ratios"], {k: v["fps"] for k, v in results.items()}
    assert r["pipeline_over_model"] == pytest.approx(fps["pipeline"] / fps["model_only"], rel=1e-12)
    assert r["pipeline_over_naive"] == pytest.approx(fps["pipeline"] / fps["naive"], rel=1e-12)
    assert r["io_over_ffmpeg"] == pytest.approx(fps["io_pipeline"] / fps["io_ffmpeg"], rel=1e-12)
    assert any("random weights" in note for note in data["notes"])


def test_bench_on_cpu_reports_consistent_numbers(cpu_result):
    data = json.loads(cpu_result.to_json())
    check_result(data, N, N + 2, "cpu")
    assert data["machine"]["gpu"] is None
    assert data["results"]["io_ffmpeg"]["detail"]["method"] in ("PyAV filter graph", "ffmpeg program")


def test_table_shows_every_part_and_ratio(cpu_result):
    text = format_result(cpu_result)
    for label in ("model only", "pipeline", "naive loop", "I/O only: pipeline", "I/O only: FFmpeg",
                  "pipeline / model only", "pipeline / naive loop", "I/O: pipeline / FFmpeg"):
        assert f"| {label}" in text
    # each ratio row, as printed, is the quotient of the two parts' measured fps
    fps = {k: t.fps for k, t in cpu_result.results.items()}
    for label, num, den in (("pipeline / model only", "pipeline", "model_only"),
                            ("pipeline / naive loop", "pipeline", "naive"),
                            ("I/O: pipeline / FFmpeg", "io_pipeline", "io_ffmpeg")):
        assert f"| {label} | {fps[num] / fps[den]:.2f} |" in text.splitlines(), label
    assert cpu_result.machine.cpu in text and "64x48 -> 256x192" in text
    assert f"torch {torch.__version__}, PyAV {av.__version__}" in text
    assert "GPU:" not in text  # a CPU run names no GPU


def test_table_names_the_gpu_when_there_is_one(cpu_result):
    gpu = dataclasses.replace(cpu_result.machine, gpu="NVIDIA H100 80GB HBM3", gpu_memory_gib=79.1,
                              cuda="12.4", cudnn=90100)
    text = format_result(dataclasses.replace(cpu_result, machine=gpu))
    assert "GPU: NVIDIA H100 80GB HBM3 (79.1 GiB), CUDA 12.4, cuDNN 90100" in text.splitlines()
    lines = text.splitlines()  # machine lines in order: CPU, GPU, then library versions
    cpu_at = next(i for i, line in enumerate(lines) if line.startswith("CPU: "))
    assert lines[cpu_at + 1].startswith("GPU: ") and lines[cpu_at + 2].startswith("torch ")


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
    from streamsr.pipeline import upscale
    from streamsr.video.sink import EncodeOptions

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


def test_sweep_grows_over_sizes_and_batches(tmp_path):
    # The pipeline runs at the engine's own batch (it depends on threads and load): when that is
    # not among the swept batches it gets a row of its own.
    res = run_sweep(BenchConfig(frames=2, model="tiny", device="cpu"),
                    resolutions=[(32, 16), (48, 32)], batches=(2,))
    data = json.loads(res.to_json())
    assert data["schema"] == "streamsr-bench-v1-sweep"
    sizes = {(p["width"], p["height"]) for p in data["points"]}
    assert sizes == {(32, 16), (48, 32)}
    for size in sizes:
        rows = [p for p in data["points"] if (p["width"], p["height"]) == size]
        assert 2 in {p["batch"] for p in rows} and len(rows) <= 2
        assert sum(p["pipeline_fps"] is not None for p in rows) == 1  # once per size
        for p in rows:
            assert p["model_fps"] > 0 and p["ms_per_frame"] == pytest.approx(1000 / p["model_fps"])
            assert p["ms_per_megapixel"] == pytest.approx(p["ms_per_frame"] / (size[0] * size[1] / 1e6))
    assert "| 48x32 | 2 |" in format_sweep(res)


def test_cli_json_to_stdout_and_file(tmp_path):
    out = tmp_path / "b.json"
    args = ["bench", "--device", "cpu", "--model", "tiny", "--resolution", "32x16", "--frames", "1",
            "--skip", "pipeline", "--skip", "naive", "--skip", "io"]
    res = CliRunner().invoke(main, [*args, "--json", "-"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)  # stdout is one JSON object; the table went to stderr
    assert set(data["results"]) == {"model_only"}
    assert data["ratios"] == {"pipeline_over_model": None, "pipeline_over_naive": None,
                              "io_over_ffmpeg": None}
    assert "| model only |" in res.stderr
    res = CliRunner().invoke(main, [*args, "--json", str(out)], catch_exceptions=False)
    assert res.exit_code == 0
    assert "| model only |" in res.stdout
    assert set(json.loads(out.read_text())["results"]) == {"model_only"}


def test_cli_sweep_writes_the_sweep_schema_and_its_points():
    args = ["bench", "--device", "cpu", "--model", "tiny", "--frames", "2", "--sweep",
            "--sizes", "32x16", "--batches", "1", "--json", "-"]
    res = CliRunner().invoke(main, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)  # one JSON object on stdout; the table went to stderr
    assert data["schema"] == "streamsr-bench-v1-sweep"
    assert set(data) == {"schema", "date", "machine", "config", "model", "engine", "points", "notes"}
    assert set(data["machine"]) == MACHINE_KEYS
    assert data["model"] == {"name": "tiny", "parameters": TINY_PARAMS, "trained": False}
    assert data["config"]["resolutions"] == [[32, 16]] and data["config"]["batches"] == [1]
    assert data["engine"]["device"] == "cpu" and "batch" not in data["engine"]
    points = data["points"]
    # batch 1 as asked; the engine's own batch gets a row too when it differs (pipeline there)
    assert points[0]["batch"] == 1 and len(points) <= 2
    assert [p["batch"] for p in points] == sorted({p["batch"] for p in points})
    assert sum(p["pipeline_fps"] is not None for p in points) == 1
    for p in points:
        assert set(p) == {"width", "height", "batch", "model_fps", "ms_per_frame",
                          "ms_per_megapixel", "pipeline_fps"}
        assert (p["width"], p["height"]) == (32, 16)
        assert math.isfinite(p["model_fps"]) and p["model_fps"] > 0
        assert p["ms_per_frame"] == pytest.approx(1000 / p["model_fps"])
        assert p["ms_per_megapixel"] == pytest.approx(p["ms_per_frame"] / (32 * 16 / 1e6))
        assert p["pipeline_fps"] is None or p["pipeline_fps"] > 0
    assert "| 32x16 | 1 |" in res.stderr


def test_cli_batch_and_precision_reach_the_engines(monkeypatch):
    from streamsr.engine import Engine

    seen = []  # (config batch, config precision, engine batch, engine dtype) of every engine made
    original = Engine.__init__

    def spy(self, model, config=None):
        original(self, model, config)
        seen.append((config.batch, config.precision, self.batch, self.dtype))

    monkeypatch.setattr(Engine, "__init__", spy)
    args = ["bench", "--device", "cpu", "--model", "tiny", "--resolution", "32x16", "--frames", "3",
            "--batch", "2", "--precision", "fp32", "--skip", "naive", "--skip", "io", "--json", "-"]
    res = CliRunner().invoke(main, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["engine"]["batch"] == 2 and data["engine"]["precision"] == "float32"
    assert data["config"]["batch"] == 2 and data["config"]["precision"] == "fp32"
    # the model-only part ran batches of 2: 3 frames take two calls, 4 frames
    model_only = data["results"]["model_only"]
    assert model_only["detail"]["batch"] == 2 and model_only["frames"] == 4
    assert data["results"]["pipeline"]["frames"] == 3
    # both the bench's engine and the pipeline's were built with them
    assert len(seen) == 2
    assert all(s == (2, "fp32", 2, torch.float32) for s in seen), seen
    assert "batch 2" in res.stderr and "cpu float32" in res.stderr


@pytest.mark.parametrize("bad", [
    BenchConfig(resolution=(65, 48)), BenchConfig(resolution=(8, 8)), BenchConfig(frames=0),
    BenchConfig(batch=0), BenchConfig(io_frames=0), BenchConfig(parts=("model", "everything")),
    BenchConfig(parts=()), BenchConfig(ffmpeg="gstreamer"),
])
def test_bad_settings_are_config_errors(bad):
    with pytest.raises(ConfigError):
        bad.check()


def test_parse_resolution():
    assert parse_resolution("320x180") == (320, 180) and parse_resolution("480X270") == (480, 270)
    with pytest.raises(ConfigError):
        parse_resolution("320")


def test_cli_user_errors_are_one_line_exit_2(tmp_path):
    # One real process (exit code and stderr as a user sees them), the other through CliRunner.
    proc = subprocess.run([sys.executable, "-m", "streamsr", "bench", "--device", "cpu",
                           "--resolution", "65x48"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "error:" in proc.stderr
    res = CliRunner().invoke(main, ["bench", "--device", "cpu", "--model",
                                    str(tmp_path / "none.safetensors")])
    assert res.exit_code == 2 and "no such weights file" in res.stderr


def test_parts_constant_matches_cli():
    from streamsr.cli import bench_cmd

    assert bench_cmd.PARTS == PARTS


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_bench_on_cuda_reports_consistent_numbers():
    result = run_bench(BenchConfig(resolution=(W, H), frames=8, model="tiny", device="cuda"))
    data = json.loads(result.to_json())
    check_result(data, 8, 48, "cuda")  # I/O parts: at least 48 frames by default
    assert data["machine"]["gpu"] and data["engine"]["precision"] in ("bfloat16", "float16")


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
