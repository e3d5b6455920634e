"""`streamsr bench`: it runs, its numbers and table are consistent, the CLI reaches the parts (no
speed asserts). The baselines themselves are tested in test_bench_references.py."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys

import av
import pytest
import torch
from click.testing import CliRunner

from streamsr.bench import (
    PARTS,
    BenchConfig,
    format_result,
    format_sweep,
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
    from streamsr.inference.engine import Engine

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


