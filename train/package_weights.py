"""Turn a finished `lite` run into the bundled default weights, measuring them on the samples.

    python train/package_weights.py runs/lite/model.safetensors --recipe train/lite_synthetic.toml \
        --note "900 steps, 2 CPU cores"

Writes `streamsr/weights/lite.safetensors` (weights + config + provenance in the metadata) and
prints the per-sample quality table for `streamsr/weights/README.md`: each bundled sample run
through the real pipeline (decode -> model -> encode -> decode) against its ground truth, next to
a bicubic x4 upscale of the same input.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from pathlib import Path

import torch

import streamsr
from streamsr.models.weights import BUNDLED, read_metadata, save_model
from streamsr.quality import compare_videos

ROOT = Path(__file__).resolve().parents[1]
CLIPS = ("dashcam", "handheld")


def measure(weights: str | Path) -> dict[str, dict[str, float]]:
    """Per-clip PSNR/SSIM of the model's pipeline output and of bicubic, vs ground truth."""
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for clip in CLIPS:
            src, gt = ROOT / "samples" / f"{clip}.mp4", ROOT / "samples" / f"{clip}_gt.mp4"
            out = Path(tmp) / f"{clip}.mp4"
            streamsr.upscale(str(src), str(out), model=str(weights))
            r = compare_videos(str(out), str(gt), str(src))
            rows[clip] = {"psnr": r.psnr, "ssim": r.ssim, "bicubic_psnr": r.bicubic_psnr,
                          "bicubic_ssim": r.bicubic_ssim, "psnr_margin": r.psnr_margin,
                          "ssim_margin": r.ssim_margin}
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("weights", help="the run's model.safetensors")
    ap.add_argument("--recipe", required=True, help="the recipe(s) that made it, for the record")
    ap.add_argument("--note", default="", help="steps, time, hardware: free text for the record")
    ap.add_argument("--out", default=str(BUNDLED["lite"]))
    args = ap.parse_args()
    model = streamsr.load_model(args.weights)
    quality = measure(args.weights)
    meta = {k: v for k, v in read_metadata(args.weights).items() if k not in ("format", "config")}
    meta.update({"recipe": args.recipe, "note": args.note,
                 "trained_on": "scikit-image photographs disjoint from the samples "
                               "(train/export_photos.py), shaken on the fly",
                 "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}",
                 "sample_quality": json.dumps(quality, sort_keys=True)})
    save_model(model, args.out, meta)
    print(f"wrote {args.out}")
    print("| sample | streamsr PSNR / SSIM | bicubic PSNR / SSIM | margin |")
    print("|---|---|---|---|")
    for clip, q in quality.items():
        print(f"| {clip} | {q['psnr']:.2f} dB / {q['ssim']:.4f} | {q['bicubic_psnr']:.2f} dB / "
              f"{q['bicubic_ssim']:.4f} | {q['psnr_margin']:+.2f} dB / {q['ssim_margin']:+.4f} |")


if __name__ == "__main__":
    main()
