"""Inference backends behind the engine: selection, missing extras, caching, exactness vs torch."""

from __future__ import annotations

import copy
import importlib.util
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from media import decode_all, make_smooth_clip

from streamsr.cli import main
from streamsr.errors import ConfigError
from streamsr.inference import backends
from streamsr.inference.backends import BackendMissing, resolve_backend
from streamsr.inference.backends.cache import ArtifactCache
from streamsr.inference.backends.trt_backend import engine_key
from streamsr.inference.engine import Engine, EngineConfig
from streamsr.models import TINY, DeblurSR
from streamsr.models.weights import save_model

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
RUNTIMES = [b for b in ("openvino", "onnxruntime") if backends.installed(b)]


@pytest.fixture(scope="module", autouse=True)
def cache_dir(tmp_path_factory):
    """One model cache for the module: the tiny graph is exported once, then read back."""
    path = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STREAMSR_CACHE_DIR", str(path))
        yield path


@pytest.fixture(scope="module", autouse=True)
def torch_threads():
    """Engines here pin one torch thread (see below): give later modules their count back."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def skip_model(seed: int = 0) -> DeblurSR:
    """`tiny` with lite's bicubic skip and a non-zero correction, random weights."""
    torch.manual_seed(seed)
    model = DeblurSR(replace(TINY, bicubic_skip=True, name="tiny-skip")).eval()
    torch.nn.init.normal_(model.reconstruct.out.weight, std=0.05)
    return model


def psnr_u8(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def frames(n: int = 3, h: int = 36, w: int = 52, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


# Engines here run on one thread: the 2-core test machine is shared, and a pool of two threads
# waits on its descheduled half far longer than one thread computes these tiny frames.


# -- selection and missing extras ------------------------------------------------------------

def test_auto_picks_by_the_documented_rule(monkeypatch):
    monkeypatch.setattr(backends, "installed", lambda name: True)
    assert resolve_backend("auto", CPU) == "openvino"
    assert resolve_backend("auto", CUDA) == "tensorrt"
    monkeypatch.setattr(backends, "installed", lambda name: name == "torch")
    assert resolve_backend("auto", CPU) == "torch"
    assert resolve_backend("auto", CUDA) == "torch"


def test_backends_refuse_the_wrong_device():
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        resolve_backend("tensorrt", CPU)
    for name in ("openvino", "onnxruntime"):
        with pytest.raises(ConfigError, match="runs on the CPU"):
            resolve_backend(name, CUDA)
    with pytest.raises(ConfigError, match="unknown backend"):
        resolve_backend("tvm", CPU)


@pytest.mark.parametrize("backend,module,extra", [("openvino", "openvino", "openvino"),
                                                  ("onnxruntime", "onnxruntime", "onnx"),
                                                  ("tensorrt", "tensorrt", "tensorrt")])
def test_a_missing_backend_names_its_extra(monkeypatch, backend, module, extra):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == module else real(name, *a))
    device = CUDA if backend == "tensorrt" else CPU
    with pytest.raises(BackendMissing, match=rf"pip install 'streamsr\[{extra}\]'"):
        resolve_backend(backend, device)


def test_cli_missing_backend_is_one_line(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "openvino" else real(name, *a))
    clip = make_smooth_clip(tmp_path / "in.mp4", n=2)
    out = tmp_path / "out.mp4"
    result = CliRunner().invoke(main, ["upscale", str(clip), str(out), "--model", "lite",
                                       "--device", "cpu", "--backend", "openvino", "-q"])
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert lines == ["streamsr: error: the openvino backend needs openvino, which is not "
                     "installed: pip install 'streamsr[openvino]'"]
    assert not out.exists()


def test_engine_refuses_compile_with_a_runtime_backend():
    if not RUNTIMES:
        pytest.skip("no runtime backend installed")
    with pytest.raises(ConfigError, match="--compile"):
        Engine(skip_model(), EngineConfig(device="cpu", backend=RUNTIMES[0], compile=True))


def test_engine_refuses_tensorrt_on_the_cpu():
    with pytest.raises(ConfigError, match="CUDA GPU"):
        Engine(skip_model(), EngineConfig(device="cpu", backend="tensorrt"))


# -- the artifact cache (ONNX graphs, TensorRT engines) --------------------------------------

def test_cache_builds_once_then_reads(tmp_path):
    cache = ArtifactCache("t", tmp_path)
    calls = []

    def write(p: Path) -> None:
        calls.append(p)
        p.write_bytes(b"engine bytes")

    key = {"graph": "abc", "shape": [1, 3, 8, 8], "precision": "fp16"}
    first = cache.get(key, ".engine", write)
    second = cache.get(key, ".engine", write)
    assert first == second and first.read_bytes() == b"engine bytes" and len(calls) == 1
    other = cache.get({**key, "shape": [2, 3, 8, 8]}, ".engine", write)
    assert other != first and len(calls) == 2


@pytest.mark.parametrize("damage", ["flip", "truncate", "no_sidecar", "other_key"])
def test_cache_rebuilds_a_damaged_entry(tmp_path, damage):
    cache = ArtifactCache("t", tmp_path)
    key = {"graph": "abc", "shape": [1, 3, 8, 8]}
    built = []

    def write(p: Path) -> None:
        built.append(1)
        p.write_bytes(bytes(range(256)) * 4)

    path = cache.get(key, ".engine", write)
    side = path.with_name(path.name + ".json")
    if damage == "flip":
        data = bytearray(path.read_bytes())
        data[500] ^= 0xFF
        path.write_bytes(bytes(data))
    elif damage == "truncate":
        path.write_bytes(path.read_bytes()[:100])
    elif damage == "no_sidecar":
        side.unlink()
    else:
        meta = json.loads(side.read_text())
        meta["key"]["shape"] = [9, 9, 9, 9]
        side.write_text(json.dumps(meta))
    again = cache.get(key, ".engine", write)
    assert len(built) == 2  # never trusted: rebuilt
    assert again.read_bytes() == bytes(range(256)) * 4


def test_tensorrt_engine_key_separates_shape_precision_and_gpu():
    graph = {"weights_sha256": "w", "config": "{}"}
    gpu = {"gpu": "NVIDIA H200", "capability": "9.0", "tensorrt": "10.3"}
    base = engine_key(graph, (4, 3, 184, 320), "fp16", gpu)
    assert base == engine_key(graph, (4, 3, 184, 320), "fp16", dict(gpu))
    variants = [engine_key(graph, (2, 3, 184, 320), "fp16", gpu),
                engine_key(graph, (4, 3, 184, 320), "bf16", gpu),
                engine_key(graph, (4, 3, 184, 320), "fp16", {**gpu, "gpu": "NVIDIA A100"}),
                engine_key(graph, (4, 3, 184, 320), "fp16", {**gpu, "tensorrt": "10.4"}),
                engine_key({**graph, "weights_sha256": "v"}, (4, 3, 184, 320), "fp16", gpu)]
    names = {json.dumps(k, sort_keys=True) for k in [base, *variants]}
    assert len(names) == 6


def test_runtime_graph_is_exported_once_and_rebuilt_when_corrupt(tmp_path, monkeypatch):
    pytest.importorskip("onnx")
    from streamsr.inference.backends import onnx_export

    calls = []
    real = onnx_export.onnx_bytes
    monkeypatch.setattr(onnx_export, "onnx_bytes", lambda *a, **k: calls.append(1) or real(*a, **k))
    cache = ArtifactCache("onnx", tmp_path)
    model = skip_model()
    path = onnx_export.runtime_onnx(model, cache)
    assert onnx_export.runtime_onnx(model, cache) == path and len(calls) == 1
    path.write_bytes(path.read_bytes()[:-10])  # a torn write
    onnx_export.runtime_onnx(model, cache)
    assert len(calls) == 2
    assert onnx_export.read_onnx_metadata(path)["weights_sha256"] == \
        onnx_export.runtime_key(model)["weights_sha256"]
    onnx_export.runtime_onnx(skip_model(seed=1), cache)  # other weights: their own entry
    assert len(calls) == 3


# -- exactness behind the engine -------------------------------------------------------------

@pytest.mark.parametrize("backend", RUNTIMES)
def test_backend_output_equals_torch_fp32(backend):
    """fp32 backends: uint8 output within one level of torch fp32 (rounding ties), PSNR >= 60 dB."""
    model = skip_model()
    x = frames()
    ref = Engine(copy.deepcopy(model), EngineConfig(device="cpu", threads=1)).upscale_batch(x)
    engine = Engine(copy.deepcopy(model), EngineConfig(device="cpu", threads=1, backend=backend))
    out = engine.upscale_batch(x)
    assert engine.backend == backend and out.shape == ref.shape == (3, 144, 208, 3)
    assert np.abs(out.astype(int) - ref).max() <= 1
    assert psnr_u8(out, ref) >= 60


@pytest.mark.parametrize("backend", RUNTIMES)
def test_backend_tiles_like_torch(backend):
    model = skip_model()
    x = frames(n=2, h=48, w=64, seed=1)
    cfg = {"device": "cpu", "threads": 1, "tile": 16, "tile_overlap": 8}
    ref = Engine(copy.deepcopy(model), EngineConfig(**cfg)).upscale_batch(x)
    out = Engine(copy.deepcopy(model), EngineConfig(**cfg, backend=backend)).upscale_batch(x)
    assert np.abs(out.astype(int) - ref).max() <= 1


@pytest.mark.parametrize("backend", RUNTIMES)
def test_pipeline_with_a_backend_keeps_every_frame(tmp_path, backend):
    """The whole pipeline (yuv420p packing on the device included): every frame, in order,
    as torch's pipeline makes them."""
    from streamsr.api import upscale

    model = skip_model()
    clip = make_smooth_clip(tmp_path / "in.mp4", n=5)
    outs = {}
    for name in ("torch", backend):
        dst = tmp_path / f"{name}.mp4"
        stats = upscale(clip, dst, model=copy.deepcopy(model), device="cpu", backend=name,
                        threads=1, handle_signals=False, codec="libx264", crf=0)
        assert stats.frames == 5
        outs[name] = decode_all(dst)[0]
    assert len(outs[backend]) == len(outs["torch"]) == 5
    for a, b in zip(outs[backend], outs["torch"], strict=True):
        assert psnr_u8(a, b) >= 50


def test_openvino_rebuilds_corrupt_compiled_blobs(cache_dir):
    if "openvino" not in RUNTIMES:
        pytest.skip("openvino not installed")
    model = skip_model()
    x = frames(n=1)
    ref = Engine(copy.deepcopy(model), EngineConfig(device="cpu", threads=1)).upscale_batch(x)
    Engine(copy.deepcopy(model), EngineConfig(device="cpu", threads=1, backend="openvino")).upscale_batch(x)
    blobs = sorted((cache_dir / "openvino").glob("*.blob"))
    assert blobs, "OpenVINO cached nothing"
    for blob in blobs:
        blob.chmod(0o644)
        data = bytearray(blob.read_bytes())
        for i in range(4096, len(data), 97):
            data[i] ^= 0x5A
        blob.write_bytes(bytes(data))
    damaged = {b: b.read_bytes() for b in blobs}
    out = Engine(copy.deepcopy(model), EngineConfig(device="cpu", threads=1, backend="openvino")).upscale_batch(x)
    assert np.abs(out.astype(int) - ref).max() <= 1
    assert any(b.read_bytes() != damaged[b] for b in blobs if b.exists())  # rewritten


def test_upscale_cli_backend_option(tmp_path):
    if not RUNTIMES:
        pytest.skip("no runtime backend installed")
    weights = tmp_path / "m.safetensors"
    save_model(skip_model(), weights)
    clip = make_smooth_clip(tmp_path / "in.mp4", n=3)
    out = tmp_path / "out.mp4"
    result = CliRunner().invoke(main, ["upscale", str(clip), str(out), "--model", str(weights),
                                       "--device", "cpu", "--backend", RUNTIMES[0], "-q"])
    assert result.exit_code == 0, result.output
    assert len(decode_all(out)[0]) == 3


@pytest.mark.cuda
@pytest.mark.parametrize("precision,min_psnr", [("fp32", 60.0), ("fp16", 45.0)])
def test_tensorrt_matches_torch_fp32_on_a_gpu(precision, min_psnr):
    """TensorRT behind the engine (pinned ring, events): every frame, close to torch fp32 by
    the stated threshold; the second engine loads the cached engine instead of building."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    if not backends.installed("tensorrt"):
        pytest.skip("tensorrt is not installed")
    model = skip_model()
    x = frames(n=5, h=40, w=64)
    ref = Engine(copy.deepcopy(model), EngineConfig(device="cpu", threads=1)).upscale_batch(x)
    cfg = EngineConfig(device="cuda", precision=precision, backend="tensorrt", batch=2)
    engine = Engine(copy.deepcopy(model), cfg)
    outs = list(engine.map([x[:2], x[2:4], x[4:]]))
    out = np.concatenate(outs)
    assert out.shape == ref.shape
    assert psnr_u8(out, ref) >= min_psnr
    again = Engine(copy.deepcopy(model), cfg)
    built = []
    again._forward.build = lambda shape: built.append(shape) or b""
    assert np.array_equal(again.upscale_batch(x[:2]), outs[0])
    assert built == []  # read from the cache


def test_openvino_precision_is_what_was_asked():
    """OpenVINO's own CPU default is bf16 where the CPU has it: the engine always sets the
    precision hint, and refuses bf16/fp16 on a CPU that would silently run f32 instead."""
    if "openvino" not in RUNTIMES:
        pytest.skip("openvino not installed")
    import openvino as ov

    caps = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    engine = Engine(skip_model(), EngineConfig(device="cpu", threads=1, backend="openvino"))
    assert engine._forward.settings()["INFERENCE_PRECISION_HINT"] == "f32"
    if "BF16" in caps:
        pytest.skip("this CPU runs bf16")
    with pytest.raises(ConfigError, match="cannot run OpenVINO in bf16"):
        Engine(skip_model(), EngineConfig(device="cpu", threads=1, backend="openvino",
                                          precision="bf16"))
