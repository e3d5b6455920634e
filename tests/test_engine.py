"""The inference engine: uint8 in/out, batching, ordering, OOM recovery, precision, CUDA."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from streamsr.errors import ConfigError
from streamsr.inference.engine import Engine, EngineConfig, is_oom, model_scale
from streamsr.models import TINY, DeblurSR
from streamsr.models.ops import scale_bicubic

CPU = EngineConfig(device="cpu")
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


class Nearest(nn.Module):
    """x`scale` nearest neighbour: every output pixel is an exact copy of an input pixel."""

    def __init__(self, scale: int = 4) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(x, scale_factor=self.scale, mode="nearest")


class Bicubic(nn.Module):
    """The project's bicubic x4, as a stand-in 'model'."""

    scale = 4

    def forward(self, x: Tensor) -> Tensor:
        return scale_bicubic(x, 4)


class LocalNet(nn.Module):
    """A purely local x4 network (receptive radius 4 LR px): tiles must stitch exactly."""

    scale = 4

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(16, 48, 3, padding=1), nn.PixelShuffle(4))
        for p in self.parameters():  # larger weights than the default init: a lively output
            p.data = torch.randn(p.shape, generator=g) * 0.3

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.body(x))


class FakeOOM(nn.Module):
    """Wraps a model; raises an out-of-memory error on batches > K frames or frames > P pixels."""

    def __init__(self, inner: nn.Module, max_batch: int | None = None,
                 max_pixels: int | None = None, cuda_error: bool = False) -> None:
        super().__init__()
        self.inner, self.scale = inner, inner.scale
        self.max_batch, self.max_pixels, self.cuda_error = max_batch, max_pixels, cuda_error
        self.calls: list[tuple[int, ...]] = []  # every call's input shape
        self.ok: list[tuple[int, ...]] = []  # the calls that succeeded
        self.failures = 0

    def forward(self, x: Tensor) -> Tensor:
        self.calls.append(tuple(x.shape))
        n, _, h, w = x.shape
        if ((self.max_batch is not None and n > self.max_batch)
                or (self.max_pixels is not None and h * w > self.max_pixels)):
            self.failures += 1
            if self.cuda_error:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
            raise RuntimeError("[enforce fail] DefaultCPUAllocator: can't allocate memory")
        self.ok.append(tuple(x.shape))
        return self.inner(x)


def frames(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return math.inf if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


# -- uint8 in, uint8 out ------------------------------------------------------------------------

def test_nearest_round_trip_is_exact_at_odd_sizes():
    engine = Engine(Nearest(), CPU)
    x = frames(3, 37, 45)
    y = engine.upscale_batch(x)
    assert y.dtype == np.uint8 and y.shape == (3, 148, 180, 3)
    np.testing.assert_array_equal(y, x.repeat(4, axis=1).repeat(4, axis=2))


def test_single_frame_and_scale_attribute():
    engine = Engine(Nearest(scale=2), CPU)
    assert engine.scale == 2
    x = frames(1, 10, 12)[0]
    np.testing.assert_array_equal(engine.upscale_batch(x), x.repeat(2, axis=0).repeat(2, axis=1))


def test_uint16_frames_keep_16_bits():
    rng = np.random.default_rng(5)
    x = rng.integers(0, 65536, (2, 9, 11, 3), dtype=np.uint16)
    y = Engine(Nearest(), CPU).upscale_batch(x)  # x / 65535 in, round(65535 * y) out: exact
    assert y.dtype == np.uint16 and y.shape == (2, 36, 44, 3)
    np.testing.assert_array_equal(y, x.repeat(4, axis=1).repeat(4, axis=2))
    assert len(np.unique(y)) > 256  # more levels than a uint8 hand-over could carry
    x = rng.integers(0, 65536, (2, 16, 24, 3), dtype=np.uint16)  # multiples of 8: no padding
    y = Engine(Bicubic(), CPU).upscale_batch(x)
    ref = scale_bicubic(torch.from_numpy(x.astype(np.float64)).permute(0, 3, 1, 2) / 65535, 4)
    ref = (ref.clamp(0, 1) * 65535).permute(0, 2, 3, 1).numpy()
    assert np.abs(y.astype(np.float64) - ref).max() <= 1.0  # within one 16-bit code value


def test_scale_read_from_model_config():
    assert model_scale(DeblurSR(TINY)) == 4
    assert model_scale(nn.Identity()) == 4


def test_bicubic_stand_in_matches_scale_bicubic_within_one_code_value():
    engine = Engine(Bicubic(), CPU)
    x = frames(2, 24, 40, seed=3)
    y = engine.upscale_batch(x)
    ref = scale_bicubic(torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255, 4)
    ref = (ref.clamp(0, 1) * 255).permute(0, 2, 3, 1).numpy()
    assert np.abs(y.astype(np.float64) - ref).max() <= 1.0


def test_model_returning_an_object_with_hr():
    model = DeblurSR(TINY)
    engine = Engine(model, CPU)
    x = frames(2, 16, 24)
    y = engine.upscale_batch(x)
    with torch.inference_mode():
        ref = model(torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255).hr
    ref = (ref * 255).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
    assert y.shape == (2, 64, 96, 3)
    assert np.abs(y.astype(int) - ref.astype(int)).max() <= 1  # channels_last may reorder sums


def test_bad_frames_and_options_are_rejected():
    engine = Engine(Nearest(), CPU)
    with pytest.raises(TypeError):
        engine.upscale_batch(np.zeros((1, 8, 8, 3), np.float32))
    with pytest.raises(ValueError):
        engine.upscale_batch(np.zeros((1, 8, 8, 4), np.uint8))
    with pytest.raises(ConfigError):
        Engine(Nearest(), EngineConfig(device="cpu", precision="fp8"))
    with pytest.raises(ConfigError):
        Engine(Nearest(), EngineConfig(device="tpu"))
    with pytest.raises(ConfigError):
        Engine(Nearest(), EngineConfig(device="cpu", batch=0))
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError):
            Engine(Nearest(), EngineConfig(device="cuda"))


def test_defaults_on_cpu():
    engine = Engine(Nearest(), EngineConfig(device="cpu"))
    assert engine.device == torch.device("cpu")
    assert engine.dtype == torch.float32
    assert 1 <= engine.batch <= min(4, torch.get_num_threads())  # batching only feeds threads
    assert 1 <= engine.plan(180, 320) <= 4


# -- batching and order -------------------------------------------------------------------------

def test_mixed_sizes_and_partial_batches():
    engine = Engine(Nearest(), EngineConfig(device="cpu", batch=3))
    batches = [frames(3, 16, 24, 1), frames(1, 16, 24, 2), frames(5, 9, 7, 3), frames(2, 32, 8, 4)]
    outs = list(engine.map(batches))
    assert [o.shape for o in outs] == [(3, 64, 96, 3), (1, 64, 96, 3), (5, 36, 28, 3), (2, 128, 32, 3)]
    for x, y in zip(batches, outs, strict=True):
        np.testing.assert_array_equal(y, x.repeat(4, axis=1).repeat(4, axis=2))


def test_map_preserves_order_and_count():
    # 7 batches of 3 frames; frame k is filled with k (and 255 - k in green): content is the index.
    engine = Engine(Nearest(), EngineConfig(device="cpu", batch=2))  # batches get split, too
    batches = []
    for b in range(7):
        x = np.zeros((3, 8, 8, 3), np.uint8)
        for j in range(3):
            x[j, ..., 0] = 3 * b + j
            x[j, ..., 1] = 255 - (3 * b + j)
        batches.append(x)
    outs = list(engine.map(iter(batches)))
    assert len(outs) == 7
    seen = [int(f[0, 0, 0]) for o in outs for f in o]
    assert seen == list(range(21))
    assert all(o.shape == (3, 32, 32, 3) for o in outs)


# -- out of memory ------------------------------------------------------------------------------

@pytest.mark.parametrize("cuda_error", [False, True])
def test_oom_on_large_batches_retries_with_half_the_batch(cuda_error, caplog):
    model = FakeOOM(Nearest(), max_batch=2, cuda_error=cuda_error)
    engine = Engine(model, EngineConfig(device="cpu", batch=8, tile=0))
    x = frames(7, 8, 12)
    with caplog.at_level(logging.WARNING, logger="streamsr.inference"):
        y = engine.upscale_batch(x)
    np.testing.assert_array_equal(y, x.repeat(4, axis=1).repeat(4, axis=2))
    assert model.failures >= 1 and "out of memory" in caplog.text
    assert max(c[0] for c in model.ok) <= 2 and sum(c[0] for c in model.ok) == 7
    # The engine remembers: the next batch goes straight in at the smaller size.
    before = model.failures
    np.testing.assert_array_equal(engine.upscale_batch(x[:4]), x[:4].repeat(4, 1).repeat(4, 2))
    assert model.failures == before


def test_oom_on_large_frames_falls_back_to_tiles():
    model = FakeOOM(LocalNet(), max_pixels=64 * 64)
    engine = Engine(model, EngineConfig(device="cpu", batch=2, tile_overlap=8))
    x = frames(3, 96, 128, seed=7)
    y = engine.upscale_batch(x)
    ref = Engine(LocalNet(), EngineConfig(device="cpu", tile=0)).upscale_batch(x)
    assert y.shape == (3, 384, 512, 3)
    assert model.failures >= 2  # a batch of 2, then one whole frame
    assert np.abs(y.astype(int) - ref.astype(int)).max() <= 1
    assert model.ok and all(h * w <= 64 * 64 for _, _, h, w in model.ok)


def test_auto_tiles_when_a_frame_does_not_fit_in_free_memory(monkeypatch):
    import streamsr.inference.memory as engine_module

    engine = Engine(LocalNet(), EngineConfig(device="cpu"))
    budget_px = 80 * 80  # memory for one 80x80 frame, as the engine estimates it
    monkeypatch.setattr(engine_module, "free_memory",
                        lambda device: engine.bytes_per_pixel() * budget_px / engine_module.MEMORY_HEADROOM)
    x = frames(1, 96, 128, seed=11)
    assert engine.plan(96, 128) == 1
    chunk, tile = engine._plan(96, 128)
    assert tile == 48 and (tile + 2 * 16) ** 2 <= budget_px  # a 80x80 window fits the budget
    ref = Engine(LocalNet(), EngineConfig(device="cpu", tile=0)).upscale_batch(x)
    assert np.abs(engine.upscale_batch(x).astype(int) - ref.astype(int)).max() <= 1


def test_oom_with_tiling_disabled_is_a_clear_error():
    engine = Engine(FakeOOM(Nearest(), max_pixels=10), EngineConfig(device="cpu", batch=1, tile=0))
    with pytest.raises(ConfigError, match="tiling disabled"):
        engine.upscale_batch(frames(1, 16, 16))


def test_other_errors_are_not_taken_for_oom():
    assert is_oom(RuntimeError("CUDA out of memory. Tried to allocate"))
    assert not is_oom(RuntimeError("shape mismatch"))
    assert not is_oom(ValueError("out of memory"))


# -- memory format ------------------------------------------------------------------------------

def _convs_and_a_hooked_input(channels_last: bool):
    """Run the tiny model through an engine on 40-px-wide frames; return its conv weights and the
    inputs of those frames that reached two convs (stage 3's first, and the trunk's last, deep
    inside the network). The engine's own trial runs (other sizes) are left out."""
    torch.manual_seed(0)
    engine = Engine(DeblurSR(TINY), EngineConfig(device="cpu", channels_last=channels_last))
    seen = []
    convs = (engine.model.trunk.shallow_feat3[0], engine.model.trunk.tail)
    hooks = [c.register_forward_hook(lambda m, i, o: seen.append(i[0]) if i[0].shape[-1] == 40 else None)
             for c in convs]
    try:
        engine.upscale_batch(frames(2, 32, 40, seed=2))
    finally:
        for h in hooks:
            h.remove()
    weights = [m.weight for m in engine.model.modules() if isinstance(m, nn.Conv2d)]
    assert len(seen) >= 2 and any(w.shape[1] > 1 and w.shape[-1] > 1 for w in weights)
    return weights, seen


def test_channels_last_reaches_weights_and_activations():
    weights, inputs = _convs_and_a_hooked_input(channels_last=True)
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in weights)
    for x in inputs:  # 3+ channels and 40 px wide: the two layouts differ, strides tell which
        assert x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def test_channels_last_off_keeps_weights_and_activations_plain():
    weights, inputs = _convs_and_a_hooked_input(channels_last=False)
    assert all(w.is_contiguous() for w in weights)
    for x in inputs:
        assert x.is_contiguous() and not x.is_contiguous(memory_format=torch.channels_last)


def test_bf16_autocast_on_cpu_is_close_to_fp32():
    torch.manual_seed(0)
    model = DeblurSR(TINY)
    x = frames(2, 32, 40, seed=9)
    fp32 = Engine(model, EngineConfig(device="cpu", precision="fp32")).upscale_batch(x)
    engine = Engine(model, EngineConfig(device="cpu", precision="bf16"))
    seen = []
    hook = model.trunk.shallow_feat1[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    bf16 = engine.upscale_batch(x)
    hook.remove()
    assert seen and set(seen) == {torch.bfloat16}  # autocast really ran the convolutions in bf16
    assert np.abs(bf16.astype(int) - fp32.astype(int)).max() <= 4
    assert psnr(bf16, fp32) > 40


def test_compile_failure_falls_back_to_eager(monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(torch, "compile", lambda model, **kw: broken)
    engine = Engine(Nearest(), EngineConfig(device="cpu", compile=True))
    x = frames(3, 8, 8)
    with caplog.at_level(logging.WARNING, logger="streamsr.inference"):
        y = engine.upscale_batch(x)
    np.testing.assert_array_equal(y, x.repeat(4, 1).repeat(4, 2))
    assert "falling back to the eager model" in caplog.text
    assert engine._forward.compiled is None


def test_compile_unavailable_at_construction_runs_eagerly(monkeypatch, caplog):
    attempts = []

    def unavailable(model, **kwargs):
        attempts.append(model)
        raise RuntimeError("Dynamo is not supported on this Python")

    monkeypatch.setattr(torch, "compile", unavailable)
    model = FakeOOM(Nearest())  # records the shape of every call; never fails here
    with caplog.at_level(logging.WARNING, logger="streamsr.inference"):
        engine = Engine(model, EngineConfig(device="cpu", compile=True, batch=4))
        x = frames(3, 8, 8)
        y = engine.upscale_batch(x)
    assert len(attempts) == 1 and engine._forward.compiled is None
    assert ("torch.compile unavailable (Dynamo is not supported on this Python); "
            "running the model eagerly") in caplog.messages
    assert "falling back" not in caplog.text  # nothing compiled was ever called
    np.testing.assert_array_equal(y, x.repeat(4, 1).repeat(4, 2))
    # eager: the short batch is not padded to 4 (other calls are the engine's trial runs)
    assert [c for c in model.calls if c[2:] == (8, 8)] == [(3, 3, 8, 8)]


def test_compiled_partial_batch_is_padded_to_the_planned_size(monkeypatch):
    shapes = []

    def fake_compile(model, **kwargs):
        def run(x):
            shapes.append(x.shape[0])
            return model(x)
        return run

    monkeypatch.setattr(torch, "compile", fake_compile)
    engine = Engine(Nearest(), EngineConfig(device="cpu", compile=True, batch=4))
    outs = list(engine.map([frames(4, 8, 8), frames(3, 8, 8, 1)]))
    assert [o.shape[0] for o in outs] == [4, 3]
    assert shapes == [4, 4]  # one shape: nothing to recompile
    np.testing.assert_array_equal(outs[1], frames(3, 8, 8, 1).repeat(4, 1).repeat(4, 2))


# -- CUDA ---------------------------------------------------------------------------------------

@pytest.mark.cuda
@cuda
def test_cuda_defaults():
    engine = Engine(Nearest(), EngineConfig())
    assert engine.device.type == "cuda"
    assert engine.dtype == (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cuda_double_buffered_map_equals_synchronous_path(precision):
    torch.manual_seed(0)
    engine = Engine(DeblurSR(TINY), EngineConfig(device="cuda", precision=precision, batch=3))
    batches = [frames(3, 40, 56, seed=s) for s in range(5)] + [frames(2, 40, 56, 9),
                                                                frames(3, 24, 32, 10)]
    sync = [engine.upscale_batch(b) for b in batches]
    piped = list(engine.map(iter(batches)))
    assert len(piped) == len(sync)
    for a, b in zip(piped, sync, strict=True):
        np.testing.assert_array_equal(a, b)
    nearest = Engine(Nearest(), EngineConfig(device="cuda"))
    for x, y in zip(batches, nearest.map(batches), strict=True):
        np.testing.assert_array_equal(y, x.repeat(4, 1).repeat(4, 2))


@pytest.mark.cuda
@cuda
def test_cuda_map_does_not_synchronize_per_batch(monkeypatch):
    engine = Engine(DeblurSR(TINY), EngineConfig(device="cuda", batch=2))
    engine.plan(32, 48)  # the one-off memory trial may synchronise; the loop must not
    calls = []
    real = torch.cuda.synchronize
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: (calls.append(1), real(*a, **k)))
    outs = list(engine.map(frames(2, 32, 48, seed=s) for s in range(8)))
    assert len(outs) == 8 and not calls


@pytest.mark.cuda
@cuda
def test_cuda_oom_error_class_is_retried():
    model = FakeOOM(Nearest(), max_batch=1, cuda_error=True)
    engine = Engine(model, EngineConfig(device="cuda", batch=4, tile=0))
    x = frames(4, 16, 16)
    outs = list(engine.map([x, x]))
    for y in outs:
        np.testing.assert_array_equal(y, x.repeat(4, 1).repeat(4, 2))


# -- CPU threads: all CPUs, or the user's count; never the load average ---------------------------

@pytest.fixture
def thread_state(monkeypatch):
    """Fresh thread settings (no --threads, no OMP_NUM_THREADS, 2 CPUs), restored after."""
    import streamsr.runtime as eng

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(eng, "_pinned_threads", None)
    monkeypatch.setattr(eng, "available_cpus", lambda: 2)
    before = torch.get_num_threads()
    yield eng
    torch.set_num_threads(before)


def test_cpu_threads_ignore_a_load_left_by_earlier_jobs(thread_state, monkeypatch):
    """A load average of 8 on 2 CPUs (say, left over from a previous run) used to mean one
    thread for the whole run; now the engine starts with every CPU and the pipeline measures
    (tests/test_pipeline.py: the faster of 1 and all threads is kept)."""
    monkeypatch.setattr(thread_state.os, "getloadavg", lambda: (8.0, 8.0, 8.0))
    torch.set_num_threads(1)
    engine = Engine(Nearest(), EngineConfig(device="cpu"))
    assert torch.get_num_threads() == 2 and not engine.threads_fixed
    assert engine.batch == 2  # batch follows threads: at most one frame per thread


def test_cpu_threads_the_user_chose_are_kept(thread_state, monkeypatch):
    engine = Engine(Nearest(), EngineConfig(device="cpu", threads=1))
    assert torch.get_num_threads() == 1 and engine.threads_fixed and engine.batch == 1
    thread_state.pin_cpu_threads(1)  # the CLI's --threads: every later engine keeps it
    engine = Engine(Nearest(), EngineConfig(device="cpu"))
    assert torch.get_num_threads() == 1 and engine.threads_fixed
    monkeypatch.setattr(thread_state, "_pinned_threads", None)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    assert Engine(Nearest(), EngineConfig(device="cpu")).threads_fixed
    assert torch.get_num_threads() == 1
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ConfigError):
            Engine(Nearest(), EngineConfig(device="cpu", threads=bad))
