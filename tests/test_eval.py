"""Evaluation protocol: numbers equal an independent computation; baselines; tables; CLI."""

from __future__ import annotations

import csv
import sys
import types
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from skimage import data as skdata
from skimage.metrics import structural_similarity
from torch import nn

from streamsr.cli import main
from streamsr.evaluate import evaluate, lpips_metric
from streamsr.models import TINY, DeblurSR, MPRNet
from streamsr.models.mprnet import pad_to_multiple
from streamsr.models.ops import bicubic_uint8, resize_bicubic
from streamsr.models.weights import load_weights, save_model

MOTION = np.zeros((7, 7), np.float32)
MOTION[:, 3] = 1 / 7  # vertical shake


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _write(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> tuple[Path, list[tuple[np.ndarray, np.ndarray]]]:
    """A blur/ + sharp/ folder of two photos with odd sizes (not multiples of 4)."""
    root = tmp_path_factory.mktemp("evalpairs")
    out = []
    for name, size in (("coffee", (103, 66)), ("chelsea", (90, 77))):
        sharp = cv2.resize(getattr(skdata, name)(), size, interpolation=cv2.INTER_AREA)
        blur = cv2.filter2D(sharp, -1, MOTION, borderType=cv2.BORDER_REFLECT)
        _write(root / "sharp" / f"{name}.png", sharp)
        _write(root / "blur" / f"{name}.png", blur)
        out.append((blur, sharp))
    return root, [out[1], out[0]]  # sorted by name: chelsea, coffee


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> Path:
    torch.manual_seed(3)
    path = tmp_path_factory.mktemp("w") / "tiny.safetensors"
    save_model(DeblurSR(TINY), path, {"source": "test"})
    return path


def _psnr_np(a: np.ndarray, b: np.ndarray) -> float:
    """Independent PSNR of two uint8 images, in float64 on [0, 1]."""
    mse = np.mean((a.astype(np.float64) / 255 - b.astype(np.float64) / 255) ** 2)
    return float(10 * np.log10(1.0 / mse))


def _to_uint8(t: torch.Tensor) -> np.ndarray:
    return (t[0].clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()


def _reference(blur: np.ndarray, sharp: np.ndarray, sr_fn) -> tuple[float, float]:
    h, w = blur.shape[0] // 4 * 4, blur.shape[1] // 4 * 4
    lr = bicubic_uint8(blur[:h, :w], (h // 4, w // 4))
    x = torch.from_numpy(lr).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        out = _to_uint8(sr_fn(x))
    assert out.shape == (h, w, 3)
    ref = sharp[:h, :w]
    return _psnr_np(out, ref), structural_similarity(
        out.astype(np.float64) / 255, ref.astype(np.float64) / 255, gaussian_weights=True,
        sigma=1.5, use_sample_covariance=False, data_range=1.0, channel_axis=2)


def test_eval_matches_independent_psnr_and_writes_tables(pairs, tiny_weights, tmp_path):
    root, images = pairs
    report = evaluate(root, tiny_weights, out=tmp_path / "ev", device="cpu")
    rows = {r.name: r for r in report.rows}
    assert set(rows) == {"Joint model (ours)", "Bicubic x4 of blurry LR"}
    net = DeblurSR(TINY)
    load_weights(net, tiny_weights).eval()
    ours = [_reference(b, s, lambda x: net(x).hr) for b, s in images]
    bicubic = [_reference(b, s, lambda x: resize_bicubic(x, (x.shape[2] * 4, x.shape[3] * 4)))
               for b, s in images]
    assert rows["Joint model (ours)"].psnr == pytest.approx(np.mean([p for p, _ in ours]), abs=1e-6)
    assert rows["Bicubic x4 of blurry LR"].psnr == pytest.approx(np.mean([p for p, _ in bicubic]), abs=1e-6)
    assert rows["Joint model (ours)"].ssim == pytest.approx(np.mean([s for _, s in ours]), abs=1e-6)
    assert rows["Bicubic x4 of blurry LR"].ssim == pytest.approx(np.mean([s for _, s in bicubic]), abs=1e-6)
    assert rows["Joint model (ours)"].params == sum(p.numel() for p in net.parameters())
    assert rows["Bicubic x4 of blurry LR"].params == 0
    assert all(r.images == 2 for r in report.rows)
    assert all(r.seconds_per_image > 0 for r in report.rows)  # every method was timed
    # LPIPS: either computed, or the column says why not (never downloaded)
    try:
        import lpips  # noqa: F401
    except ImportError:
        assert "not installed" in report.lpips_note
        assert all(r.lpips is None for r in report.rows)
    md = (tmp_path / "ev" / "eval.md").read_text()
    assert "| Joint model (ours) |" in md and f"{rows['Joint model (ours)'].psnr:.3f}" in md
    with open(tmp_path / "ev" / "eval.csv", newline="") as f:
        table = {r["method"]: r for r in csv.DictReader(f)}
    assert float(table["Bicubic x4 of blurry LR"]["psnr"]) == pytest.approx(rows["Bicubic x4 of blurry LR"].psnr, abs=1e-5)
    with open(tmp_path / "ev" / "eval_per_image.csv", newline="") as f:
        assert [r["image"] for r in csv.DictReader(f)] == ["chelsea", "coffee"]


class _FakeLPIPS(nn.Module):
    """Stands in for `lpips.LPIPS`: a known distance (mean |a - b| / 2 on [-1, 1] inputs, i.e. the
    mean absolute error on [0, 1]) and the same output shape, N x 1 x 1 x 1."""

    made: list[str] = []

    def __init__(self, net: str = "alex", verbose: bool = True) -> None:
        super().__init__()
        hub = Path(torch.hub.get_dir()) / "checkpoints"
        torch.load(next(hub.glob("alexnet-*.pth")), weights_only=True)  # as the real one would
        _FakeLPIPS.made.append(net)
        self.anchor = nn.Parameter(torch.zeros(()))

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        assert a.min() >= -1 and a.max() <= 1 and a.min() < 0  # scaled to [-1, 1] by the caller
        return (a - b).abs().mean(dim=(1, 2, 3), keepdim=True) / 2 + self.anchor


@pytest.fixture
def fake_lpips(monkeypatch, tmp_path) -> Path:
    """A fake `lpips` package and an empty TORCH_HOME; returns the hub checkpoints folder."""
    module = types.ModuleType("lpips")
    module.LPIPS = _FakeLPIPS
    monkeypatch.setitem(sys.modules, "lpips", module)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    _FakeLPIPS.made = []
    return tmp_path / "torch_home" / "hub" / "checkpoints"


def _mean_abs_error(blur: np.ndarray, sharp: np.ndarray, sr_fn) -> float:
    h, w = blur.shape[0] // 4 * 4, blur.shape[1] // 4 * 4
    x = torch.from_numpy(bicubic_uint8(blur[:h, :w], (h // 4, w // 4))).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        out = _to_uint8(sr_fn(x))
    return float(np.mean(np.abs(out.astype(np.float64) - sharp[:h, :w].astype(np.float64)) / 255))


def test_lpips_column_from_the_package_when_its_weights_are_on_disk(pairs, tiny_weights, tmp_path,
                                                                    fake_lpips):
    root, images = pairs
    fake_lpips.mkdir(parents=True)
    torch.save({"features.0.weight": torch.zeros(1)}, fake_lpips / "alexnet-owt-7be5be79.pth")
    report = evaluate(root, tiny_weights, out=tmp_path / "ev", device="cpu")
    assert _FakeLPIPS.made == ["alex"] and report.lpips_note == ""
    net = DeblurSR(TINY)
    load_weights(net, tiny_weights).eval()
    want = {"Joint model (ours)": lambda x: net(x).hr,
            "Bicubic x4 of blurry LR": lambda x: resize_bicubic(x, (x.shape[2] * 4, x.shape[3] * 4))}
    rows = {r.name: r for r in report.rows}
    for name, fn in want.items():
        per_image = [_mean_abs_error(b, s, fn) for b, s in images]
        assert rows[name].lpips == pytest.approx(np.mean(per_image), abs=1e-5)
        assert [e[f"{name} lpips"] for e in report.per_image] == pytest.approx(per_image, abs=2e-5)
    assert rows["Joint model (ours)"].lpips != rows["Bicubic x4 of blurry LR"].lpips
    assert "| LPIPS |" in report.markdown()
    with open(tmp_path / "ev" / "eval.csv", newline="") as f:
        table = {r["method"]: r for r in csv.DictReader(f)}
    for name, row in rows.items():
        assert float(table[name]["lpips"]) == pytest.approx(row.lpips, abs=1e-6)
        assert table[name]["lpips_note"] == ""


def test_lpips_column_says_why_it_is_empty(pairs, tiny_weights, fake_lpips, monkeypatch):
    root, _ = pairs
    fn, note = lpips_metric(torch.device("cpu"))  # the package, but no AlexNet weights
    assert fn is None and _FakeLPIPS.made == []  # not even tried: it would download them
    assert note == f"AlexNet weights are not in {fake_lpips} (nothing is downloaded)"
    report = evaluate(root, tiny_weights, device="cpu", limit=1)
    assert report.lpips_note == note and all(r.lpips is None for r in report.rows)
    assert f"LPIPS ({note})" in report.markdown() and "| n/a |" in report.markdown()

    fake_lpips.mkdir(parents=True)
    (fake_lpips / "alexnet-owt-7be5be79.pth").write_bytes(b"torn download")
    fn, note = lpips_metric(torch.device("cpu"))  # weights unreadable: the table still comes
    assert fn is None and note.startswith("lpips failed to load (")

    monkeypatch.setitem(sys.modules, "lpips", None)  # `import lpips` raises ImportError
    assert lpips_metric(torch.device("cpu")) == (None, "the lpips package is not installed")


def test_mprnet_baseline(pairs, tiny_weights, tmp_path):
    root, images = pairs
    torch.manual_seed(0)
    mpr = MPRNet().eval()
    ckpt = tmp_path / "model_deblurring.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in mpr.state_dict().items()}}, ckpt)
    report = evaluate(root, tiny_weights, mprnet=ckpt, device="cpu", limit=1)
    row = next(r for r in report.rows if r.name.startswith("MPRNet"))
    assert row.params == 20_127_073 and row.images == 1
    assert all(r.seconds_per_image > 0 for r in report.rows)

    def mprnet_then_bicubic(x):
        h, w = x.shape[-2:]
        y = mpr(pad_to_multiple(x, 8)).stages[0][..., :h, :w].clamp(0, 1)
        return resize_bicubic(y, (4 * h, 4 * w))
    p, s = _reference(*images[0], mprnet_then_bicubic)
    assert row.psnr == pytest.approx(p, abs=1e-4) and row.ssim == pytest.approx(s, abs=1e-5)


def test_cli_prepare_eval_and_errors(pairs, tiny_weights, tmp_path):
    root, _ = pairs
    runner = CliRunner()
    res = runner.invoke(main, ["eval", "--data", str(root), "--model", str(tiny_weights), "--out",
                               str(tmp_path / "ev"), "--no-progress", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "Bicubic x4 of blurry LR" in res.output and (tmp_path / "ev" / "eval.csv").exists()
    res = runner.invoke(main, ["prepare", "gopro", "--src", str(root), "--dst", str(tmp_path / "p"),
                               "--patch", "32", "--stride", "16", "--no-progress"])
    assert res.exit_code == 0, res.output
    # 90x77 -> 4 x 3 crops; 103x66 -> 5 x 3 crops; a flat folder is one `train` split
    assert "train 27" in res.output
    res = runner.invoke(main, ["train", "--data", str(tmp_path / "p"), "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "--recipe is required" in res.output
    recipe = str(Path(__file__).resolve().parent.parent / "train" / "lite_synthetic.toml")
    res = runner.invoke(main, ["train", "--recipe", recipe, "--data", str(tmp_path / "p"),
                               "--out", str(tmp_path / "r"), "--set", "bogus=1"])
    assert res.exit_code == 2 and "unknown recipe key 'bogus'" in res.output
    assert "Traceback" not in res.output
    res = runner.invoke(main, ["eval", "--data", str(tmp_path), "--model", str(tiny_weights)])
    assert res.exit_code == 2 and "no blurry/sharp image pairs" in res.output
