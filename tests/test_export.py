"""`streamsr export` and the exported graph: exact against torch fp32, metadata read back."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from streamsr.cli import main
from streamsr.inference.backends.graph import SeparableBicubic, weights_hash
from streamsr.inference.export import ExportOptions, export_model, read_export
from streamsr.models import TINY, DeblurSR
from streamsr.models.ops import resize_bicubic
from streamsr.models.weights import save_model

ort = pytest.importorskip("onnxruntime")


def skip_model(seed: int = 0) -> DeblurSR:
    """`tiny` with lite's bicubic skip and a non-zero correction (random weights): the skip is
    the op the runtimes disagreed on, so the exactness tests must go through it."""
    torch.manual_seed(seed)
    model = DeblurSR(replace(TINY, bicubic_skip=True, name="tiny-skip")).eval()
    torch.nn.init.normal_(model.reconstruct.out.weight, std=0.05)
    return model


def torch_hr(model: DeblurSR, x: torch.Tensor) -> np.ndarray:
    with torch.inference_mode():
        return model(x).hr.float().numpy()


def run_onnx(path: Path, x: torch.Tensor) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # a pool spinning on a busy 2-core machine only waits
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(["hr"], {"frames": x.numpy()})[0]


@pytest.mark.parametrize("scale", [2, 4])
@pytest.mark.parametrize("size", [(8, 8), (13, 21), (40, 24)])
def test_separable_bicubic_equals_torch_antialiased_bicubic(scale, size):
    x = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(1))
    ref = resize_bicubic(x, (scale * size[0], scale * size[1]))
    out = SeparableBicubic(scale)(x)
    assert out.shape == ref.shape
    assert (out - ref).abs().max().item() < 1e-5  # border taps dropped and renormalised too


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = skip_model()
    path = tmp_path_factory.mktemp("export") / "tiny.onnx"
    meta = export_model(model, path, ExportOptions(format="onnx"))
    return model, path, meta


def test_dynamic_onnx_export_matches_torch_fp32_at_any_batch_and_size(exported):
    model, path, _ = exported
    for shape in [(1, 3, 16, 24), (3, 3, 40, 72)]:
        x = torch.rand(shape, generator=torch.Generator().manual_seed(2))
        out = run_onnx(path, x)
        ref = torch_hr(model, x)
        assert out.shape == ref.shape == (shape[0], 3, 4 * shape[2], 4 * shape[3])
        assert np.abs(out - ref).max() < 1e-5


def test_export_metadata_holds_config_and_weights_hash(exported):
    model, path, meta = exported
    back = read_export(path)
    assert back == meta
    assert json.loads(back["config"]) == json.loads(model.config.to_json())
    assert back["weights_sha256"] == weights_hash(model)
    assert back["weights_sha256"] != weights_hash(skip_model(seed=1))  # other weights, other hash
    assert back["precision"] == "fp32" and back["dynamic"] == "true"


def test_info_reads_an_exported_file_back(exported):
    model, path, _ = exported
    result = CliRunner().invoke(main, ["info", str(path), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["config"]["name"] == "tiny-skip"
    assert data["weights_sha256"] == weights_hash(model)
    text = CliRunner().invoke(main, ["info", str(path)]).output
    assert "tiny-skip" in text and weights_hash(model) in text


def test_fixed_resolution_export_pads_inside_the_graph(tmp_path):
    model = skip_model()
    path = tmp_path / "fixed.onnx"
    export_model(model, path, ExportOptions(format="onnx", resolution=(36, 20), batch=2))
    x = torch.rand(2, 3, 20, 36, generator=torch.Generator().manual_seed(3))  # 20, 36: not /8
    out = run_onnx(path, x)
    assert out.shape == (2, 3, 80, 144)
    assert np.abs(out - torch_hr(model, x)).max() < 1e-5
    assert read_export(path)["input"].endswith("2 x 3 x 20 x 36")


def test_fp16_export_stays_close_to_fp32(tmp_path):
    """fp16 weights and arithmetic: PSNR against torch fp32 >= 45 dB (stated threshold)."""
    ov = pytest.importorskip("openvino")
    model = skip_model()
    path = tmp_path / "half.onnx"
    export_model(model, path, ExportOptions(format="onnx", precision="fp16"))
    x = torch.rand(1, 3, 24, 32, generator=torch.Generator().manual_seed(4))
    compiled = ov.Core().compile_model(str(path), "CPU")
    out = compiled(x.numpy())[0]
    ref = torch_hr(model, x)
    mse = float(np.mean((out.astype(np.float64) - ref) ** 2))
    assert 10 * np.log10(1.0 / max(mse, 1e-20)) >= 45
    assert read_export(path)["precision"] == "fp16"


def test_openvino_ir_export_matches_torch_and_keeps_metadata(tmp_path):
    ov = pytest.importorskip("openvino")
    model = skip_model()
    path = tmp_path / "tiny.xml"
    meta = export_model(model, path, ExportOptions(format="openvino", resolution=(24, 16)))
    assert path.with_suffix(".bin").is_file()
    assert read_export(path) == meta  # read from the XML, without OpenVINO
    x = torch.rand(1, 3, 16, 24, generator=torch.Generator().manual_seed(5))
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    assert np.abs(compiled(x.numpy())[0] - torch_hr(model, x)).max() < 1e-5


def test_export_cli_errors_are_one_line_and_leave_files_alone(tmp_path):
    weights = tmp_path / "m.safetensors"
    save_model(skip_model(), weights)
    out = tmp_path / "m.onnx"
    out.write_bytes(b"keep me")
    runner = CliRunner()
    cases = [
        ["export", str(out), "--model", str(weights)],  # exists, no --overwrite
        ["export", str(tmp_path / "m2.onnx"), "--model", str(weights), "--precision", "bf16"],
        ["export", str(tmp_path / "m.xml"), "--model", str(weights), "--format", "onnx"],
        ["export", str(tmp_path / "m.pt"), "--model", str(weights)],
        ["export", str(tmp_path / "m3.onnx"), "--model", str(weights), "--resolution", "64x48",
         "--dynamic"],
    ]
    for args in cases:
        result = runner.invoke(main, args)
        assert result.exit_code == 2, (args, result.output)
        lines = [ln for ln in result.output.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("streamsr: error:"), result.output
    assert out.read_bytes() == b"keep me"
    assert not (tmp_path / "m2.onnx").exists() and not (tmp_path / "m3.onnx").exists()


def test_export_cli_writes_a_file_info_reads(tmp_path):
    weights = tmp_path / "m.safetensors"
    model = skip_model()
    save_model(model, weights)
    out = tmp_path / "m.onnx"
    result = CliRunner().invoke(main, ["export", str(out), "--model", str(weights)])
    assert result.exit_code == 0, result.output
    assert read_export(out)["weights_sha256"] == weights_hash(model)
    assert not list(tmp_path.glob(".streamsr-export-*"))  # the staging folder is gone
