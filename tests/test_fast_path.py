"""The fast CUDA path's CPU-checkable logic: CUDA graphs, NVDEC/NVENC options and fallbacks.

This machine may have no GPU: the tests here check what does not need one (option plumbing,
fallbacks, the graph bookkeeping with a stand-in recorder); those marked `cuda` check the real
thing on a GPU and are skipped without one.
"""

from __future__ import annotations

import json
import logging
import weakref

import av
import media
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import Tensor, nn

import streamsr.inference.engine as engine_mod
import streamsr.inference.graphs as graphs_mod
import streamsr.video.source as source_mod
from streamsr.cli import main
from streamsr.errors import ConfigError, InputError
from streamsr.inference.engine import Engine, EngineConfig
from streamsr.inference.graphs import CudaGraphs, resolve_cuda_graphs
from streamsr.models import TINY, DeblurSR
from streamsr.video.encoder import EncodeOptions, check_encoder, encoder_options
from streamsr.video.source import component_bits, open_source

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
GRAPH_LOG = "streamsr.inference"


class LocalNet(nn.Module):
    """A small x4 conv net with lively seeded weights: different inputs, clearly different outputs."""

    scale = 4

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(8, 48, 3, padding=1), nn.PixelShuffle(4))
        for p in self.parameters():
            p.data = torch.randn(p.shape, generator=g) * 0.3

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.body(x))


def frames(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """One torch thread: tiny models on a shared 2-core machine run fastest that way."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


class StandInGraph:
    """What a captured graph does, on the CPU: replay recomputes the output from the static
    input into the static output buffer (so a missing copy into the input shows up)."""

    def __init__(self, forward, static_in: Tensor) -> None:
        # a weak reference, as a real graph keeps none to the Python model call
        self.forward, self.static_in = weakref.ref(forward), static_in
        self.static_out = forward.run_eager(static_in, cache=False)

    def replay(self) -> None:
        self.static_out.copy_(self.forward().run_eager(self.static_in, cache=False))


def force_graphs(engine: Engine) -> CudaGraphs:
    """Turn the graph path on for a CPU engine (where `cuda_graphs` resolves to off)."""
    engine._forward.graphs = CudaGraphs(engine._forward.channels_last)
    return engine._forward.graphs


# -- 1. CUDA graphs ---------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["auto", "on", "off"])
def test_cuda_graphs_option_is_a_no_op_on_cpu(mode):
    x = frames(3, 12, 20)
    plain = Engine(LocalNet(), EngineConfig(device="cpu", batch=2)).upscale_batch(x)
    engine = Engine(LocalNet(), EngineConfig(device="cpu", batch=2, cuda_graphs=mode))
    assert engine._forward.graphs is None
    np.testing.assert_array_equal(engine.upscale_batch(x), plain)


def test_cuda_graphs_modes_resolve_soundly(caplog):
    gpu, cpu = torch.device("cuda"), torch.device("cpu")
    assert resolve_cuda_graphs("auto", gpu, compile=False)
    assert resolve_cuda_graphs("on", gpu, compile=False)
    assert not resolve_cuda_graphs("off", gpu, compile=False)
    assert not resolve_cuda_graphs("auto", gpu, compile=True)  # compile has its own graphs
    with caplog.at_level(logging.WARNING, logger=GRAPH_LOG):
        assert not resolve_cuda_graphs("on", gpu, compile=True)
    assert "not used with torch.compile" in caplog.text
    assert not any(resolve_cuda_graphs(m, cpu, compile=False) for m in ("auto", "on", "off"))
    with pytest.raises(ConfigError, match="cuda_graphs"):
        Engine(LocalNet(), EngineConfig(device="cpu", cuda_graphs="always"))


def test_capture_failure_falls_back_to_eager_with_one_warning(monkeypatch, caplog):
    calls = []

    def broken(forward, static_in):
        calls.append(tuple(static_in.shape))
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(graphs_mod, "record_graph", broken)
    batches = [frames(2, 12, 20, s) for s in range(3)] + [frames(1, 12, 20, 7)]
    expected = list(Engine(LocalNet(), EngineConfig(device="cpu", batch=2)).map(batches))
    engine = Engine(LocalNet(), EngineConfig(device="cpu", batch=2))
    graphs = force_graphs(engine)
    with caplog.at_level(logging.WARNING, logger=GRAPH_LOG):
        outs = list(engine.map(batches))
    for y, e in zip(outs, expected, strict=True):
        np.testing.assert_array_equal(y, e)
    warnings = [r for r in caplog.records if "CUDA graph capture failed" in r.getMessage()]
    assert len(warnings) == 1 and calls == [(2, 3, 16, 24)]  # tried once, then eager for good
    assert not graphs.enabled and graphs.replays == 0


def test_full_batches_replay_the_plan_time_graph_and_others_run_eagerly(monkeypatch):
    recorded = []

    def stand_in(forward, static_in):
        recorded.append(tuple(static_in.shape))
        graph = StandInGraph(forward, static_in)
        return graph, graph.static_out

    monkeypatch.setattr(graphs_mod, "record_graph", stand_in)
    batches = [frames(2, 12, 20, s) for s in range(3)] + [frames(1, 12, 20, 7), frames(2, 8, 8, 9)]
    expected = list(Engine(LocalNet(), EngineConfig(device="cpu", batch=2)).map(batches))
    engine = Engine(LocalNet(), EngineConfig(device="cpu", batch=2))
    graphs = force_graphs(engine)
    engine.plan(12, 20)
    assert recorded == [(2, 3, 16, 24)]  # captured when planned, before any frame
    outs = list(engine.map(batches))
    for y, e in zip(outs, expected, strict=True):  # each batch its own result: input refilled
        np.testing.assert_array_equal(y, e)
    assert recorded == [(2, 3, 16, 24), (2, 3, 8, 8)]  # a new full-batch shape: captured once
    assert graphs.replays == 4  # three full 12x20 batches and one 8x8; the single frame ran eagerly
    static_in = graphs.graphs[(2, 3, 16, 24)][1]
    assert static_in.is_contiguous(memory_format=torch.channels_last)  # the model's layout


def test_graphs_are_freed_with_their_engine_or_on_release(monkeypatch):
    """No reference cycle keeps a graph (and its memory pool) alive: the bench makes several
    engines in one process and each plans from the memory the others left free."""
    import gc

    made = []

    def stand_in(forward, static_in):
        graph = StandInGraph(forward, static_in)
        made.append(weakref.ref(graph))
        return graph, graph.static_out

    monkeypatch.setattr(graphs_mod, "record_graph", stand_in)
    engine = Engine(LocalNet(), EngineConfig(device="cpu", batch=2))
    force_graphs(engine)
    engine.plan(12, 20)
    engine.release_graphs()
    assert made[0]() is None and not engine._forward.graphs.graphs
    engine.upscale_batch(frames(2, 12, 20))  # captured again when the shape comes back
    assert len(made) == 2 and made[1]() is not None
    gc.disable()  # freed by reference counting alone, not by a later cycle collection
    try:
        del engine
        assert made[1]() is None
    finally:
        gc.enable()


def test_out_of_memory_during_capture_shrinks_the_batch_and_keeps_graphs(monkeypatch, caplog):
    def small_only(forward, static_in):
        if static_in.shape[0] > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
        graph = StandInGraph(forward, static_in)
        return graph, graph.static_out

    monkeypatch.setattr(graphs_mod, "record_graph", small_only)
    x = frames(4, 12, 20)
    expected = Engine(LocalNet(), EngineConfig(device="cpu", batch=4)).upscale_batch(x)
    engine = Engine(LocalNet(), EngineConfig(device="cpu", batch=4, tile=0))
    graphs = force_graphs(engine)
    with caplog.at_level(logging.WARNING, logger=GRAPH_LOG):
        np.testing.assert_array_equal(engine.upscale_batch(x), expected)
    assert graphs.enabled and list(graphs.graphs) == [(1, 3, 16, 24)] and graphs.replays == 4
    assert "capture failed" not in caplog.text and "retrying 2 at a time" in caplog.text


def test_cuda_graphs_option_reaches_the_engine(monkeypatch, tmp_path):
    import streamsr.api
    from streamsr.api import upscale

    seen = {}

    class Spy(Engine):
        def __init__(self, model, config=None):
            seen["config"] = config
            super().__init__(model, config)

    monkeypatch.setattr(engine_mod, "Engine", Spy)
    src = media.make_index_clip(tmp_path / "in.mp4", n=2, size=(16, 16))
    upscale(src, tmp_path / "out.mp4", model=media.BicubicX4(), device="cpu", cuda_graphs="off",
            encoder_preset="ultrafast", handle_signals=False)
    assert seen["config"].cuda_graphs == "off"

    calls = {}
    monkeypatch.setattr(streamsr.api, "upscale",
                        lambda src, dst, options, **kw: calls.update(options=options))
    res = CliRunner().invoke(main, ["upscale", str(src), str(tmp_path / "o.mp4"), "-q",
                                    "--cuda-graphs", "on"])
    assert res.exit_code == 0, res.output
    assert calls["options"].engine.cuda_graphs == "on"
    res = CliRunner().invoke(main, ["upscale", str(src), str(tmp_path / "o.mp4"),
                                    "--cuda-graphs", "maybe"])
    assert res.exit_code == 2


def test_bench_cuda_graphs_option_reaches_its_config(monkeypatch):
    import streamsr.bench

    seen = {}

    def fake_run(config, progress=None):
        seen["config"] = config
        raise ConfigError("stop here")

    monkeypatch.setattr(streamsr.bench, "run_bench", fake_run)
    res = CliRunner().invoke(main, ["bench", "--device", "cpu", "--cuda-graphs", "off"])
    assert res.exit_code == 2 and seen["config"].cuda_graphs == "off"
    assert streamsr.bench.engine_config(seen["config"]).cuda_graphs == "off"


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("precision,float_tol,u8_tol", [("fp32", 1e-4, 1), ("bf16", 2e-2, 4)])
def test_cuda_graph_replay_equals_eager(precision, float_tol, u8_tol):
    torch.manual_seed(0)
    model = DeblurSR(TINY)
    graphed = Engine(model, EngineConfig(device="cuda", precision=precision, batch=2,
                                         cuda_graphs="on"))
    graphed.plan(40, 56)
    graphs = graphed._forward.graphs
    assert graphs is not None and graphs.enabled and list(graphs.graphs) == [(2, 3, 40, 56)]
    batches = [frames(2, 40, 56, seed=s) for s in (1, 2)]
    outs = list(graphed.map(batches))
    assert graphs.replays == 2
    eager = Engine(model, EngineConfig(device="cuda", precision=precision, batch=2,
                                       cuda_graphs="off"))
    for x, y in zip(batches, outs, strict=True):
        e = eager.upscale_batch(x)
        assert np.abs(y.astype(int) - e.astype(int)).max() <= u8_tol
    x = torch.rand(2, 3, 40, 56, device="cuda")
    with torch.inference_mode():
        replayed = graphed.model_call(x).clone()
        direct = graphed._forward(x, eager=True)
    assert graphs.replays == 3
    torch.testing.assert_close(replayed, direct, atol=float_tol, rtol=float_tol)


# -- 2. NVDEC -----------------------------------------------------------------------------------

SOURCE_LOG = "streamsr.video.source"


def decode(path, **kw) -> tuple[list[np.ndarray], str]:
    with open_source(path, **kw) as src:
        return [f.rgb for f in src], src.decoder


def nvdec_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno >= logging.WARNING and "NVDEC" in r.getMessage()]


def test_cuda_decoder_without_a_usable_gpu_decodes_in_software_after_one_warning(tmp_path, caplog):
    clip = media.make_smooth_clip(tmp_path / "in.mp4", n=6)
    expected, _ = decode(clip)
    with caplog.at_level(logging.INFO, logger=SOURCE_LOG):
        got, used = decode(clip, decoder="cuda", gpu=99)  # no machine has a GPU 99
    assert used == "software" and len(got) == 6
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a, b)
    warnings = nvdec_warnings(caplog)
    assert len(warnings) == 1 and "decoding in software" in warnings[0], warnings


def test_cuda_decoder_here_gives_the_software_frames(tmp_path, caplog):
    """On this machine as it is: NVDEC if it works (bit-exact H.264), else software + a warning."""
    clip = media.make_index_clip(tmp_path / "in.mp4", n=8)
    expected, _ = decode(clip)
    with caplog.at_level(logging.INFO, logger=SOURCE_LOG):
        got, used = decode(clip, decoder="cuda")
    assert [media.read_index(f) for f in got] == list(range(8))
    for a, b in zip(got, expected, strict=True):
        assert np.abs(a.astype(int) - b.astype(int)).max() <= (0 if used == "software" else 1)
    assert len(nvdec_warnings(caplog)) == (1 if used == "software" else 0)


def test_pipeline_with_cuda_decoder_falls_back_and_writes_the_same_video(tmp_path, caplog):
    from streamsr.api import upscale

    clip = media.make_smooth_clip(tmp_path / "in.mp4", n=5)
    kw = dict(model=media.BicubicX4(), device="cpu", encoder_preset="ultrafast",
              handle_signals=False)
    upscale(clip, tmp_path / "sw.mp4", decoder="software", **kw)
    with caplog.at_level(logging.INFO, logger=SOURCE_LOG):
        stats = upscale(clip, tmp_path / "cuda.mp4", decoder="cuda", **kw)
    assert stats.frames == 5
    sw, _, _ = media.decode_all(tmp_path / "sw.mp4")
    hw, _, _ = media.decode_all(tmp_path / "cuda.mp4")
    if not torch.cuda.is_available():
        assert len(nvdec_warnings(caplog)) == 1
        for a, b in zip(hw, sw, strict=True):
            np.testing.assert_array_equal(a, b)


def test_auto_decoder_does_not_try_nvdec_for_a_cpu_model(tmp_path, monkeypatch, caplog):
    from streamsr.api import upscale

    def no(gpu=None):
        raise AssertionError("NVDEC tried for a CPU run")

    monkeypatch.setattr(source_mod, "cuda_hwaccel", no)
    clip = media.make_smooth_clip(tmp_path / "in.mp4", n=3)
    with caplog.at_level(logging.WARNING):
        stats = upscale(clip, tmp_path / "o.mp4", model=media.BicubicX4(), device="cpu",
                        decoder="auto", encoder_preset="ultrafast", handle_signals=False)
    assert stats.frames == 3 and not nvdec_warnings(caplog)


def test_cuda_decoder_keeps_input_errors_and_rejects_unknown_decoders(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger=SOURCE_LOG), \
            pytest.raises(InputError, match="input not found"):
        open_source(tmp_path / "missing.mp4", decoder="cuda")
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all" * 100)
    with pytest.raises(InputError, match="not a video file"):
        open_source(bad, decoder="cuda")
    assert not nvdec_warnings(caplog)  # nothing to say about NVDEC when the input is the problem
    with pytest.raises(ConfigError, match="unknown decoder"):
        open_source(tmp_path / "missing.mp4", decoder="nvdec")


@pytest.mark.parametrize("sw,hw,rgb", [("yuv420p", "nv12", "rgb24"),
                                       ("yuv420p10le", "p010le", "rgb48le")])
def test_nvdec_download_formats_convert_like_the_software_decoders(sw, hw, rgb):
    """NVDEC frames reach system memory as nv12 / p010le: the source's conversion (its flags,
    matrix and range) gives exactly the RGB of the planar formats software decoders return."""
    from av.video.reformatter import ColorRange

    from streamsr.video.color import sws_matrix, sws_range
    from streamsr.video.ffmpeg import TO_RGB_FLAGS

    rgb8 = frames(1, 48, 64, seed=4)[0]
    planar = av.VideoFrame.from_ndarray(rgb8, format="rgb24").reformat(format=sw)
    kw = dict(format=rgb, src_colorspace=sws_matrix("bt709"), src_color_range=sws_range("tv"),
              dst_color_range=ColorRange.JPEG, interpolation=TO_RGB_FLAGS)
    np.testing.assert_array_equal(planar.reformat(format=hw).to_ndarray(**kw),
                                  planar.to_ndarray(**kw))
    assert component_bits(hw) == component_bits(sw)  # deep (16-bit) frames stay deep


def test_decoder_option_reaches_the_source_from_both_commands(monkeypatch, tmp_path):
    import streamsr.api
    import streamsr.bench

    calls = {}
    monkeypatch.setattr(streamsr.api, "upscale",
                        lambda src, dst, options, **kw: calls.update(options=options))
    src = media.make_index_clip(tmp_path / "in.mp4", n=2, size=(16, 16))
    res = CliRunner().invoke(main, ["upscale", str(src), str(tmp_path / "o.mp4"), "-q",
                                    "--decoder", "cuda"])
    assert res.exit_code == 0, res.output
    assert calls["options"].input.decoder == "cuda"
    monkeypatch.undo()

    seen = []
    real = streamsr.api.upscale

    def spy(src, dst, options, **kw):
        seen.append(options.input.decoder)
        return real(src, dst, options, **kw)

    monkeypatch.setattr(streamsr.api, "upscale", spy)
    res = CliRunner().invoke(main, ["bench", "--device", "cpu", "--model", "tiny", "--resolution",
                                    "32x16", "--frames", "2", "--skip", "naive", "--skip", "io",
                                    "--decoder", "auto", "--json", "-"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert seen == ["auto"]
    assert json.loads(res.stdout)["config"]["decoder"] == "auto"
    with pytest.raises(ConfigError):
        streamsr.bench.BenchConfig(decoder="nvdec").check()


@pytest.mark.cuda
@cuda
def test_nvdec_decodes_on_the_gpu_like_software(tmp_path, caplog):
    clip = media.make_index_clip(tmp_path / "in.mp4", n=8, size=(320, 240))
    expected, _ = decode(clip)
    with caplog.at_level(logging.INFO, logger=SOURCE_LOG):
        got, used = decode(clip, decoder="cuda")
    assert used == "cuda", caplog.text
    assert [media.read_index(f) for f in got] == list(range(8))
    worst = max(int(np.abs(a.astype(int) - b.astype(int)).max())
                for a, b in zip(got, expected, strict=True))
    assert worst <= 1, worst


# -- 3. NVENC -----------------------------------------------------------------------------------

def nvenc_opens() -> bool:
    try:
        check_encoder(EncodeOptions(codec="h264_nvenc"))
    except ConfigError:
        return False
    return True


@pytest.mark.parametrize("codec", ["h264_nvenc", "hevc_nvenc", "av1_nvenc"])
def test_nvenc_maps_crf_to_cq_and_keeps_its_preset(codec):
    assert encoder_options(EncodeOptions(codec=codec, crf=23, preset="p5")) == {"cq": "23",
                                                                                 "preset": "p5"}
    # a bitrate replaces constant quality; user options come last and win
    assert encoder_options(EncodeOptions(codec=codec, bitrate="8M", preset="p1")) == {"preset": "p1"}
    opts = encoder_options(EncodeOptions(codec=codec, options={"cq": "30", "rc": "vbr"}))
    assert opts == {"cq": "30", "preset": "medium", "rc": "vbr"}


@pytest.mark.skipif(nvenc_opens(), reason="NVENC opens on this machine")
def test_nvenc_that_cannot_open_is_one_clear_config_error_before_any_work(tmp_path):
    from streamsr.api import upscale

    for codec in ("h264_nvenc", "hevc_nvenc"):
        with pytest.raises(ConfigError) as err:
            check_encoder(EncodeOptions(codec=codec))
        text = str(err.value)
        assert "\n" not in text and f"encoder {codec} cannot be opened" in text
        assert "NVIDIA GPU" in text and "libx264" in text
    # before the input is even looked at: a missing input is not what the run reports
    with pytest.raises(ConfigError, match="h264_nvenc cannot be opened"):
        upscale(tmp_path / "missing.mp4", tmp_path / "o.mp4", codec="h264_nvenc")
    clip = media.make_index_clip(tmp_path / "in.mp4", n=2, size=(16, 16))
    res = CliRunner().invoke(main, ["upscale", str(clip), str(tmp_path / "o.mp4"),
                                    "--codec", "h264_nvenc"])
    assert res.exit_code == 2 and "h264_nvenc cannot be opened" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and not (tmp_path / "o.mp4").exists()
    res = CliRunner().invoke(main, ["bench", "--device", "cpu", "--codec", "hevc_nvenc"])
    assert res.exit_code == 2 and "hevc_nvenc cannot be opened" in res.stderr


def test_encoders_are_trial_opened_once_per_settings(monkeypatch):
    # every encoder is opened once on a small frame (unknown --encoder-opt keys, bitrates and
    # pixel formats it refuses fail there, before any work); settings that opened are not
    # opened again by the sink, the next part or the next file
    import streamsr.video.encoder as sink_mod

    opened = []
    real = av.codec.CodecContext.create

    def counting(name, mode=None):
        opened.append(name)
        return real(name, mode)

    monkeypatch.setattr(sink_mod, "_OPENED", set())
    monkeypatch.setattr(sink_mod.av.codec.CodecContext, "create", counting)
    for _ in range(3):
        assert check_encoder(EncodeOptions(codec="libx264", preset="fast")).name == "libx264"
    check_encoder(EncodeOptions(codec="libx264", preset="slow"))
    assert opened == ["libx264", "libx264"]


def test_bench_codec_and_preset_reach_every_part_that_encodes(monkeypatch):
    import streamsr.api
    import streamsr.bench as bench

    used = []  # (part, codec, preset)
    real_upscale, real_open = streamsr.api.upscale, bench.open_encoder

    def spy_upscale(src, dst, options, **kw):
        used.append(("pipeline", options.encode.codec, options.encode.preset))
        return real_upscale(src, dst, options, **kw)

    def spy_open(path, width, height, rate, enc):
        used.append(("naive/ffmpeg", enc.codec, enc.preset))
        return real_open(path, width, height, rate, enc)

    monkeypatch.setattr(streamsr.api, "upscale", spy_upscale)
    monkeypatch.setattr(bench.encoding, "open_encoder", spy_open)
    args = ["bench", "--device", "cpu", "--model", "tiny", "--resolution", "32x16", "--frames", "2",
            "--io-frames", "2", "--ffmpeg", "pyav", "--codec", "libx264", "--encoder-preset",
            "ultrafast", "--json", "-"]
    res = CliRunner().invoke(main, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    # pipeline and I/O pipeline; naive loop; FFmpeg graph twice (both conversions)
    assert sorted(p for p, _, _ in used) == ["naive/ffmpeg"] * 3 + ["pipeline"] * 2
    assert {(c, p) for _, c, p in used} == {("libx264", "ultrafast")}
    data = json.loads(res.stdout)
    assert data["config"]["encode"]["preset"] == "ultrafast"
    assert data["config"]["codec"] == "libx264" and "preset ultrafast" in res.stderr


@pytest.mark.cuda
@cuda
def test_nvenc_encodes_on_the_gpu(tmp_path):
    from streamsr.api import upscale

    check_encoder(EncodeOptions(codec="h264_nvenc", preset="p4"))
    src = media.make_index_clip(tmp_path / "in.mp4", n=12)
    stats = upscale(src, tmp_path / "o.mp4", model=media.BicubicX4(), device="cuda",
                    codec="h264_nvenc", encoder_preset="p4", crf=20, handle_signals=False)
    out, _, _ = media.decode_all(tmp_path / "o.mp4")
    assert stats.frames == 12 and [media.read_index(f) for f in out] == list(range(12))


# -- 4. Profiling -------------------------------------------------------------------------------

def load_profile_script(monkeypatch):
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "profile_model.py"
    spec = importlib.util.spec_from_file_location("profile_model", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "profile_model", module)  # its dataclass looks itself up
    spec.loader.exec_module(module)
    return module


def test_profile_script_writes_consistent_tables(tmp_path, capsys, monkeypatch):
    prof = load_profile_script(monkeypatch)
    assert prof.family_of("aten::upsample_bilinear2d").startswith("resampling")  # not "linear"
    assert prof.family_of("aten::mkldnn_convolution") == "convolution"
    assert prof.family_of("aten::addmm") == "matmul" and prof.family_of("aten::add_") != "matmul"
    summary = prof.run(prof.parse_args(["--model", "tiny", "--size", "32x16", "--iterations", "1",
                                        "--warmup", "0", "--top", "5", "--out", str(tmp_path)]))
    assert summary["padded"] == [32, 16] and summary["model"]["name"] == "tiny"
    assert sum(f["share"] for f in summary["families"]) == pytest.approx(1.0, abs=1e-6)
    top = [r["self_ms"] for r in summary["top"]]
    assert len(top) == 5 and top == sorted(top, reverse=True)
    stem = "profile_tiny_32x16_float32_cpu"
    assert json.loads((tmp_path / f"{stem}.json").read_text())["top"] == summary["top"]
    assert (tmp_path / f"{stem}_trace.json").stat().st_size > 0
    assert "| op family |" in capsys.readouterr().out
