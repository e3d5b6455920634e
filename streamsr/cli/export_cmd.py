"""`streamsr export`: the model as an ONNX or OpenVINO IR file, metadata included."""

from __future__ import annotations

import click

from streamsr.cli import common_options, main
from streamsr.errors import ConfigError


@main.command("export")
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--model", "model_name", default="lite", show_default=True,
              help="lite, or a weights file (a config without trained weights is refused).")
@click.option("--format", "fmt", type=click.Choice(["onnx", "openvino"]), default=None,
              help="onnx (.onnx) or openvino (IR: .xml + .bin) [default: from OUT's suffix].")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "bf16", "int8"]), default="fp32",
              show_default=True, help="fp16: fp16 weights and arithmetic; bf16: OpenVINO only "
              "(f32 weights, bf16 inference hint); int8: OpenVINO only (quantized with NNCF, "
              "needs streamsr[openvino]).")
@click.option("--resolution", metavar="WxH", default=None,
              help="A fixed input size (e.g. 320x180; padding to a multiple of 8 is in the graph).")
@click.option("--dynamic", is_flag=True, help="Any input size whose sides are multiples of 8, any "
              "batch (the default without --resolution).")
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True,
              help="Frames per call of a --resolution export.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@common_options(progress=False)
def export_cmd(out: str, model_name: str, fmt: str | None, precision: str, resolution: str | None,
               dynamic: bool, batch: int, overwrite: bool) -> None:
    """Write the model to OUT for deployment elsewhere (ONNX Runtime, OpenVINO, TensorRT).

    The file takes float32 RGB frames in [0, 1] (NCHW) and returns the x4 image, equal to the
    torch model to float rounding; its metadata holds the model config and the weights' sha256
    (`streamsr info OUT` shows them).
    """
    from streamsr.bench import parse_resolution
    from streamsr.inference.export import ExportOptions, export_model, format_for
    from streamsr.models.weights import load_model

    if resolution and dynamic:
        raise ConfigError("--resolution and --dynamic exclude each other")
    size = parse_resolution(resolution) if resolution else None
    options = ExportOptions(format=format_for(out, fmt), precision=precision, resolution=size,
                            batch=batch, overwrite=overwrite)
    options.check()
    meta = export_model(load_model(model_name), out, options)
    shape = f"{size[0]}x{size[1]}, batch {batch}" if size else "dynamic size and batch"
    click.echo(f"wrote {out}: {options.format}, {precision}, {shape}, weights sha256 "
               f"{meta['weights_sha256'][:16]}...")
