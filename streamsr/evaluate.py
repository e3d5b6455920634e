"""Table 1 of the paper, on whole test images: our model against the baselines we can compute.

Protocol (as the paper's): the blurry HR frame (cropped to a multiple of 4) is shrunk x4 with the
project's bicubic kernel and rounded to 8 bits, which is the LR input; each method returns a x4
image, rounded to 8 bits as it would be saved, and is compared with the sharp HR frame. PSNR and
SSIM are on RGB in [0, 1] (`streamsr.metrics`). Methods:

- the joint model (`--model`);
- bicubic: the blurry LR input up-sampled x4 (what a plain resize would show);
- MPRNet + bicubic: the official MPRNet deblurs the LR input (padded to a multiple of 8, cropped
  back), then bicubic x4; only when MPRNet weights are given.

LPIPS (AlexNet) is reported only when the `lpips` package and the AlexNet backbone weights are
already on disk: nothing is downloaded; otherwise the column says why it is empty.
"""

from __future__ import annotations

import csv
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from streamsr.data.dataset import PairFolder, to_tensor
from streamsr.errors import OutputError
from streamsr.metrics import psnr, ssim
from streamsr.models import count_parameters
from streamsr.models.mprnet import pad_to_multiple
from streamsr.models.ops import bicubic_uint8, scale_bicubic
from streamsr.models.weights import load_model, load_mprnet

log = logging.getLogger(__name__)


@dataclass
class MethodResult:
    """One table row: means over the images."""

    name: str
    params: int
    psnr: float = 0.0
    ssim: float = 0.0
    lpips: float | None = None
    seconds_per_image: float = 0.0
    images: int = 0


@dataclass
class EvalReport:
    """The table, the LPIPS status, and per-image numbers."""

    data: str
    rows: list[MethodResult]
    lpips_note: str
    per_image: list[dict] = field(default_factory=list)

    def markdown(self) -> str:
        lp = "LPIPS" if not self.lpips_note else f"LPIPS ({self.lpips_note})"
        lines = [f"Evaluation on {self.data} ({self.rows[0].images if self.rows else 0} images, "
                 f"x4, PSNR/SSIM on RGB)", "",
                 f"| Method | PSNR | SSIM | {lp} | #Params | s/image |", "|---|---|---|---|---|---|"]
        for r in self.rows:
            lpips = f"{r.lpips:.5f}" if r.lpips is not None else "n/a"
            lines.append(f"| {r.name} | {r.psnr:.3f} | {r.ssim:.4f} | {lpips} | {r.params:,} | "
                         f"{r.seconds_per_image:.4f} |")
        return "\n".join(lines) + "\n"

    def write(self, out: str | os.PathLike) -> tuple[Path, Path]:
        """eval.md, eval.csv (the table) and eval_per_image.csv under `out`."""
        out = Path(out)
        try:
            out.mkdir(parents=True, exist_ok=True)
            md, table = out / "eval.md", out / "eval.csv"
            md.write_text(self.markdown(), encoding="utf-8")
            with open(table, "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["method", "psnr", "ssim", "lpips", "params", "seconds_per_image", "images",
                            "lpips_note"])
                for r in self.rows:
                    w.writerow([r.name, f"{r.psnr:.6f}", f"{r.ssim:.6f}",
                                "" if r.lpips is None else f"{r.lpips:.6f}", r.params,
                                f"{r.seconds_per_image:.6f}", r.images, self.lpips_note])
            with open(out / "eval_per_image.csv", "w", newline="") as f:
                keys = list(self.per_image[0]) if self.per_image else ["image"]
                w = csv.DictWriter(f, fieldnames=keys)
                w.writeheader()
                w.writerows(self.per_image)
        except OSError as exc:
            raise OutputError(f"cannot write the evaluation tables to {out}: {exc.strerror}") from None
        return md, table


def lpips_metric(device: torch.device) -> tuple[Callable[[Tensor, Tensor], Tensor] | None, str]:
    """LPIPS-Alex if it can run offline, else (None, why not)."""
    try:
        import lpips  # noqa: F401
    except ImportError:
        return None, "the lpips package is not installed"
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    backbone = sorted(hub.glob("alexnet-*.pth")) if hub.is_dir() else []
    if not backbone:
        return None, f"AlexNet weights are not in {hub} (nothing is downloaded)"
    try:
        import lpips

        net = lpips.LPIPS(net="alex", verbose=False).to(device).eval()
    except Exception as exc:  # a broken install must not stop the PSNR/SSIM table
        return None, f"lpips failed to load ({type(exc).__name__})"

    def fn(x: Tensor, y: Tensor) -> Tensor:
        with torch.no_grad():
            return net(x * 2 - 1, y * 2 - 1).flatten()
    return fn, ""


def _quantize(x: Tensor) -> Tensor:
    """What saving the image as 8-bit does: clamp and round to 1/255 steps."""
    return x.clamp(0, 1).mul(255).round().div(255)


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def lr_input(blur: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """The LR input of the protocol: the blurry HR image cropped to a multiple of 4, shrunk x4."""
    h, w = blur.shape[0] // 4 * 4, blur.shape[1] // 4 * 4
    return bicubic_uint8(blur[:h, :w], (h // 4, w // 4)), (h, w)


@torch.no_grad()
def evaluate(data: str | os.PathLike, model: str | os.PathLike | nn.Module,
             mprnet: str | os.PathLike | None = None, out: str | os.PathLike | None = None,
             device: str | None = None, limit: int = 0, progress: bool = False) -> EvalReport:
    """Run the protocol on every pair under `data`; write the tables under `out` when given."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    pairs = PairFolder(data, limit)
    net = model.to(dev).eval() if isinstance(model, nn.Module) else load_model(model, dev)
    methods: dict[str, tuple[Callable[[Tensor], Tensor], int]] = {
        "Joint model (ours)": (lambda x: net(x).hr, count_parameters(net)),
        "Bicubic x4 of blurry LR": (lambda x: scale_bicubic(x, 4), 0),
    }
    if mprnet is not None:
        deblur = load_mprnet(mprnet).to(dev)

        def mprnet_bicubic(x: Tensor) -> Tensor:
            h, w = x.shape[-2:]
            sharp_lr = deblur(pad_to_multiple(x, 8)).stages[0][..., :h, :w].clamp(0, 1)
            return scale_bicubic(sharp_lr, 4)
        methods["MPRNet + bicubic x4"] = (mprnet_bicubic, count_parameters(deblur))
    lpips_fn, note = lpips_metric(dev)
    rows = {name: MethodResult(name, params) for name, (_, params) in methods.items()}
    per_image = []
    for i in tqdm(range(len(pairs)), desc="eval", unit="img", disable=not progress):
        blur, sharp, key = pairs[i]
        lr, (h, w) = lr_input(blur)
        x = to_tensor(lr)[None].to(dev)
        y = to_tensor(sharp[:h, :w])[None].to(dev)
        entry: dict = {"image": key}
        for name, (fn, _) in methods.items():
            if i == 0:
                fn(x)  # warm-up: the first call pays for allocation and kernel selection
            _sync(dev)
            t = time.perf_counter()
            sr = fn(x)
            _sync(dev)
            dt = time.perf_counter() - t
            sr = _quantize(sr.float())
            row = rows[name]
            p, s = float(psnr(sr, y)), float(ssim(sr, y))
            row.psnr += p
            row.ssim += s
            row.seconds_per_image += dt
            row.images += 1
            entry[f"{name} psnr"], entry[f"{name} ssim"] = round(p, 4), round(s, 5)
            if lpips_fn is not None:
                lp = float(lpips_fn(sr, y).mean())
                row.lpips = (row.lpips or 0.0) + lp
                entry[f"{name} lpips"] = round(lp, 5)
        per_image.append(entry)
    for row in rows.values():
        n = max(1, row.images)
        row.psnr, row.ssim, row.seconds_per_image = row.psnr / n, row.ssim / n, row.seconds_per_image / n
        if row.lpips is not None:
            row.lpips /= n
    report = EvalReport(str(data), list(rows.values()), note, per_image)
    if out is not None:
        report.write(out)
    return report


__all__ = ["EvalReport", "MethodResult", "evaluate", "lpips_metric", "lr_input"]
