"""`streamsr upscale IN OUT`: flags (over a preset) -> `UpscaleOptions` -> `streamsr.api.upscale`."""

from __future__ import annotations

import sys
import threading

import click
from click.core import ParameterSource

from streamsr.cli import common_options, main, threads_option
from streamsr.errors import ConfigError

# flags whose value is not one option of the same name (see options_from_flags)
_SPECIAL_FLAGS = {"encoder_opt": ("encoder_options",), "timeout": ("open_timeout", "read_timeout")}


def parse_encoder_opts(items: tuple[str, ...]) -> dict[str, str]:
    """('x264-params=keyint=60', 'tune=film') -> {'x264-params': 'keyint=60', 'tune': 'film'}."""
    opts = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--encoder-opt wants key=value, got {item!r}")
        opts[key.strip()] = value.strip()
    return opts


class _Bar:
    """A tqdm bar fed from the encode thread; created when the first frame is written."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar = None
        self.lock = threading.Lock()

    def __call__(self, done: int, total: int | None) -> None:
        if not self.enabled:
            return
        with self.lock:
            if self.bar is None:
                from tqdm import tqdm

                self.bar = tqdm(total=total, unit="frame", dynamic_ncols=True, file=sys.stderr,
                                desc="upscale", smoothing=0.1)
            if self.bar.total is not None and done > self.bar.total:
                self.bar.total = done
            self.bar.update(done - self.bar.n)

    def close(self) -> None:
        with self.lock:
            if self.bar is not None:
                self.bar.close()
                self.bar = None


def _status_line(line: str) -> None:
    """Print a live status line above the progress bar."""
    from tqdm import tqdm

    tqdm.write(line, file=sys.stderr)


@main.command()
@click.argument("input_path", metavar="INPUT")
@click.argument("output_path", metavar="OUTPUT")
@click.option("--preset", "preset_name", metavar="NAME",
              help="Pipeline preset: a bundled name (dashcam, handheld, archive, rtsp-live) or a "
                   ".toml file; options given here win over it.")
@click.option("--model", default="lite", show_default=True, help="lite, paper, or a weights file.")
@click.option("--batch", type=click.IntRange(min=1), help="Frames per model call (default: from free memory).")
@click.option("--tile", type=click.IntRange(min=0), help="Tile size in input pixels (0: never tile; default: when needed).")
@click.option("--precision", type=click.Choice(["auto", "bf16", "fp16", "fp32", "int8"]),
              default="auto", show_default=True,
              help="int8: --backend openvino only (the model quantized with NNCF, cached).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1, ...")
@click.option("--backend", type=click.Choice(["torch", "openvino", "onnxruntime", "tensorrt", "auto"]),
              default="torch", show_default=True,
              help="What runs the model: torch; openvino or onnxruntime on the CPU, tensorrt on "
                   "a GPU (the exported model, cached; pip extras [openvino], [onnx], [tensorrt]); "
                   "auto: tensorrt on a GPU, openvino on the CPU when installed, else torch.")
@click.option("--compile", is_flag=True,
              help="torch.compile the model (slow to start; the eager model after a warning "
                   "when compiling fails).")
@click.option("--cuda-graphs", type=click.Choice(["auto", "on", "off"]), default="auto",
              show_default=True, help="Replay a captured CUDA graph for full batches (auto: on "
              "CUDA without --compile; no effect on CPU).")
@click.option("--decoder", type=click.Choice(["software", "auto", "cuda"]), default="software",
              show_default=True, help="Video decoding: software (CPU threads), cuda (NVDEC; "
              "software after a warning when unavailable), auto (NVDEC when the model runs on CUDA).")
@click.option("--codec", default="libx264", show_default=True,
              help="Any FFmpeg video encoder: libx264, libx265, libsvtav1, h264_nvenc, hevc_nvenc, ...")
@click.option("--crf", type=click.IntRange(0, 63), default=18, show_default=True,
              help="Constant quality (lower is better); ignored with --bitrate.")
@click.option("--encoder-preset", "--x264-preset", "encoder_preset", default="medium",
              show_default=True, help="Encoder speed preset (ultrafast ... veryslow; p1-p7 for NVENC).")
@click.option("--pix-fmt", default="yuv420p", show_default=True,
              help="Output pixel format (yuv420p10le keeps 10 bits with libx265/libx264).")
@click.option("--bitrate", help="Target bitrate such as 8M or 2500k (instead of CRF).")
@click.option("--encoder-opt", multiple=True, metavar="KEY=VALUE",
              help="Extra FFmpeg encoder option; repeatable.")
@click.option("--outscale", type=click.FloatRange(0.25, 4), metavar="FACTOR",
              help="Output size as a factor of the input (0.25-4, e.g. 2): the model's x4, "
                   "then an antialiased bicubic downscale; video sides are rounded to even.")
@click.option("--size", metavar="WxH",
              help="Output size that fits in WxH keeping the aspect ratio; -1 for a side follows "
                   "the other (1280x-1, -1x720). At most x4 of the input.")
@click.option("--ext", "image_ext", type=click.Choice(["png", "jpg", "jpeg", "webp", "bmp", "tif",
                                                     "tiff"], case_sensitive=False),
              help="Image format for a folder OUTPUT (default png; an image file's own "
                   "extension decides for it).")
@click.option("--side-by-side", is_flag=True, help="Left half bicubic, right half streamsr.")
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
@click.option("--start", type=click.FloatRange(min=0), help="Start at this many seconds.")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), help="Process this many seconds.")
@click.option("--frames", type=click.IntRange(min=1), help="Stop after this many input frames.")
@click.option("--max-pixels", type=click.IntRange(min=0), metavar="N",
              help="Refuse inputs whose frames have more than N pixels, checked from the header "
                   "before any decoding (default: 33177600, an 8K frame; 0: no limit).")
@click.option("--live/--no-live", default=None,
              help="Live mode: bounded queue with drops, latency bound, reconnects, MKV output "
                   "(default: on for network URLs such as rtsp://).")
@click.option("--rtsp-transport", type=click.Choice(["tcp", "udp"]), default="tcp",
              show_default=True, help="Live: RTSP transport.")
@click.option("--drop", type=click.Choice(["oldest", "none"]), default="oldest", show_default=True,
              help="Live: when inference falls behind, drop the oldest queued frame (none: wait).")
@click.option("--max-latency", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
              help="Live: drop frames older than this when inference reaches them.")
@click.option("--reconnect-max", type=click.IntRange(min=0), default=10, show_default=True,
              help="Live: give up after this many failed connection attempts in a row (0: forever).")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True),
              default=10.0, show_default=True, metavar="SECONDS",
              help="Live: wait this long for a connection or for data before reconnecting.")
@click.option("--segment-time", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
              help="Rolling files of this length; OUTPUT is a strftime pattern such as "
                   "cam_%Y%m%d_%H%M%S.mkv.")
@click.option("--status-interval", type=click.FloatRange(min=0), default=5.0, show_default=True,
              metavar="SECONDS", help="Live: seconds between status lines (0: none).")
@click.option("--resume", is_flag=True,
              help="Work in keyframe-aligned parts kept in OUTPUT.parts/ and reuse the finished "
                   "ones (re-run the same command after an interruption); for a folder INPUT, "
                   "skip outputs that are already finished.")
@click.option("--part-frames", type=click.IntRange(min=1), metavar="N",
              help="Parts (--resume, torchrun): about this many frames each (default 1800).")
@threads_option
@common_options()
@click.pass_context
def upscale(ctx: click.Context, input_path: str, output_path: str, preset_name: str | None,
            progress: bool, quiet: bool, **flags) -> None:
    """Upscale a blurry low-resolution video (or image, or image folder) x4 into OUTPUT.

    OUTPUT is a video file (.mp4, .mkv, .mov, ...), an image file, or a folder for PNGs.
    Audio, subtitles, chapters, colour tags and rotation are kept.
    """
    from streamsr.api import upscale as run_upscale  # file, images, folder, live, parts/torchrun

    options = options_from_flags(ctx, flags, preset_name)
    bar = _Bar(enabled=progress)
    try:
        stats = run_upscale(input_path, output_path, options, progress=bar,
                            status=None if quiet else _status_line)
    finally:
        bar.close()
    if not quiet and stats is not None:  # None: a torchrun rank other than 0
        click.echo(stats.summary(), err=True)


def options_from_flags(ctx: click.Context, flags: dict, preset_name: str | None):
    """`UpscaleOptions` from the command's flags; a preset's values fill the flags not given."""
    from streamsr.options import UpscaleOptions, load_preset
    from streamsr.video.source import DEFAULT_MAX_PIXELS

    keywords: dict = {}
    given: set[str] = set()
    for name, value in flags.items():
        names = _SPECIAL_FLAGS.get(name, (name,))
        if name == "encoder_opt":
            value = parse_encoder_opts(tuple(value))
        elif name == "max_pixels":  # 0: no limit
            value = DEFAULT_MAX_PIXELS if value is None else value or None
        keywords.update(dict.fromkeys(names, value))
        if ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, None):
            given.update(names)
    if preset_name:
        params = {p.name: p for p in ctx.command.params}
        flag_of = {kw: flag for flag, kws in _SPECIAL_FLAGS.items() for kw in kws}
        for key, value in load_preset(preset_name).items():
            if key in given:
                continue
            param = params.get(flag_of.get(key, key))
            if param is not None and key != "encoder_options":
                try:  # the flag's own checks (ranges, choices) apply to a preset's value too
                    value = param.type_cast_value(ctx, value)
                except click.BadParameter as exc:
                    raise ConfigError(f"preset {preset_name}: bad value for {param.name}: "
                                      f"{exc.message}") from None
            if key == "max_pixels":
                value = value or None
            keywords[key] = value
    return UpscaleOptions.from_keywords(**keywords)
