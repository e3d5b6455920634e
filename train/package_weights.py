"""Turn a finished `lite` run into a weights file with provenance, measuring it on the samples.

    python train/package_weights.py runs/lite/model.safetensors --recipe train/lite_synthetic.toml \
        --note "900 steps, 2 CPU cores" --out lite_candidate.safetensors

Writes `--out` (weights + config + provenance in the metadata; required: nothing is written to
a default place) and prints the per-sample quality table for `streamsr/weights/README.md`: each
bundled sample run through the real pipeline (decode -> model -> encode -> decode) against its
ground truth, next to a bicubic x4 upscale of the same input. Replacing the default weights is
explicit: `--out streamsr/weights/lite.safetensors --overwrite` in a checkout.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

import torch

import streamsr
from streamsr.models.weights import read_metadata, save_model
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
                          "ssim_margin": r.ssim_margin, "temporal_psnr": r.temporal_psnr,
                          "bicubic_temporal_psnr": r.bicubic_temporal_psnr,
                          "temporal_margin": r.temporal_margin}
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("weights", help="the run's model.safetensors")
    ap.add_argument("--recipe", required=True, help="the recipe(s) that made it, for the record")
    ap.add_argument("--note", default="", help="steps, time, hardware: free text for the record")
    ap.add_argument("--out", required=True,
                    help="file to write (a checkout's default weights: "
                         "streamsr/weights/lite.safetensors, with --overwrite)")
    ap.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    args = ap.parse_args()
    out = Path(args.out)
    if out.exists() and not args.overwrite:  # checked before the minutes of measuring
        sys.exit(f"package_weights: error: {out} exists; pass --overwrite to replace it")
    if out.is_dir() or not out.parent.is_dir():
        sys.exit(f"package_weights: error: {out} is a folder or its folder does not exist")
    try:
        model = streamsr.load_model(args.weights)
    except streamsr.StreamsrError as exc:
        sys.exit(f"package_weights: error: {exc}")
    quality = measure(args.weights)
    meta = {k: v for k, v in read_metadata(args.weights).items() if k not in ("format", "config")}
    meta.update({"recipe": args.recipe, "note": args.note,
                 "trained_on": "scikit-image photographs disjoint from the samples "
                               "(train/export_photos.py), shaken on the fly",
                 "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}",
                 "sample_quality": json.dumps(quality, sort_keys=True)})
    save_model(model, out, meta)
    print(f"wrote {out}")
    print("| sample | streamsr PSNR / SSIM | bicubic PSNR / SSIM | margin |")
    print("|---|---|---|---|")
    for clip, q in quality.items():
        print(f"| {clip} | {q['psnr']:.2f} dB / {q['ssim']:.4f} | {q['bicubic_psnr']:.2f} dB / "
              f"{q['bicubic_ssim']:.4f} | {q['psnr_margin']:+.2f} dB / {q['ssim_margin']:+.4f} |")


if __name__ == "__main__":
    main()
