"""`streamsr prepare gopro|frames|synthetic`, `streamsr train` and `streamsr eval`."""

from __future__ import annotations

from pathlib import Path

import click

from streamsr.cli import common_options, main, threads_option
from streamsr.errors import ConfigError

_PATCH = [click.option("--patch", default=256, show_default=True, help="HR crop size (pixels)."),
          click.option("--stride", default=128, show_default=True, help="HR crop stride (pixels)."),
          click.option("--scale", default=4, show_default=True, help="Down-sampling factor for LR."),
          click.option("--workers", default=0, show_default=True,
                       help="Processes that crop images; 0 = one per CPU core, at most 8.")]


def _crop_options(fn):
    for opt in reversed(_PATCH):
        fn = opt(fn)
    return fn


def _workers(n: int) -> int:
    import os

    return n if n > 0 else min(8, os.cpu_count() or 1)


def _settings(patch: int, stride: int, scale: int):
    from streamsr.data.triplets import CropSettings

    s = CropSettings(patch, stride, scale)
    s.check()
    return s


def _report(summary) -> None:
    splits = ", ".join(f"{k} {v}" for k, v in sorted(summary.per_split.items())) or "none"
    click.echo(f"{summary.dst}: {summary.images_done} images cropped, {summary.images_skipped} "
               f"already done; triplets: {splits}")


@main.group()
def prepare() -> None:
    """Make training triplets [L_blur, L, H] (resumable: re-running skips finished images)."""


@prepare.command("gopro")
@click.option("--src", required=True, type=click.Path(file_okay=False), help="GOPRO_Large folder.")
@click.option("--dst", required=True, type=click.Path(file_okay=False), help="Output folder.")
@_crop_options
@click.option("--split", "splits", multiple=True, default=("train", "test"), show_default=True,
              help="Splits to prepare (repeatable).")
@common_options()
def prepare_gopro_cmd(src, dst, patch, stride, scale, workers, splits, progress: bool) -> None:
    """Crop GOPRO_Large (<split>/<sequence>/{blur,sharp}/*.png) into triplets."""
    from streamsr.data.prepare import prepare_gopro

    _report(prepare_gopro(src, dst, _settings(patch, stride, scale), splits, progress,
                          _workers(workers)))


@prepare.command("frames")
@click.option("--video", required=True, type=click.Path(exists=True),
              help="High-frame-rate video file, or a folder of frames.")
@click.option("--average", required=True, type=int,
              help="Frames averaged per blurry image (odd; GOPRO used 7-13 at 240 fps).")
@click.option("--dst", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--val-fraction", default=0.1, show_default=True,
              help="Share of pairs, from the end of the clip, held out as the `test` split.")
@click.option("--max-pairs", type=int, default=None, help="Stop after this many pairs.")
@_crop_options
@common_options()
def prepare_frames_cmd(video, average, dst, val_fraction, max_pairs, patch, stride, scale,
                       workers, progress: bool) -> None:
    """Blurry/sharp pairs from your own footage (frames averaged in linear light), then triplets."""
    from streamsr.data.prepare import prepare_frames

    _report(prepare_frames(video, dst, average, _settings(patch, stride, scale), val_fraction,
                           max_pairs, progress, _workers(workers)))
    click.echo(f"whole-image pairs for `streamsr eval`: {Path(dst) / 'pairs' / 'test'}")


@prepare.command("synthetic")
@click.option("--images", required=True, type=click.Path(exists=True, file_okay=False),
              help="Folder of sharp still images (searched recursively).")
@click.option("--dst", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--variants", default=1, show_default=True, help="Blurred versions per image.")
@click.option("--seed", default=0, show_default=True, help="Seed of the shake trajectories.")
@click.option("--val-fraction", default=0.1, show_default=True,
              help="Share of images held out as the `test` split.")
@click.option("--size", type=int, default=None, help="Random square crop of each image first (px).")
@click.option("--max-shift", default=24.0, show_default=True, help="Longest shake path (px).")
@click.option("--max-angle", default=0.6, show_default=True, help="Largest roll (degrees).")
@click.option("--exposures", default=13, show_default=True, help="Poses averaged per exposure.")
@click.option("--noise", default=0.0, show_default=True, help="Gaussian noise sigma (8-bit values).")
@click.option("--jpeg", type=int, default=None, help="JPEG quality of the blurry image.")
@_crop_options
@common_options()
def prepare_synthetic_cmd(images, dst, variants, seed, val_fraction, size, max_shift, max_angle,
                          exposures, noise, jpeg, patch, stride, scale, workers, progress: bool) -> None:
    """Blurry/sharp pairs from still images with random camera shake, then triplets."""
    from streamsr.data.prepare import prepare_synthetic

    _report(prepare_synthetic(images, dst, _settings(patch, stride, scale), variants, seed,
                              val_fraction, progress, _workers(workers), size=size,
                              max_shift=max_shift,
                              max_angle=max_angle, exposures=exposures, noise_sigma=noise,
                              jpeg_quality=jpeg))


@main.command()
@click.option("--recipe", type=click.Path(exists=True, dir_okay=False),
              help="Recipe TOML (train/paper_gopro.toml, train/lite_synthetic.toml); optional "
                   "with --resume.")
@click.option("--data", required=True, type=click.Path(exists=True, file_okay=False),
              help="Folder made by `streamsr prepare`.")
@click.option("--out", default="runs/train", show_default=True, type=click.Path(file_okay=False),
              help="Run folder: checkpoints, logs, weights.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a recipe value (repeatable), e.g. --set batch=8.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@click.option("--init-mprnet", type=click.Path(dir_okay=False),
              help="Start the trunk from an official MPRNet checkpoint (model_deblurring.pth).")
@click.option("--init", type=click.Path(dir_okay=False), help="Start from a streamsr weights file.")
@click.option("--device", default=None, help="cpu, cuda or cuda:N (default: the GPU if any).")
@threads_option
@common_options()
def train(recipe, data, out, overrides, resume, init_mprnet, init, device, progress: bool) -> None:
    """Train the joint model (torchrun --nproc_per_node N -m streamsr train ... for N GPUs)."""
    import os

    from streamsr.training.recipe import load_recipe
    from streamsr.training.trainer import train as run_training

    if recipe is None and not resume:
        raise ConfigError("--recipe is required (unless --resume continues a run)")
    rec = load_recipe(recipe) if recipe else None
    result = run_training(data, out, rec, overrides, resume=resume, init_mprnet=init_mprnet,
                          init=init, device=device, progress=progress)
    if int(os.environ.get("RANK", "0")) == 0:
        best = f"{result.best_psnr:.3f} dB" if result.best_psnr is not None else "n/a"
        click.echo(f"done: {result.step} steps; best validation PSNR (SR) {best}")
        click.echo(f"weights: {result.model_path}  (use with: streamsr upscale --model "
                   f"{result.model_path} ...)")


@main.command("eval")
@click.option("--data", required=True, type=click.Path(exists=True, file_okay=False),
              help="GOPRO_Large (its test split), GOPRO_Large/test, or a blur/ + sharp/ folder.")
@click.option("--model", "model_path", required=True, help="Weights file (or a bundled name).")
@click.option("--mprnet", type=click.Path(exists=True, dir_okay=False),
              help="Official MPRNet checkpoint: adds the MPRNet + bicubic baseline.")
@click.option("--out", default="eval", show_default=True, type=click.Path(file_okay=False),
              help="Folder for eval.md, eval.csv and eval_per_image.csv.")
@click.option("--limit", default=0, help="Evaluate only the first N images.")
@click.option("--device", default=None, help="cpu, cuda or cuda:N (default: the GPU if any).")
@threads_option
@common_options()
def eval_cmd(data, model_path, mprnet, out, limit, device, progress: bool) -> None:
    """Table 1 protocol: blurry HR -> bicubic x4 down -> model -> compare with the sharp HR."""
    from streamsr.evaluate import evaluate

    report = evaluate(data, model_path, mprnet, out, device, limit, progress)
    click.echo(report.markdown(), nl=False)
    click.echo(f"tables written to {Path(out) / 'eval.md'} and {Path(out) / 'eval.csv'}")
