"""`streamsr eval-video OUT --reference GT [--input LR]`: PSNR/SSIM against ground truth."""

from __future__ import annotations

import json

import click

from streamsr.cli import common_options, main, threads_option


@main.command("eval-video")
@click.argument("output", type=click.Path(dir_okay=True))
@click.option("--reference", "-r", required=True, type=click.Path(dir_okay=True),
              help="Ground-truth video (same size and frame count as OUTPUT).")
@click.option("--input", "-i", "input_", type=click.Path(dir_okay=True), default=None,
              help="The low-resolution input: also score its bicubic x4 upscale (the margin).")
@click.option("--y", "y_channel", is_flag=True, help="Score luma (BT.601 Y) instead of RGB.")
@click.option("--frames", type=click.IntRange(min=1), default=None,
              help="Score only the first N frames (an output made with --frames N).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--per-frame", is_flag=True, help="With --json: include per-frame values.")
@threads_option
@common_options()
def eval_video(output: str, reference: str, input_: str | None, y_channel: bool,
               frames: int | None, as_json: bool, per_frame: bool, progress: bool) -> None:
    """Mean per-frame PSNR/SSIM and temporal consistency of OUTPUT against --reference (and of
    bicubic x4 of --input)."""
    from streamsr.quality import compare_videos  # torch and PyAV: imported when it runs

    r = compare_videos(output, reference, input_, y_channel=y_channel,
                       progress=progress and not as_json, frames=frames)
    if as_json:
        click.echo(json.dumps(r.to_dict(per_frame=per_frame), sort_keys=True))
        return
    space = "Y" if y_channel else "RGB"
    click.echo(f"frames   {r.frames} ({r.width}x{r.height}), {space}")
    click.echo(f"output   PSNR {r.psnr:7.3f} dB   SSIM {r.ssim:.4f}   temporal {r.temporal_psnr:7.3f} dB")
    if r.bicubic_psnr is not None:
        click.echo(f"bicubic  PSNR {r.bicubic_psnr:7.3f} dB   SSIM {r.bicubic_ssim:.4f}   "
                   f"temporal {r.bicubic_temporal_psnr:7.3f} dB")
        click.echo(f"margin   PSNR {r.psnr_margin:+7.3f} dB   SSIM {r.ssim_margin:+.4f}   "
                   f"temporal {r.temporal_margin:+7.3f} dB")
    click.echo("(temporal: PSNR of the frame-to-frame changes against the reference's; "
               "lower means more flicker)")
