"""`streamsr bench --backend A --backend B`: rows side by side, accuracy against torch fp32."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from streamsr.bench import BenchConfig, format_backends, run_backends
from streamsr.cli import main
from streamsr.inference import backends

RUNTIMES = [b for b in ("openvino", "onnxruntime") if backends.installed(b)]


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("STREAMSR_CACHE_DIR", str(tmp_path / "cache"))
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_rows_side_by_side_with_ratios_to_torch():
    if not RUNTIMES:
        pytest.skip("no runtime backend installed")
    names = ["torch", RUNTIMES[0]]
    config = BenchConfig(resolution=(32, 16), frames=2, model="tiny", device="cpu",
                         parts=("model", "pipeline"), threads=1)
    result = run_backends(config, names)
    assert [r.backend for r in result.rows] == names
    torch_row, other = result.rows
    assert torch_row.psnr_vs_torch_fp32 is None and torch_row.max_diff_vs_torch_fp32 == 0
    assert other.max_diff_vs_torch_fp32 <= 1  # fp32 runtime: rounding ties at most
    assert torch_row.pipeline_over_torch_pipeline == pytest.approx(1.0)
    for row in result.rows:
        assert row.threads == 1 and set(row.model_fps_by_threads) == {"1"}
        assert row.model_fps > 0 and row.pipeline_fps > 0
        assert row.pipeline_over_model == pytest.approx(row.pipeline_fps / row.model_fps)
    assert other.pipeline_over_torch_pipeline == pytest.approx(
        other.pipeline_fps / torch_row.pipeline_fps)
    data = json.loads(result.to_json())
    assert data["schema"].endswith("-backends") and data["config"]["backends"] == names
    table = format_backends(result)
    assert f"| {RUNTIMES[0]} | fp32 |" in table and "| torch | fp32 |" in table
    assert all(r.pipeline_threads == "1" for r in result.rows)  # threads=1 fixes every count


@pytest.mark.parametrize("args,message", [
    (["--backend", "torch,torch"], "each backend once"),
    (["--backend", "torch", "--backend", "openvino", "--sweep"], "--sweep takes one --backend"),
    (["--backend", "cuda-magic"], "unknown backend"),
    (["--backend", "torch:int8"], "--precision int8 needs --backend openvino"),
])
def test_bench_backend_errors_are_one_line(args, message):
    result = CliRunner().invoke(main, ["bench", "--model", "tiny", "--resolution", "32x16",
                                       "--frames", "1", "--device", "cpu", "--skip", "naive",
                                       "--skip", "io", "--skip", "pipeline", "-q", *args])
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and message in lines[0], result.output


def test_a_backend_names_its_precision(monkeypatch):
    """`openvino:int8` is a row of its own, at its precision, next to torch."""
    import importlib.util

    if "openvino" not in RUNTIMES or importlib.util.find_spec("nncf") is None:
        pytest.skip("openvino and nncf not installed")
    from streamsr.inference.backends import ov_int8

    monkeypatch.setattr(ov_int8, "CALIBRATION", {**ov_int8.CALIBRATION, "size": [32, 16],
                                                 "frames": 2})
    names = ["torch", "openvino:int8"]
    config = BenchConfig(resolution=(32, 16), frames=2, model="tiny", device="cpu",
                         parts=("model", "pipeline"), threads=1)
    result = run_backends(config, names)
    assert [(r.backend, r.precision) for r in result.rows] == [("torch", "fp32"),
                                                               ("openvino:int8", "int8")]
    assert result.rows[1].pipeline_fps > 0 and result.rows[1].pipeline_over_torch_pipeline
    assert "| openvino:int8 | int8 |" in format_backends(result)
