"""Tiling: the tile plan covers every pixel once, tiles stitch back to the whole frame."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_engine import LocalNet, frames, psnr
from torch import nn

from streamsr.inference.engine import Engine, EngineConfig
from streamsr.inference.tiling import plan_axis, run_tiled
from streamsr.models import TINY, DeblurSR


@pytest.mark.parametrize("size,tile,overlap", [(96, 32, 16), (200, 48, 16), (64, 32, 8), (40, 64, 16)])
def test_tile_plan_covers_every_pixel_once_with_margin(size, tile, overlap):
    spans = plan_axis(size, tile, overlap)
    assert spans[0].keep_start == 0 and spans[-1].keep_stop == size
    for a, b in zip(spans, spans[1:], strict=False):
        assert a.keep_stop == b.keep_start  # a partition
    for s in spans:
        assert s.start % 8 == 0 and s.stop - s.start == spans[0].stop - spans[0].start
        if s.keep_start > 0:
            assert s.keep_start - s.start >= overlap
        if s.keep_stop < size:
            assert s.stop - s.keep_stop >= overlap


@pytest.mark.parametrize("feather", [0, 16])
def test_tiled_equals_untiled_for_a_local_model(feather):
    model = LocalNet().eval()
    x = torch.rand(2, 3, 96, 136, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        whole = model(x)
        tiled = run_tiled(model, x, tile=32, overlap=16, feather=feather, scale=4, tiles_per_call=3)
    assert tiled.shape == whole.shape
    assert whole.std() > 0.1  # the stand-in's output is not flat
    assert (tiled - whole).abs().max() < 1e-4


def test_too_small_overlap_shows_seams():
    """The equivalence test can fail: without overlap the 4-px receptive field shows."""
    model = LocalNet().eval()
    x = torch.rand(1, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        diff = (run_tiled(model, x, tile=32, overlap=0, scale=4) - model(x)).abs().max()
    assert diff > 1e-3


def test_engine_tiles_give_the_untiled_result_for_a_local_model():
    x = frames(2, 70, 90, seed=5)
    whole = Engine(LocalNet(), EngineConfig(device="cpu", tile=0)).upscale_batch(x)
    engine = Engine(LocalNet(), EngineConfig(device="cpu", tile=32))
    tiled = engine.upscale_batch(x)
    assert engine._plan(70, 90)[1] == 32
    assert tiled.shape == whole.shape == (2, 280, 360, 3)
    assert np.abs(tiled.astype(int) - whole.astype(int)).max() <= 1  # float ties at .5 only
    assert np.mean(tiled == whole) > 0.999


def test_real_model_tiles_stay_close_to_the_whole_frame():
    """MPRNet is not local, so its tiles only approximate the whole frame: bound the PSNR.

    Stages 1-2 cut every input into quarters/halves at its centre lines, so each tile carries
    patch seams of its own where the whole frame has none (and vice versa); the receptive field
    (U-Net at 1/4 scale, 3 ORBs, 8 residual blocks) is far wider than any overlap; channel
    attention pools globally. With a briefly trained tiny model we measured 41.7 dB for 32-px
    tiles / 16-px overlap and 48 dB for 48 / 32 (cross-faded), errors peaking at the centre
    lines of tiles and frame. Random weights give a flat image, so they are scaled up here
    (x1.5) to get a lively output (std ~0.1) whose differences mean something.
    """
    torch.manual_seed(0)
    model = DeblurSR(TINY)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.mul_(1.5)
    x = frames(1, 6, 8, seed=2)
    x = np.ascontiguousarray(np.kron(x, np.ones((1, 12, 12, 1), np.uint8)))  # 72x96, blocky
    whole = Engine(model, EngineConfig(device="cpu", tile=0)).upscale_batch(x)
    tiled = Engine(model, EngineConfig(device="cpu", tile=32, tile_overlap=16)).upscale_batch(x)
    assert tiled.shape == whole.shape
    assert whole.std() > 10
    assert psnr(tiled, whole) > 30
