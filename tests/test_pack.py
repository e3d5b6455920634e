"""Frames handed to the encoder as yuv420p planes made in torch (streamsr/inference/pack.py)."""

from __future__ import annotations

import av
import media
import numpy as np
import pytest
import torch
from av.video.reformatter import ColorRange, Colorspace, Interpolation
from skimage import data

from streamsr.api import upscale
from streamsr.inference.engine import Engine, EngineConfig
from streamsr.inference.pack import Yuv420, to_rgb24, to_yuv420p
from streamsr.video.ffmpeg import FROM_RGB_FLAGS, TO_RGB_FLAGS

SWS = {"smpte170m": Colorspace.ITU601, "bt709": Colorspace.ITU709, "bt2020nc": Colorspace.BT2020}


def _float(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255.0


def _planes(rgb: np.ndarray, target: Yuv420) -> np.ndarray:
    return to_yuv420p(_float(rgb), target)[0].numpy()


@pytest.mark.parametrize("matrix, rng", [("smpte170m", "tv"), ("bt709", "tv"), ("bt709", "pc"),
                                         ("bt2020nc", "tv")])
def test_matches_swscale_accurate_area_conversion(matrix, rng):
    rgb = np.ascontiguousarray(data.astronaut()[100:300, 60:380])
    ours = _planes(rgb, Yuv420.for_matrix(matrix, rng))
    ref = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(
        format="yuv420p", dst_colorspace=SWS[matrix],
        dst_color_range=ColorRange.JPEG if rng == "pc" else ColorRange.MPEG,
        interpolation=Interpolation.AREA | Interpolation.ACCURATE_RND).to_ndarray()
    assert ours.shape == ref.shape == (300, 320)
    diff = np.abs(ours.astype(int) - ref)
    assert diff[:200].max() <= 1  # luma: one code value at most (rounding)
    assert diff[200:].mean() < 0.6 and diff[200:].max() <= 3  # chroma: 2x2 means, sited alike


def test_reference_colours_in_both_ranges():
    # BT.601: white is Y 235 (pc 255), black Y 16 (pc 0); red has Cr = 128 + 112 = 240 and
    # Cb = 128 - 112 * 0.299 / 0.886 = 90.2; chroma planes follow luma as Cb then Cr
    frame = np.zeros((4, 6, 3), np.uint8)
    frame[:2, :2] = 255
    frame[2:, 2:4] = (255, 0, 0)
    tv = _planes(frame, Yuv420.for_matrix("smpte170m", "tv"))
    pc = _planes(frame, Yuv420.for_matrix("smpte170m", "pc"))
    assert tv[0, 0] == 235 and tv[0, 5] == 16 and pc[0, 0] == 255 and pc[0, 5] == 0
    assert tv[2, 2] == round(16 + 219 * 0.299)  # red's luma, 81
    cb, cr = tv[4:5].reshape(-1)[:6].reshape(2, 3), tv[5:6].reshape(-1)[:6].reshape(2, 3)
    assert cb[0, 0] == 128 and cr[0, 0] == 128  # white block: no colour
    assert cr[1, 1] == 240 and cb[1, 1] == 90


def test_round_trip_through_a_decoder_keeps_the_picture():
    rgb = np.ascontiguousarray(data.coffee()[:240, :320])
    planes = _planes(rgb, Yuv420.for_matrix("bt709", "tv"))
    back = av.VideoFrame.from_ndarray(planes, format="yuv420p").to_ndarray(
        format="rgb24", src_colorspace=Colorspace.ITU709, src_color_range=ColorRange.MPEG,
        dst_color_range=ColorRange.JPEG, interpolation=TO_RGB_FLAGS)
    mse = np.mean((back.astype(float) - rgb) ** 2)
    assert 10 * np.log10(255**2 / mse) > 38  # only 4:2:0 colour is lost


def test_rgb24_rounds_and_clamps_like_before():
    y = torch.tensor([-0.2, 0.0, 0.3, 0.5 / 255, 1.5 / 255, 1.0, 1.7]).view(1, 1, 1, 7).expand(1, 3, 1, 7).clone()
    out = to_rgb24(y)
    assert out.shape == (1, 1, 7, 3) and out.dtype == torch.uint8
    assert out[0, 0, :, 0].tolist() == [0, 0, 76, 0, 2, 255, 255]  # round half to even, clamp


def test_odd_sizes_and_unknown_matrices_are_refused():
    for h, w in ((5, 6), (6, 5)):
        with pytest.raises(ValueError):
            to_yuv420p(torch.rand(1, 3, h, w), Yuv420.for_matrix("bt709", "tv"))
    assert Yuv420.for_matrix("smpte240m", "tv") is None and Yuv420.for_matrix("bt709", "?") is None


class _Doubler(torch.nn.Module):
    scale = 4

    def forward(self, x):
        return torch.nn.functional.interpolate(x, scale_factor=4, mode="bilinear", align_corners=False)


def test_engine_hands_planes_when_asked():
    engine = Engine(_Doubler(), EngineConfig(device="cpu", batch=2))
    frames = np.stack([np.ascontiguousarray(data.astronaut()[:48, :64])] * 2)
    rgb = engine.upscale_batch(frames)
    target = Yuv420.for_matrix("bt709", "tv")
    planes = engine.upscale_batch(frames, yuv420=target)
    assert rgb.shape == (2, 192, 256, 3) and planes.shape == (2, 288, 256)
    ref = _planes(rgb[1], target)  # planes of the quantised RGB: within rounding
    assert np.abs(planes[1].astype(int) - ref).max() <= 2
    # and, independently, what the sink's swscale fallback makes of the RGB frame
    sws = av.VideoFrame.from_ndarray(rgb[1], format="rgb24").reformat(
        format="yuv420p", dst_colorspace=Colorspace.ITU709, dst_color_range=ColorRange.MPEG,
        interpolation=FROM_RGB_FLAGS).to_ndarray()
    diff = np.abs(planes[1].astype(int) - sws)
    assert diff[:192].max() <= 1 and diff[192:].mean() < 1.0


def test_pipeline_output_is_the_same_either_way(tmp_path, monkeypatch):
    src = media.make_index_clip(tmp_path / "in.mp4", n=6)
    upscale(src, tmp_path / "yuv.mp4", model=_Doubler(), device="cpu")
    import streamsr.video.sink as sink
    monkeypatch.setattr(sink.VideoSink, "yuv420", property(lambda self: None))
    upscale(src, tmp_path / "rgb.mp4", model=_Doubler(), device="cpu")

    def frames(p):
        with av.open(str(p)) as c:
            return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    a, b = frames(tmp_path / "yuv.mp4"), frames(tmp_path / "rgb.mp4")
    assert a.shape == b.shape and len(a) == 6
    mse = np.mean((a.astype(float) - b) ** 2)
    assert 10 * np.log10(255**2 / mse) > 40
    assert [media.read_index(f) for f in a[:, ::4, ::4]] == list(range(6))
