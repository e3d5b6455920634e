"""Video quality vs ground truth (`streamsr.quality`, `streamsr eval-video`) on lossless clips."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner
from media import write_clip

from streamsr.cli import main
from streamsr.errors import InputError
from streamsr.models.ops import bicubic_uint8
from streamsr.quality import compare_videos

LOSSLESS = dict(codec="libx264rgb", pix_fmt="rgb24", options={"crf": "0", "preset": "ultrafast"})


def _frames(n: int, h: int = 48, w: int = 64, seed: int = 0) -> list[np.ndarray]:
    """Textured frames kept inside [20, 200] so an offset of +/-20 never clips."""
    rng = np.random.default_rng(seed)
    return [rng.integers(20, 201, (h, w, 3), dtype=np.uint8) for _ in range(n)]


def _clip(tmp_path, name: str, frames: list[np.ndarray]):
    return str(write_clip(tmp_path / name, frames, fps=10, **LOSSLESS))


def test_identical_videos_score_the_metric_cap(tmp_path):
    ref = _clip(tmp_path, "ref.mp4", _frames(4))
    r = compare_videos(ref, ref)
    assert r.frames == 4 and (r.width, r.height) == (64, 48)
    assert r.psnr > 100 and r.ssim == pytest.approx(1.0)
    assert r.bicubic_psnr is None and r.psnr_margin is None


def test_uniform_offset_gives_the_predicted_psnr(tmp_path):
    frames = _frames(3)
    ref = _clip(tmp_path, "ref.mp4", frames)
    out = _clip(tmp_path, "out.mp4", [f + 10 for f in frames])
    r = compare_videos(out, ref)
    expected = 10 * math.log10(255**2 / 10**2)  # MSE is exactly 100 on every pixel
    assert r.psnr == pytest.approx(expected, abs=1e-6)
    assert r.psnr_per_frame == pytest.approx([expected] * 3, abs=1e-6)
    assert 0.5 < r.ssim < 1.0
    # a larger offset scores lower: 20 code values -> 6.02 dB less
    worse = compare_videos(_clip(tmp_path, "worse.mp4", [f - 20 for f in frames]), ref)
    assert expected - worse.psnr == pytest.approx(20 * math.log10(2), abs=1e-6)


def test_bicubic_baseline_and_margin(tmp_path):
    lr = _frames(3, 12, 16, seed=4)
    hr = [bicubic_uint8(f, (48, 64)) for f in lr]  # the reference *is* bicubic x4 of the input
    ref = _clip(tmp_path, "ref.mp4", hr)
    inp = _clip(tmp_path, "lr.mp4", lr)
    out = _clip(tmp_path, "out.mp4", [np.clip(f.astype(int) + 5, 0, 255).astype(np.uint8) for f in hr])
    r = compare_videos(out, ref, inp)
    assert r.bicubic_psnr > 100 and r.bicubic_ssim == pytest.approx(1.0)
    assert r.psnr < 40
    assert r.psnr_margin == pytest.approx(r.psnr - r.bicubic_psnr)
    assert r.psnr_margin < 0 and r.ssim_margin < 0


def test_frame_count_mismatch_is_an_input_error(tmp_path):
    frames = _frames(5)
    ref = _clip(tmp_path, "ref.mp4", frames)
    out = _clip(tmp_path, "out.mp4", frames[:4])
    with pytest.raises(InputError, match=r"frame counts differ .*out\.mp4: 4.*ref\.mp4: 5"):
        compare_videos(out, ref)


def test_size_mismatches_are_input_errors(tmp_path):
    ref = _clip(tmp_path, "ref.mp4", _frames(2))
    small = _clip(tmp_path, "small.mp4", _frames(2, 32, 48))
    with pytest.raises(InputError, match="48x32"):
        compare_videos(small, ref)
    wrong_lr = _clip(tmp_path, "lr.mp4", _frames(2, 16, 16))
    with pytest.raises(InputError, match="x4"):
        compare_videos(ref, ref, wrong_lr)
    with pytest.raises(InputError):
        compare_videos(str(tmp_path / "missing.mp4"), ref)


def test_cli_eval_video(tmp_path):
    frames = _frames(2)
    ref = _clip(tmp_path, "ref.mp4", frames)
    out = _clip(tmp_path, "out.mp4", [f + 10 for f in frames])
    lr = _clip(tmp_path, "lr.mp4", [f[::4, ::4] for f in frames])
    res = CliRunner().invoke(main, ["eval-video", out, "--reference", ref, "--input", lr, "--json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.output)
    assert d["frames"] == 2
    assert d["psnr"] == pytest.approx(10 * math.log10(255**2 / 100), abs=1e-6)
    assert d["psnr_margin"] == pytest.approx(d["psnr"] - d["bicubic_psnr"])
    text = CliRunner().invoke(main, ["eval-video", out, "-r", ref, "--no-progress"])
    assert text.exit_code == 0 and "PSNR" in text.output and "bicubic" not in text.output
    bad = CliRunner().invoke(main, ["eval-video", out, "-r", str(tmp_path / "nope.mp4")])
    assert bad.exit_code == 2 and "error" in bad.output and "Traceback" not in bad.output


def test_temporal_consistency_scores_flicker_not_a_static_error(tmp_path):
    frames = _frames(4)
    ref = _clip(tmp_path, "ref.mp4", frames)
    # the same +10 error on every frame: frame-to-frame changes equal the reference's exactly
    steady = compare_videos(_clip(tmp_path, "steady.mp4", [f + 10 for f in frames]), ref)
    assert steady.temporal_psnr > 100
    # +10, -10, +10, -10: every change is off by 20 code values -> MSE 400/255^2 per pair
    flicker = compare_videos(
        _clip(tmp_path, "flicker.mp4", [(f.astype(int) + (10 if i % 2 == 0 else -10)).astype(np.uint8) for i, f in enumerate(frames)]),
        ref)
    assert flicker.psnr == pytest.approx(steady.psnr, abs=1e-6)  # per-frame PSNR cannot tell them apart
    assert flicker.temporal_psnr == pytest.approx(10 * math.log10(255**2 / 400), abs=1e-6)
    assert flicker.bicubic_temporal_psnr is None and flicker.temporal_margin is None


def test_temporal_margin_against_bicubic(tmp_path):
    lr = _frames(3, 12, 16, seed=5)
    hr = [bicubic_uint8(f, (48, 64)) for f in lr]
    ref, inp = _clip(tmp_path, "ref.mp4", hr), _clip(tmp_path, "lr.mp4", lr)
    shimmer = [np.clip(f.astype(int) + (6 if i == 1 else 0), 0, 255).astype(np.uint8)
               for i, f in enumerate(hr)]
    r = compare_videos(_clip(tmp_path, "out.mp4", shimmer), ref, inp)
    assert r.bicubic_temporal_psnr > 100  # bicubic *is* the reference here
    assert r.temporal_psnr < 40 and r.temporal_margin < -60
    assert r.to_dict()["temporal_margin"] == pytest.approx(r.temporal_margin)
    res = CliRunner().invoke(main, ["eval-video", r.output, "-r", ref, "-i", inp, "--no-progress"])
    assert res.exit_code == 0 and "temporal" in res.output


def test_frames_scores_only_the_first_n(tmp_path):
    frames = _frames(4)
    ref = _clip(tmp_path, "ref.mp4", frames)
    # an output made with --frames 2: two frames, the second +10 off
    out = _clip(tmp_path, "out.mp4", [frames[0], frames[1] + 10])
    r = compare_videos(out, ref, frames=2)
    assert r.frames == 2
    assert r.psnr_per_frame[1] == pytest.approx(10 * math.log10(255**2 / 100), abs=1e-6)
    with pytest.raises(InputError, match="frame counts differ"):
        compare_videos(out, ref)  # without it the lengths must match
    res = CliRunner().invoke(main, ["eval-video", out, "-r", ref, "--frames", "2", "--json"])
    assert res.exit_code == 0 and json.loads(res.output)["frames"] == 2
