"""INT8 for OpenVINO: the runtime graph quantized by NNCF's post-training quantization, cached.

Why INT8: on a CPU without avx512_bf16 or AMX (the 2-core AVX2 machine the project measures on)
OpenVINO's bf16 is emulated and f32 barely beats torch, while its INT8 kernels still use integer
dot products (docs/benchmarks.md has the numbers).

What is quantized: every convolution of the network, weights per channel (symmetric) and
activations per tensor (asymmetric: NNCF's MIXED preset, closer to torch than PERFORMANCE's
symmetric activations at the same speed), except the bicubic skip
(`graph.SeparableBicubic`'s four convolutions): that path carries most of the output image,
an exact fixed resize whose rounding would show everywhere, and its few multiply-adds cost
little in float. Fast bias correction is on (NNCF's default).

Calibration (`CALIBRATION`): 12 real low-resolution frames shipped with the package
(streamsr/weights/calibration.safetensors, 128x80, made by scripts/make_calibration.py from
scikit-image's bundled photographs that the sample clips do not use), the same on every machine
and for every video. Quantization ranges come from activation statistics, which follow the
content: generated texture frames (fine noise) gave ranges that cost up to 20 dB of PSNR on real
footage, these photographs do not (docs/benchmarks.md). A fixed set makes the quantized model a
pure function of the weights and the recipe, so it is cached and tested; calibrating on each
input's first frames would give every video its own model and a minutes-long first start.

The quantized model does not depend on the input size (the graph stays dynamic; OpenVINO
compiles it per shape as it does the f32 one), so the cache key is the runtime graph's key
(weights, config, graph version) plus the recipe and the NNCF / OpenVINO versions. The entry is
one file (the IR's .xml and .bin in an uncompressed zip) in the checked `ArtifactCache`, so a
corrupt or stale entry is rebuilt, never trusted.
"""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path

import numpy as np
from torch import nn

from streamsr.inference.backends import BackendError, require_module
from streamsr.inference.backends.cache import ArtifactCache, file_sha256
from streamsr.inference.backends.onnx_export import runtime_key, runtime_onnx

log = logging.getLogger(__name__)

CALIBRATION_FILE = Path(__file__).resolve().parents[2] / "weights" / "calibration.safetensors"
# what the calibration set is; part of the cache key (change it and cached models are rebuilt)
CALIBRATION = {
    "name": "streamsr-photos-v1",  # CALIBRATION_FILE's frames (its sha256 is in the key too)
    "frames": 12,  # how many of them
    "size": None,  # [W, H] to resize them to; None: as stored (128x80; the graph is dynamic)
    "preset": "mixed",  # NNCF: symmetric weights, asymmetric activations
    "ignored": "bicubic skip",
}
SKIP_PREFIX = "/model/skip/"  # the bicubic skip's nodes in the exported graph


def calibration_frames(recipe: dict | None = None, size: tuple[int, int] | None = None,
                       batch: int = 1) -> list[np.ndarray]:
    """The calibration inputs: float32 NCHW (batch, 3, H, W) frames in [0, 1], deterministic;
    `size` (W, H) resizes them for a fixed-shape graph (antialiased bicubic)."""
    import torch
    import torch.nn.functional as F
    from safetensors.numpy import load_file

    recipe = recipe or CALIBRATION
    stored = load_file(str(CALIBRATION_FILE))["frames"][:recipe["frames"]]
    size = size or recipe["size"]
    frames = []
    for rgb in stored:
        t = torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float() / 255
        if size is not None and tuple(size) != (t.shape[-1], t.shape[-2]):
            t = F.interpolate(t, size=(size[1], size[0]), mode="bicubic", antialias=True,
                              align_corners=False).clamp(0, 1)
        frames.append(np.ascontiguousarray(t.repeat(batch, 1, 1, 1).numpy()))
    return frames


def quantize(ov_model, frames: list[np.ndarray], recipe: dict | None = None):
    """`ov_model` with INT8 convolutions (NNCF post-training quantization on `frames`, with
    the recipe's preset)."""
    require_module("nncf", "openvino", "openvino (--precision int8)")
    import nncf

    skip = [op.get_friendly_name() for op in ov_model.get_ordered_ops()
            if op.get_friendly_name().startswith(SKIP_PREFIX)]
    ignored = nncf.IgnoredScope(names=skip, validate=False) if skip else None
    try:
        preset = nncf.QuantizationPreset((recipe or CALIBRATION)["preset"])
        return nncf.quantize(ov_model, nncf.Dataset(frames), subset_size=len(frames),
                             preset=preset, ignored_scope=ignored)
    except Exception as exc:  # noqa: BLE001 - NNCF raises many kinds; the reason is kept
        text = str(exc).strip().splitlines()
        raise BackendError(f"nncf could not quantize the model: {text[0] if text else exc!r}") from None


def int8_key(model: nn.Module, recipe: dict) -> dict:
    """What the quantized graph depends on: the runtime graph, the recipe, the libraries."""
    import nncf
    import openvino as ov

    return {**runtime_key(model), "precision": "int8", "calibration": recipe,
            "calibration_sha256": file_sha256(CALIBRATION_FILE), "nncf": nncf.__version__, "openvino": ov.__version__.split("-")[0]}


def pack_ir(ov_model, path: Path) -> None:
    """Write `ov_model` as one file: its IR's .xml and .bin in an uncompressed zip."""
    import tempfile

    import openvino as ov

    with tempfile.TemporaryDirectory(prefix="streamsr-ir-") as tmp:
        xml = Path(tmp) / "model.xml"
        ov.save_model(ov_model, str(xml), compress_to_fp16=False)
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
            zf.write(xml, "model.xml")
            zf.write(xml.with_suffix(".bin"), "model.bin")


def unpack_ir(core, path: Path):
    """The OpenVINO model of a `pack_ir` file."""
    import openvino as ov

    with zipfile.ZipFile(path) as zf:
        xml = zf.read("model.xml")
        weights = np.frombuffer(zf.read("model.bin"), dtype=np.uint8)
    return core.read_model(xml.decode(), ov.Tensor(weights))


def int8_model(model: nn.Module, core, cache: ArtifactCache | None = None,
               recipe: dict | None = None):
    """The INT8 OpenVINO model of `model`, from the cache, quantized first when missing or bad
    (that takes minutes on two cores; later runs read the file)."""
    require_module("nncf", "openvino", "openvino (--precision int8)")
    cache = cache or ArtifactCache("openvino-int8")
    recipe = recipe or CALIBRATION

    def write(tmp: Path) -> None:
        log.warning("quantizing the model to INT8 with NNCF (once; cached for later runs)")
        source = core.read_model(str(runtime_onnx(model)))
        pack_ir(quantize(source, calibration_frames(recipe), recipe), tmp)

    path = cache.get(int8_key(model, recipe), ".zip", write)
    try:
        return unpack_ir(core, path)
    except (OSError, KeyError, RuntimeError, zipfile.BadZipFile) as exc:
        raise BackendError(f"cannot read the cached INT8 model {path}: {exc}") from None
