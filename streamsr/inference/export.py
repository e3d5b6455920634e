"""`streamsr export`: the model as a file to deploy elsewhere (ONNX, or OpenVINO IR).

The graph is the one the ONNX-based backends run (`streamsr.inference.backends.onnx_export`): float32
RGB frames in [0, 1] (NCHW) in, the x4 image out, equal to eager torch fp32 to float rounding
(the bicubic skip is written as exact convolutions). Every file carries the model config, the
weights' sha256, the precision and the input shape in its metadata (ONNX `metadata_props`,
OpenVINO `rt_info`, keys under `streamsr`); `read_export` reads them back without the runtime.

Precision: fp32 everywhere; fp16 as fp16 weights and arithmetic in ONNX, as fp16-compressed
weights plus an f16 inference hint in OpenVINO IR; bf16 only in OpenVINO IR (f32 weights, a
bf16 inference hint: ONNX convolutions have no bf16 at the exported opset); int8 only in
OpenVINO IR: the graph quantized by NNCF with the backend's fixed calibration recipe
(`backends.ov_int8`, named in the metadata), f32 elsewhere.
"""

from __future__ import annotations

import json
import os
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from streamsr.errors import ConfigError, InputError, OutputError
from streamsr.inference.backends import require
from streamsr.inference.backends.onnx_export import (
    EXPORT_PRECISIONS,
    add_metadata,
    export_metadata,
    onnx_bytes,
    read_onnx_metadata,
)

FORMATS = {"onnx": ".onnx", "openvino": ".xml"}
OV_HINTS = {"fp32": "f32", "fp16": "f16", "bf16": "bf16", "int8": "f32"}


@dataclass(frozen=True)
class ExportOptions:
    """What to write: container format, precision, a fixed input size or a dynamic one."""

    format: str = "onnx"  # onnx | openvino
    precision: str = "fp32"  # fp32 | fp16 | bf16 | int8 (bf16, int8: openvino only)
    resolution: tuple[int, int] | None = None  # (width, height) of the input; None: dynamic
    batch: int = 1  # frames per call of a fixed-size export
    overwrite: bool = False

    def check(self) -> None:
        if self.format not in FORMATS:
            raise ConfigError(f"unknown export format {self.format!r}; use onnx or openvino")
        if self.precision == "int8" and self.format != "openvino":
            raise ConfigError("int8 is an OpenVINO model quantized with NNCF: use --format "
                              "openvino for int8, or --precision fp16 / fp32")
        if self.precision not in (*EXPORT_PRECISIONS, "int8"):
            raise ConfigError(f"unknown precision {self.precision!r}; use fp32, fp16, bf16 or int8")
        if self.precision == "bf16" and self.format == "onnx":
            raise ConfigError("ONNX has no bf16 convolutions at the opset streamsr exports: use "
                              "--format openvino for bf16, or --precision fp16 / fp32")
        if self.resolution is not None and min(self.resolution) < 1:
            raise ConfigError(f"bad resolution {self.resolution}")
        if self.batch < 1:
            raise ConfigError(f"batch must be at least 1, got {self.batch}")


def format_for(path: str | os.PathLike, fmt: str | None) -> str:
    """The format given, or the one OUT's suffix names (.onnx, .xml); they must agree."""
    suffix = Path(path).suffix.lower()
    by_suffix = next((name for name, ext in FORMATS.items() if ext == suffix), None)
    if fmt is None:
        if by_suffix is None:
            raise ConfigError(f"cannot tell the format from {Path(path).name!r}: name it .onnx or "
                              f".xml (OpenVINO IR), or pass --format")
        return by_suffix
    if suffix != FORMATS.get(fmt, suffix):
        raise ConfigError(f"--format {fmt} writes a {FORMATS[fmt]} file, not {Path(path).name!r}")
    return fmt


def export_model(model: nn.Module, out: str | os.PathLike, options: ExportOptions) -> dict[str, str]:
    """Write `model` to `out` as `options` say; returns the metadata written into it."""
    options.check()
    out = Path(out)
    targets = [out] if options.format == "onnx" else [out, out.with_suffix(".bin")]
    existing = [p for p in targets if p.exists()]
    if existing and not options.overwrite:
        raise OutputError(f"{existing[0]} exists; pass --overwrite to replace it")
    if not out.parent.is_dir():
        raise OutputError(f"no such folder: {out.parent}")
    meta = export_metadata(model, options.precision, options.resolution, options.batch,
                           options.format)
    if options.precision == "int8":
        from streamsr.inference.backends.ov_int8 import CALIBRATION

        meta["calibration"] = json.dumps(CALIBRATION, sort_keys=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".streamsr-export-") as tmp:
        if options.format == "onnx":
            graph = onnx_bytes(model, options.precision, options.resolution, options.batch)
            staged = Path(tmp) / out.name
            staged.write_bytes(add_metadata(graph, meta))
            os.replace(staged, out)
        else:
            _write_openvino(model, Path(tmp), out, options, meta)
    return meta


def _write_openvino(model: nn.Module, tmp: Path, out: Path, options: ExportOptions,
                    meta: dict[str, str]) -> None:
    """ONNX graph (fp32) -> OpenVINO IR with the metadata and the precision as runtime hint."""
    require("openvino")
    import openvino as ov

    source = tmp / "graph.onnx"
    source.write_bytes(onnx_bytes(model, "fp32", options.resolution, options.batch))
    ov_model = ov.convert_model(str(source))
    if options.precision == "int8":
        from streamsr.inference.backends.ov_int8 import calibration_frames, quantize

        ov_model = quantize(ov_model, calibration_frames(size=options.resolution,
                                                         batch=options.batch))
    for key, value in meta.items():
        ov_model.set_rt_info(value, ["streamsr", key])
    # applied by OpenVINO when the model is compiled, unless the caller sets its own hint
    ov_model.set_rt_info(OV_HINTS[options.precision], ["runtime_options", "INFERENCE_PRECISION_HINT"])
    staged = tmp / out.name
    ov.save_model(ov_model, str(staged), compress_to_fp16=options.precision == "fp16")
    os.replace(staged.with_suffix(".bin"), out.with_suffix(".bin"))
    os.replace(staged, out)


def is_export_file(path: str | os.PathLike) -> bool:
    """True for the kinds of file `streamsr export` writes (by suffix)."""
    return Path(path).suffix.lower() in FORMATS.values()


def read_export(path: str | os.PathLike) -> dict[str, str]:
    """The streamsr metadata of an exported file (.onnx or OpenVINO .xml), without a runtime
    for .xml; a file without streamsr metadata is an InputError."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"no such file: {path}")
    try:
        meta = (read_onnx_metadata(path) if path.suffix.lower() == ".onnx"
                else _read_ir_metadata(path))
    except (ET.ParseError, OSError, ValueError) as exc:
        raise InputError(f"{path} is not a readable model file ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - onnx raises DecodeError and friends
        if type(exc).__module__.startswith(("google.protobuf", "onnx")):
            raise InputError(f"{path} is not a readable ONNX file ({type(exc).__name__})") from None
        raise
    if meta.get("format") != "streamsr-export-v1":
        raise InputError(f"{path} was not exported by streamsr (no streamsr metadata)")
    return meta


def _read_ir_metadata(path: Path) -> dict[str, str]:
    """rt_info/streamsr/<key value=...> of an OpenVINO IR .xml, read with ElementTree."""
    for _event, elem in ET.iterparse(path, events=("end",)):
        if elem.tag == "rt_info" and elem.find("streamsr") is not None:
            return {child.tag: child.get("value", "") for child in elem.find("streamsr")}
        if elem.tag == "layer":
            elem.clear()  # the graph itself is not needed: keep memory flat
    return {}

