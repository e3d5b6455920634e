"""`streamsr bench`: model-only vs pipeline vs naive loop vs FFmpeg, side by side."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from streamsr.cli import common_options, main, threads_option
from streamsr.errors import ConfigError, OutputError

PARTS = ("model", "pipeline", "naive", "io")  # streamsr.bench.PARTS, kept here so --help stays light


@main.command()
@click.option("--resolution", default="320x180", show_default=True, help="Input clip size WxH.")
@click.option("--frames", type=int, default=None,
              help="Clip length [default: 96 on CUDA, 8 on CPU].")
@click.option("--io-frames", type=int, default=None,
              help="Clip length for the I/O-only parts [default: frames, at least 48].")
@click.option("--model", "model_name", default="lite", show_default=True,
              help="paper, lite, tiny, or a weights file (untrained configs time fine).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--precision", type=click.Choice(["auto", "bf16", "fp16", "fp32", "int8"]),
              default="auto", show_default=True,
              help="Model precision for the engine (the naive loop is fp32; int8: openvino only). "
              "With several backends, each may name its own: --backend torch,openvino:int8.")
@click.option("--batch", type=int, default=None, help="Frames per model call [default: engine's choice].")
@click.option("--backend", "backend_names", multiple=True, metavar="NAME[,NAME...]",
              help="torch, openvino, onnxruntime, tensorrt or auto [default: torch]; several "
              "(repeated or comma-separated): model-only and pipeline rows side by side, each at "
              "its best thread count, with PSNR against torch fp32.")
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the model (engine and pipeline).")
@click.option("--cuda-graphs", type=click.Choice(["auto", "on", "off"]), default="auto",
              show_default=True, help="CUDA graph replay for full batches (auto: on CUDA without "
              "--compile; no effect on CPU).")
@click.option("--decoder", type=click.Choice(["software", "auto", "cuda"]), default="software",
              show_default=True, help="The pipeline parts' video decoder (cuda: NVDEC, software "
              "after a warning when unavailable).")
@click.option("--codec", default="libx264", show_default=True,
              help="Encoder of every part that writes video (pipeline, naive loop, FFmpeg), "
              "e.g. h264_nvenc.")
@click.option("--encoder-preset", default="medium", show_default=True,
              help="Its speed preset (ultrafast ... veryslow; p1-p7 for NVENC).")
@click.option("--skip", type=click.Choice(PARTS), multiple=True, help="Leave out a part (repeatable).")
@click.option("--ffmpeg", "ffmpeg_method", type=click.Choice(["auto", "pyav", "cli"]), default="auto",
              show_default=True, help="FFmpeg reference: the ffmpeg program (auto: if installed) "
              "or PyAV's filter graph.")
@click.option("--sweep", is_flag=True, help="Model fps over 320x180, 480x270, 960x540 and batch "
              "sizes (1-8 on GPU, 1-4 on CPU), with the pipeline once per resolution.")
@click.option("--sizes", default="320x180,480x270,960x540", show_default=True,
              help="Input sizes for --sweep, comma-separated WxH.")
@click.option("--batches", default=None, help="Batch sizes for --sweep, comma-separated "
              "[default: 1,2,4,8 on GPU, 1,2,4 on CPU].")
@click.option("--streams", type=int, default=None, metavar="N",
              help="N streams through one `streamsr serve` against N separate `upscale` "
              "processes, aggregate fps and mean latency side by side (--resolution [default "
              "160x90 here], --frames [24], --model, --device, --batch, --encoder-preset "
              "[veryfast]).")
@click.option("--json", "json_path", default=None, metavar="PATH|-",
              help="Also write the result as one JSON object (- for stdout).")
@threads_option
@common_options()
def bench(resolution: str, frames: int | None, io_frames: int | None, model_name: str, device: str, precision: str,
          batch: int | None, compile_: bool, cuda_graphs: str, decoder: str, codec: str,
          encoder_preset: str, skip: tuple[str, ...],
          ffmpeg_method: str, sweep: bool, sizes: str, batches: str | None,
          json_path: str | None, progress: bool, backend_names: tuple[str, ...] = (),
          streams: int | None = None) -> None:
    """Measure throughput: model only, pipeline, naive loop and I/O vs FFmpeg, in one process."""
    if streams is not None:
        ctx = click.get_current_context()
        _bench_streams(streams, ctx, resolution, frames, model_name, device, batch,
                       encoder_preset, json_path, progress)
        return
    from streamsr.bench import (
        BenchConfig,
        format_backends,
        format_result,
        format_sweep,
        parse_batches,
        parse_resolution,
        run_backends,
        run_bench,
        run_sweep,
    )
    from streamsr.bench.backends import split_spec

    config = BenchConfig(resolution=parse_resolution(resolution), frames=frames, io_frames=io_frames,
                         model=model_name,
                         device=device, precision=precision, batch=batch, compile=compile_,
                         cuda_graphs=cuda_graphs, decoder=decoder, codec=codec,
                         encoder_preset=encoder_preset,
                         parts=tuple(p for p in PARTS if p not in skip), ffmpeg=ffmpeg_method)

    def step(text: str) -> None:
        if progress:
            click.secho(f"bench: {text} ...", err=True, dim=True)

    names = [n.strip() for value in backend_names for n in value.split(",") if n.strip()]
    if len(names) == 1:  # NAME[:PRECISION], as in the side-by-side run
        config.backend, named = split_spec(names[0])
        config.precision = named or config.precision
    if len(names) > 1:
        if sweep:
            raise ConfigError("--sweep takes one --backend")
        result = run_backends(config, names, progress=step)
        text = format_backends(result)
    elif sweep:
        resolutions = [parse_resolution(size) for size in sizes.split(",") if size.strip()]
        result = run_sweep(config, resolutions=resolutions, batches=parse_batches(batches),
                           progress=step)
        text = format_sweep(result)
    else:
        result = run_bench(config, progress=step)
        text = format_result(result)
    # With JSON on stdout, the table goes to stderr so stdout stays one parseable object.
    click.echo(text, err=json_path == "-")
    if json_path == "-":
        sys.stdout.write(result.to_json() + "\n")
    elif json_path:
        _write_json(Path(json_path), result.to_json(), progress)


def _bench_streams(n: int, ctx: click.Context, resolution: str, frames: int | None, model: str,
                   device: str, batch: int | None, encoder_preset: str, json_path: str | None,
                   progress: bool) -> None:
    """`--streams N`: streamsr.serve.bench.bench_streams, with its own defaults for the options
    left at this command's (a small clip: N streams of it run twice)."""
    import json

    from streamsr.bench import parse_resolution
    from streamsr.serve.bench import bench_streams

    def given(name: str) -> bool:
        return ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT

    if progress:
        click.secho(f"bench: {n} streams through serve, then {n} upscale processes ...",
                    err=True, dim=True)
    result = bench_streams(n, resolution=parse_resolution(resolution if given("resolution")
                                                          else "160x90"),
                           frames=frames or 24, model=model, device=device, batch=batch,
                           encoder_preset=encoder_preset if given("encoder_preset") else "veryfast")
    click.echo(result.table(), err=json_path == "-")
    text = json.dumps(result.as_dict())
    if json_path == "-":
        sys.stdout.write(text + "\n")
    elif json_path:
        _write_json(Path(json_path), text, progress)


def _write_json(path: Path, text: str, progress: bool) -> None:
    """`--json PATH`: the result as one JSON object; a path that cannot be written is a user error."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    if progress:
        click.secho(f"bench: wrote {path}", err=True, dim=True)
