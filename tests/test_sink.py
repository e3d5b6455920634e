"""The video sink: encoder settings checked before any work, HEVC tagged for Apple's players,
nothing left behind by a run that fails before its first frame."""

from __future__ import annotations

from pathlib import Path

import av
import media
import pytest
import torch
from click.testing import CliRunner

from streamsr.api import upscale
from streamsr.cli import main
from streamsr.errors import ConfigError
from streamsr.video.encoder import EncodeOptions, check_encoder, parse_bitrate


class Counting(media.BicubicX4):
    """Bicubic x4 that counts the frames it is given (the engine's sizing runs included)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return super().forward(x)


@pytest.fixture
def src(tmp_path) -> Path:
    return media.make_index_clip(tmp_path / "in.mp4", n=4, size=(32, 24))


@pytest.mark.parametrize("settings, words", [
    (dict(bitrate="99999999999999999999G"), "more than any encoder takes"),
    (dict(bitrate="9" * 400), "more than any encoder takes"),
    (dict(codec="libsvtav1", bitrate="1G", crf=None), "libsvtav1 refuses these settings"),
    (dict(pix_fmt="foo"), "unknown pixel format 'foo'"),
    (dict(codec="rawvideo", pix_fmt="foo"), "unknown pixel format 'foo'"),  # no format list
    (dict(pix_fmt="yuv420p10le", codec="mpeg4"), "cannot write pixel format"),
    (dict(encoder_options={"bogus": "1"}), "has no option 'bogus'"),
    (dict(encoder_options={"crf": "18", "tune": "film", "x264opts": "keyint=30", "no-such": "2"}),
     "has no option 'no-such'"),
    (dict(encoder_preset="warpspeed"), "preset/tune warpspeed"),
])
def test_settings_the_encoder_refuses_are_one_line_before_any_work(tmp_path, src, settings,
                                                                      words):
    model = Counting()
    out = tmp_path / "out.mp4"
    with pytest.raises(ConfigError, match=words):
        upscale(src, out, model=model, device="cpu", **settings)
    assert model.calls == 0 and not out.exists()


def test_encoder_options_it_knows_still_reach_it():
    check_encoder(EncodeOptions(options={"tune": "film", "x264-params": "keyint=30", "g": "12"}))
    check_encoder(EncodeOptions(codec="libx265", options={"x265-params": "log-level=error"}))
    assert parse_bitrate("2500k") == 2_500_000 and parse_bitrate("8M") == 8_000_000


def test_the_cli_says_which_option_is_unknown(tmp_path, src):
    result = CliRunner().invoke(main, ["upscale", str(src), str(tmp_path / "o.mp4"), "--device",
                                       "cpu", "--encoder-opt", "crf_typo=20"])
    lines = [x for x in result.stderr.splitlines() if x.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.stderr
    assert "has no option 'crf_typo'" in lines[0] and "Traceback" not in result.stderr
    assert not (tmp_path / "o.mp4").exists()


@pytest.mark.parametrize("name", ["out.mp4", "out.mov"])
def test_hevc_in_mp4_and_mov_is_tagged_hvc1(tmp_path, src, name):
    out = tmp_path / name
    upscale(src, out, model=media.BicubicX4(), device="cpu", codec="libx265",
            encoder_preset="ultrafast", encoder_options={"x265-params": "log-level=error"})
    with av.open(str(out)) as c:
        assert c.streams.video[0].codec_context.codec_tag == "hvc1"
        assert sum(1 for _ in c.decode(video=0)) == 4


class OutOfMemory(media.BicubicX4):
    """Runs out of memory on every call after the first `works` frames of the clip."""

    def __init__(self, works: int, exc: type[Exception]) -> None:
        super().__init__()
        self.works, self.exc, self.seen = works, exc, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] == (24, 32):  # the clip's frames (the engine also tries other sizes)
            self.seen += x.shape[0]
            if self.seen > self.works:
                raise self.exc("CUDA out of memory. Tried to allocate 20.00 GiB")
        return super().forward(x)


@pytest.mark.parametrize("exc", [torch.OutOfMemoryError, RuntimeError])
def test_out_of_memory_at_the_smallest_tile_leaves_no_unplayable_file(tmp_path, exc):
    src = media.make_index_clip(tmp_path / "in.mp4", n=12, size=(32, 24))
    out = tmp_path / "out.mp4"
    with pytest.raises(ConfigError, match="out of memory even with"):
        upscale(src, out, model=OutOfMemory(0, exc), device="cpu", batch=2,
                encoder_preset="ultrafast")
    assert not out.exists()  # no frame was done: nothing (an MP4 without frames does not open)

    with pytest.raises(ConfigError, match="out of memory even with"):
        upscale(src, out, model=OutOfMemory(5, exc), device="cpu", batch=2,
                encoder_preset="ultrafast")
    frames, _, _ = media.decode_all(out)  # the frames done before: a playable file, in order
    assert [media.read_index(f) for f in frames] == [0, 1, 2, 3]


def test_out_of_memory_through_the_cli_is_one_line(tmp_path, monkeypatch):
    import streamsr.models.weights as weights

    src = media.make_index_clip(tmp_path / "in.mp4", n=6, size=(32, 24))
    monkeypatch.setattr(weights, "load_model",
                        lambda name, device="cpu": OutOfMemory(0, torch.OutOfMemoryError))
    out = tmp_path / "out.mkv"
    result = CliRunner().invoke(main, ["upscale", str(src), str(out), "--model", "x", "--device",
                                       "cpu", "--encoder-preset", "ultrafast"])
    lines = [x for x in result.stderr.splitlines() if x.startswith("streamsr: error")]
    assert result.exit_code == 2 and len(lines) == 1 and "out of memory" in lines[0], result.stderr
    assert "Traceback" not in result.stderr and not out.exists()
