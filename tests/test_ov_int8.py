"""OpenVINO INT8 (`--precision int8`): quality against torch fp32, the cache, the error paths."""

from __future__ import annotations

import importlib.util
from dataclasses import replace
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from streamsr.errors import ConfigError
from streamsr.inference import backends
from streamsr.inference.backends import BackendMissing
from streamsr.inference.backends.cache import ArtifactCache
from streamsr.inference.engine import Engine, EngineConfig
from streamsr.inference.export import ExportOptions, export_model, read_export
from streamsr.models import TINY, DeblurSR
from streamsr.models.weights import load_model

pytestmark = pytest.mark.skipif(
    not (backends.installed("openvino") and importlib.util.find_spec("nncf")),
    reason="openvino and nncf not installed")

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
# a small calibration recipe for tests: the shipped frames, fewer and smaller
# frames (the shipped recipe takes minutes on two cores)
SMALL = {"name": "test-photos", "frames": 3, "size": [64, 40], "preset": "mixed",
         "ignored": "bicubic skip"}
# lite INT8 vs lite torch fp32 on a real frame, uint8 RGB; docs/benchmarks.md states the PSNR
# of the shipped recipe (higher); this is the floor for the small test recipe
MIN_PSNR_INT8 = 38.0


@pytest.fixture(autouse=True)
def small_recipe(monkeypatch, tmp_path):
    from streamsr.inference.backends import ov_int8

    monkeypatch.setattr(ov_int8, "CALIBRATION", SMALL)
    monkeypatch.setenv("STREAMSR_CACHE_DIR", str(tmp_path / "cache"))


def tiny_skip() -> DeblurSR:
    torch.manual_seed(0)
    return DeblurSR(replace(TINY, bicubic_skip=True, name="tiny-skip")).eval()


def first_frame(name: str) -> np.ndarray:
    with av.open(str(SAMPLES / name)) as container:
        return next(container.decode(video=0)).to_ndarray(format="rgb24")


def psnr_u8(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def test_int8_output_is_close_to_torch_fp32_on_a_real_frame():
    model = load_model("lite")
    frame = first_frame("handheld.mp4")[None]  # 128x80, real content
    ref = Engine(model, EngineConfig(device="cpu", threads=1, precision="fp32")).upscale_batch(frame)
    engine = Engine(load_model("lite"), EngineConfig(device="cpu", threads=1, backend="openvino",
                                                     precision="int8"))
    assert engine._forward.precision == "int8"
    out = engine.upscale_batch(frame)
    assert out.shape == ref.shape
    assert psnr_u8(out, ref) >= MIN_PSNR_INT8


def test_bicubic_skip_stays_float():
    """The skip path carries the whole image: NNCF must leave its convolutions alone."""
    import openvino as ov

    from streamsr.inference.backends.ov_int8 import SKIP_PREFIX, int8_model

    q = int8_model(tiny_skip(), ov.Core())
    fq = [op for op in q.get_ordered_ops() if op.get_type_name() == "FakeQuantize"]
    assert fq, "nothing was quantized"
    skip_inputs = [op for op in q.get_ordered_ops() if op.get_friendly_name().startswith(SKIP_PREFIX)
                   and op.get_type_name() == "Convolution"]
    assert skip_inputs
    for conv in skip_inputs:
        for value in conv.input_values():
            assert value.get_node().get_type_name() != "FakeQuantize", conv.get_friendly_name()


def test_int8_model_is_cached_and_a_corrupt_entry_rebuilt(monkeypatch, tmp_path):
    import openvino as ov

    from streamsr.inference.backends import ov_int8

    calls = []
    real = ov_int8.quantize
    monkeypatch.setattr(ov_int8, "quantize", lambda m, f, r=None: calls.append(1) or real(m, f, r))
    cache = ArtifactCache("openvino-int8", tmp_path)
    core = ov.Core()
    model = tiny_skip()
    ov_int8.int8_model(model, core, cache)
    ov_int8.int8_model(model, core, cache)
    assert len(calls) == 1  # the second run reads the file
    entry = cache.entry(ov_int8.int8_key(model, SMALL), ".zip")
    entry.write_bytes(entry.read_bytes()[:100])  # truncated
    q = ov_int8.int8_model(model, core, cache)
    assert len(calls) == 2
    assert any(op.get_type_name() == "FakeQuantize" for op in q.get_ordered_ops())
    # another recipe is another entry (its key differs; quantizing it again is not needed to
    # show that, and takes ~10 s)
    other = cache.entry(ov_int8.int8_key(model, {**SMALL, "frames": 2}), ".zip")
    assert other != entry and not other.exists()


def test_missing_nncf_is_one_line_naming_the_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "nncf" else real(name, *a))
    with pytest.raises(BackendMissing) as err:
        Engine(tiny_skip(), EngineConfig(device="cpu", threads=1, backend="openvino",
                                         precision="int8"))
    assert str(err.value) == ("the openvino (--precision int8) backend needs nncf, which is not "
                              "installed: pip install 'streamsr[openvino]'")


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_int8_needs_openvino(backend):
    if not backends.installed(backend):
        pytest.skip(f"{backend} not installed")
    with pytest.raises(ConfigError, match="--precision int8 needs --backend openvino"):
        Engine(tiny_skip(), EngineConfig(device="cpu", threads=1, backend=backend,
                                         precision="int8"))


def test_export_int8_openvino_ir(tmp_path):
    out = tmp_path / "m.xml"
    meta = export_model(tiny_skip(), out, ExportOptions(format="openvino", precision="int8",
                                                        resolution=(40, 24)))
    assert read_export(out)["precision"] == "int8"
    assert '"test-photos"' in meta["calibration"]
    import openvino as ov

    ir = ov.Core().read_model(str(out))
    assert any(op.get_type_name() == "FakeQuantize" for op in ir.get_ordered_ops())
    with pytest.raises(ConfigError, match="use --format openvino for int8"):
        ExportOptions(format="onnx", precision="int8").check()
