"""The model as an ONNX graph: for `streamsr export` and for the ONNX-based backends.

The graph is `graph.ExportGraph` (float32 frames in, the x4 image out, the bicubic skip as exact
convolutions) traced by torch's TorchScript ONNX exporter. That exporter keeps batch, height and
width dynamic in one trace (frames of any size whose sides are multiples of 8, as the engine
pads them) in seconds; torch's dynamo exporter took minutes with dynamic shapes on the 2-core CI
machine (docs/architecture.md has the times), and fixed the batch size.
The model config, the weights' sha256 and the export settings go into the file's metadata
(`metadata_props`, keys prefixed `streamsr.`).
"""

from __future__ import annotations

import io
import json
import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from streamsr import __version__
from streamsr.errors import ConfigError
from streamsr.inference.backends import require_module
from streamsr.inference.backends.cache import ArtifactCache
from streamsr.inference.backends.graph import (
    GRAPH_VERSION,
    export_ready,
    model_config_json,
    model_scale,
    weights_hash,
)

log = logging.getLogger(__name__)

OPSET = 18
FORMAT = "streamsr-export-v1"
EXPORT_PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
ALIGN = 8


def export_metadata(model: nn.Module, precision: str, resolution: tuple[int, int] | None,
                    batch: int | None, fmt: str) -> dict[str, str]:
    """What a deployed file says about itself: model, weights, precision, input shape."""
    if resolution is None:
        shape = "N x 3 x H x W (H and W multiples of 8)"
    else:
        shape = f"{batch} x 3 x {resolution[1]} x {resolution[0]}"
    return {
        "format": FORMAT,
        "container": fmt,
        "config": model_config_json(model),
        "weights_sha256": weights_hash(model),
        "precision": precision,
        "scale": str(model_scale(model)),
        "input": f"float32 RGB in [0, 1], NCHW {shape}",
        "output": "float32 RGB NCHW x scale" + (", clamped to [0, 1]" if getattr(
            getattr(model, "config", None), "bicubic_skip", False) else ""),
        "dynamic": "true" if resolution is None else "false",
        "exporter": f"torch {torch.__version__.split('+')[0]} torchscript onnx opset {OPSET}",
        "graph_version": GRAPH_VERSION,
        "streamsr_version": __version__,
    }


def onnx_bytes(model: nn.Module, precision: str = "fp32", resolution: tuple[int, int] | None = None,
               batch: int = 1) -> bytes:
    """The serialized ONNX graph of `model` (no metadata yet).

    `resolution` (W, H): a fixed input of `batch` frames of exactly that size (padding to a
    multiple of 8 is inside the graph); None: batch, height and width dynamic (multiples of 8).
    """
    if precision not in EXPORT_PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; use fp32, fp16 or bf16")
    if precision == "bf16":
        # ONNX Conv takes bfloat16 only from opset 22, which the exporter does not write
        raise ConfigError("ONNX has no bf16 convolutions at the opset streamsr exports; export "
                          "fp32 and run it in bf16 in the runtime (OpenVINO's or TensorRT's "
                          "precision setting), or use --precision fp16")
    require_module("onnx", "onnx")
    graph = export_ready(model, EXPORT_PRECISIONS[precision])
    if resolution is None:
        example = torch.rand(2, 3, 16, 24)  # small: tracing runs the model once
        dynamic = {"frames": {0: "batch", 2: "height", 3: "width"},
                   "hr": {0: "batch", 2: "out_height", 3: "out_width"}}
    else:
        width, height = resolution
        example = torch.rand(batch, 3, height, width)
        dynamic = None
    buf = io.BytesIO()
    threads = torch.get_num_threads()
    try:
        # one thread: the trace runs hundreds of tiny convolutions, which a shared pool only
        # slows down on a busy machine
        torch.set_num_threads(1)
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer and deprecation warnings (graph is tested)
            torch.onnx.export(graph, (example,), buf, dynamo=False, opset_version=OPSET,
                              input_names=["frames"], output_names=["hr"], dynamic_axes=dynamic,
                              do_constant_folding=True)
    finally:
        torch.set_num_threads(threads)
    return buf.getvalue()


def add_metadata(data: bytes, metadata: dict[str, str]) -> bytes:
    """The ONNX model `data` with `metadata` in its metadata_props (keys prefixed streamsr.)."""
    import onnx

    proto = onnx.load_from_string(data)
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = f"streamsr.{key}", value
    proto.producer_name = "streamsr"
    proto.producer_version = __version__
    return proto.SerializeToString()


def export_onnx(model: nn.Module, path: str | Path, precision: str = "fp32",
                resolution: tuple[int, int] | None = None, batch: int = 1) -> dict[str, str]:
    """Write `model` as an ONNX file with its metadata; returns the metadata."""
    meta = export_metadata(model, precision, resolution, batch, "onnx")
    data = add_metadata(onnx_bytes(model, precision, resolution, batch), meta)
    Path(path).write_bytes(data)
    return meta


def read_onnx_metadata(path: str | Path) -> dict[str, str]:
    """The streamsr.* metadata of an ONNX file (keys without the prefix), {} if it has none."""
    require_module("onnx", "onnx")
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return {p.key.removeprefix("streamsr."): p.value for p in proto.metadata_props
            if p.key.startswith("streamsr.")}


def runtime_key(model: nn.Module) -> dict:
    """What a runtime graph depends on: the weights, the config and how the graph was made."""
    return {"weights_sha256": weights_hash(model), "config": model_config_json(model),
            "graph_version": GRAPH_VERSION, "opset": OPSET, "precision": "fp32",
            "torch": torch.__version__.split("+")[0]}


def runtime_onnx(model: nn.Module, cache: ArtifactCache | None = None,
                 key: dict | None = None) -> Path:
    """The model's dynamic-shape fp32 ONNX graph from the cache, exported first if missing or
    bad (an export takes seconds; later runs read the file)."""
    cache = cache or ArtifactCache("onnx")
    key = key or runtime_key(model)

    def write(tmp: Path) -> None:
        log.info("exporting the model to ONNX for the runtime (cached for later runs)")
        meta = export_metadata(model, "fp32", None, None, "onnx")
        tmp.write_bytes(add_metadata(onnx_bytes(model), meta))

    path = cache.get(key, ".onnx", write)
    log.debug("runtime graph %s (%s)", path, json.dumps(key)[:120])
    return path
