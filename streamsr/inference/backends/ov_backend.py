"""OpenVINO on the CPU: the exported graph compiled per input shape, compiled blobs cached.

Precision is what the user asked for, never OpenVINO's own default (bf16 on CPUs with
avx512_bf16 or AMX, which changed `lite`'s output by up to 0.04): fp32 sets the inference
precision hint to f32; bf16 and fp16 set bf16 / f16 and are refused on a CPU that lacks them
(OpenVINO would silently run f32); int8 runs the graph quantized by NNCF (`ov_int8`: INT8
convolutions, f32 elsewhere). Each input shape (the stream's batches, a short last batch,
tiles) gets its own statically shaped compiled model, which OpenVINO runs faster than a dynamic
one; compiled models are cached in <cache>/openvino (OpenVINO's CACHE_DIR, which checks the
model, the settings and its own version, and recompiles when a blob does not fit or fails).

Threads: with one thread, one synchronous request per batch. With N > 1 threads a batch of
several frames runs as single-frame requests on N streams of one thread each (OpenVINO's
throughput mode) instead of one request whose N threads meet after every layer, which ran
faster on the shared 2-core machine (docs/benchmarks.md has the measurement).
"""

from __future__ import annotations

import logging
from collections import OrderedDict

import numpy as np
import torch
from torch import Tensor

from streamsr.errors import ConfigError
from streamsr.inference.backends import BackendError, require
from streamsr.inference.backends.base import BackendForward
from streamsr.inference.backends.cache import cache_root
from streamsr.inference.backends.onnx_export import runtime_onnx

log = logging.getLogger(__name__)

HINTS = {torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16"}
NEEDS_CAPABILITY = {"bf16": "BF16", "f16": "FP16"}
MAX_SHAPES = 6  # compiled shapes kept at once (each holds its own buffers)


class OpenVinoForward(BackendForward):
    """The exported model on OpenVINO's CPU plugin with `threads` inference threads."""

    name = "openvino"

    def __init__(self, model: torch.nn.Module, dtype: torch.dtype, threads: int,
                 int8: bool = False) -> None:
        super().__init__(model, torch.device("cpu"), dtype)
        require("openvino")
        import openvino as ov

        self.ov = ov
        self.core = ov.Core()
        self.int8 = int8
        self.hint = "f32" if int8 else HINTS[dtype]
        caps = list(self.core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
        need = NEEDS_CAPABILITY.get(self.hint)
        if need and need not in caps:
            raise ConfigError(f"this CPU cannot run OpenVINO in {self.precision} (its "
                              f"capabilities: {', '.join(caps)}); use --precision fp32")
        self.threads = threads
        self.cache_dir = cache_root() / "openvino"
        if int8:
            from streamsr.inference.backends.ov_int8 import int8_model

            self.model = int8_model(model, self.core)
        else:
            self.model = self.core.read_model(str(runtime_onnx(model)))
        self.requests: OrderedDict[tuple[int, ...], object] = OrderedDict()
        log.info("openvino %s: %d threads, inference precision %s%s", ov.__version__, threads,
                 self.hint, " (INT8 convolutions)" if int8 else "")

    @property
    def precision(self) -> str:
        return "int8" if self.int8 else super().precision

    def settings(self, streams: int = 1) -> dict:
        mode = {"PERFORMANCE_HINT": "LATENCY"} if streams == 1 else {
            "PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": streams}
        return {"INFERENCE_PRECISION_HINT": self.hint, "INFERENCE_NUM_THREADS": self.threads,
                "CACHE_DIR": str(self.cache_dir), **mode}

    def request(self, shape: tuple[int, ...], streams: int = 1):
        """The model compiled for `shape` (on first use): an infer request, or with several
        streams a queue of that many requests."""
        key = (*shape, streams)
        if key in self.requests:
            self.requests.move_to_end(key)
            return self.requests[key]
        model = self.model.clone()
        model.reshape({0: self.ov.PartialShape(list(shape))})
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            compiled = self.core.compile_model(model, "CPU", self.settings(streams))
        except OSError as exc:
            raise ConfigError(f"cannot create the model cache {self.cache_dir} "
                              f"({exc.strerror or exc}); set STREAMSR_CACHE_DIR") from None
        except RuntimeError as exc:
            raise BackendError(f"openvino cannot compile the model for input {shape}: "
                               f"{_first_line(exc)}") from None
        log.info("openvino compiled the model for input %s%s", "x".join(map(str, shape)),
                 f" on {streams} streams" if streams > 1 else "")
        while len(self.requests) >= MAX_SHAPES:
            self.requests.popitem(last=False)
        self.requests[key] = (compiled.create_infer_request() if streams == 1
                              else self.ov.AsyncInferQueue(compiled, streams))
        return self.requests[key]

    def run(self, x: Tensor) -> Tensor:
        arr = np.ascontiguousarray(x.detach().float().cpu().numpy())
        try:
            if self.threads > 1 and arr.shape[0] > 1:
                return torch.from_numpy(self._run_streams(arr))
            req = self.request(tuple(arr.shape))
            req.infer({0: arr})
        except RuntimeError as exc:
            text = _first_line(exc)
            if "allocate" in text.lower() or "memory" in text.lower():
                raise RuntimeError(f"out of memory in openvino: {text}") from None
            raise BackendError(f"openvino failed on a {arr.shape} batch: {text}") from None
        return torch.from_numpy(np.array(req.get_output_tensor(0).data, copy=True))

    def _run_streams(self, arr: np.ndarray) -> np.ndarray:
        """Each frame its own request, `threads` of them at a time on one-thread streams."""
        queue = self.request((1, *arr.shape[1:]), streams=self.threads)
        outs: list[np.ndarray | None] = [None] * arr.shape[0]

        def done(req, index: int) -> None:
            outs[index] = np.array(req.get_output_tensor(0).data, copy=True)

        queue.set_callback(done)
        for i in range(arr.shape[0]):
            queue.start_async({0: arr[i:i + 1]}, i)
        queue.wait_all()
        if any(o is None for o in outs):
            raise RuntimeError("an OpenVINO request returned no output")
        return np.concatenate(outs)


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[0][:300] if lines else type(exc).__name__
