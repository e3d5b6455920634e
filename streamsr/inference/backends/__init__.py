"""Inference backends: what runs the model inside the engine.

`torch` is the engine's own eager (or compiled) model. The others run the same model exported to
ONNX (`onnx_export`, exact to float rounding, cached): `openvino` and `onnxruntime` on the CPU,
`tensorrt` on a CUDA GPU. Each is a model call with the interface of the engine's torch call
(float NCHW in [0, 1] -> float32 NCHW x scale), so batching, tiling, 4:2:0 packing and every
pipeline guarantee stay the engine's.

`auto` is a rule, not a measurement at start-up (which would cost a compile of every backend):
on a CUDA device, TensorRT when installed, else torch; on the CPU, OpenVINO when installed,
else torch. ONNX Runtime is never chosen by `auto`: on the 2-core AVX2 machine it ran `lite` no
faster than torch, while OpenVINO was faster (docs/benchmarks.md).
"""

from __future__ import annotations

import importlib.util

import torch

from streamsr.errors import ConfigError, StreamsrError

BACKENDS = ("torch", "openvino", "onnxruntime", "tensorrt")
BACKEND_CHOICES = (*BACKENDS, "auto")
# backend -> (Python modules it needs, the pip extra that installs them)
NEEDS = {
    "openvino": (("openvino", "onnx"), "openvino"),
    "onnxruntime": (("onnxruntime", "onnx"), "onnx"),
    "tensorrt": (("tensorrt", "onnx"), "tensorrt"),
}


class BackendMissing(ConfigError):
    """A backend was asked for whose packages are not installed."""


class BackendError(StreamsrError):
    """A backend could not build or run the model (the runtime's own reason is in the message)."""


def require_module(module: str, extra: str, backend: str | None = None) -> None:
    """Raise one line naming the pip extra when `module` cannot be imported."""
    if importlib.util.find_spec(module) is None:
        who = f"the {backend} backend needs" if backend else "this needs"
        raise BackendMissing(f"{who} {module}, which is not installed: "
                             f"pip install 'streamsr[{extra}]'")


def installed(backend: str) -> bool:
    """True when `backend`'s packages can be imported (torch always)."""
    if backend == "torch":
        return True
    modules, _ = NEEDS[backend]
    return all(importlib.util.find_spec(m) is not None for m in modules)


def require(backend: str) -> None:
    """Raise `BackendMissing` (one line, naming the extra) unless `backend` is installed."""
    if backend == "torch":
        return
    modules, extra = NEEDS[backend]
    for module in modules:
        require_module(module, extra, backend)


def resolve_backend(name: str, device: torch.device) -> str:
    """The backend to use on `device` for the option value `name` (see the module docstring);
    an explicit backend that cannot run there, or is not installed, is a ConfigError."""
    if name not in BACKEND_CHOICES:
        raise ConfigError(f"unknown backend {name!r}; use {', '.join(BACKEND_CHOICES)}")
    if name == "auto":
        if device.type == "cuda":
            return "tensorrt" if installed("tensorrt") else "torch"
        return "openvino" if installed("openvino") else "torch"
    if name in ("openvino", "onnxruntime") and device.type != "cpu":
        raise ConfigError(f"the {name} backend runs on the CPU (--device cpu); on {device} use "
                          f"--backend tensorrt or torch")
    if name == "tensorrt" and device.type != "cuda":
        raise ConfigError("the tensorrt backend needs a CUDA GPU; on the CPU use --backend "
                          "openvino, onnxruntime or torch")
    require(name)
    return name


def split_int8(precision: str) -> tuple[str, bool]:
    """(the precision torch sees, whether INT8 was asked for): `int8` is OpenVINO's quantized
    model (`ov_int8`); the engine's own torch calls (its memory trial) stay fp32."""
    return ("fp32", True) if precision == "int8" else (precision, False)


def check_int8(backend: str) -> None:
    """INT8 is a quantized OpenVINO model: refuse it on any other backend, and say what is
    missing (nncf) in one line."""
    if backend != "openvino":
        raise ConfigError(f"--precision int8 needs --backend openvino (got {backend}); INT8 is "
                          f"the OpenVINO model quantized with NNCF")
    require_module("nncf", "openvino", "openvino (--precision int8)")


def make_forward(backend: str, model: torch.nn.Module, device: torch.device, dtype: torch.dtype,
                 threads: int, int8: bool = False):
    """The engine's model call for a non-torch backend (see `base.BackendForward`)."""
    if int8:
        check_int8(backend)
    if backend == "openvino":
        from streamsr.inference.backends.ov_backend import OpenVinoForward

        return OpenVinoForward(model, dtype, threads, int8=int8)
    if backend == "onnxruntime":
        from streamsr.inference.backends.ort_backend import OnnxRuntimeForward

        return OnnxRuntimeForward(model, dtype, threads)
    if backend == "tensorrt":
        from streamsr.inference.backends.trt_backend import TensorRTForward

        return TensorRTForward(model, device, dtype)
    raise ConfigError(f"no model call for backend {backend!r}")
