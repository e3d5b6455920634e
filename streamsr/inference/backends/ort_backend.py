"""ONNX Runtime on the CPU: the exported graph in an InferenceSession (fp32)."""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import Tensor

from streamsr.errors import ConfigError
from streamsr.inference.backends import BackendError, require
from streamsr.inference.backends.base import BackendForward
from streamsr.inference.backends.onnx_export import runtime_onnx

log = logging.getLogger(__name__)


class OnnxRuntimeForward(BackendForward):
    """One session over the dynamic-shape graph; `threads` intra-op threads, no inter-op pool."""

    name = "onnxruntime"

    def __init__(self, model: torch.nn.Module, dtype: torch.dtype, threads: int) -> None:
        super().__init__(model, torch.device("cpu"), dtype)
        require("onnxruntime")
        if dtype != torch.float32:
            raise ConfigError("the onnxruntime backend runs fp32 on the CPU; use --precision fp32 "
                              "(or auto), or --backend openvino for bf16 on CPUs that have it")
        import onnxruntime as ort

        path = runtime_onnx(model)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only: ORT warns about every unused initializer
        # threads sleep between ops instead of spinning: on a shared CPU spinning steals the
        # cores the other threads (and the decoder and encoder) wait for
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(path), options,
                                                providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
            raise BackendError(f"onnxruntime cannot load the model: {_first_line(exc)}") from None
        self.threads = threads
        log.info("onnxruntime %s: %d threads, fp32", ort.__version__, threads)

    def run(self, x: Tensor) -> Tensor:
        arr = np.ascontiguousarray(x.detach().float().cpu().numpy())
        try:
            out = self.session.run(["hr"], {"frames": arr})[0]
        except Exception as exc:  # noqa: BLE001
            text = _first_line(exc)
            if "allocate" in text.lower() or "memory" in text.lower():
                raise RuntimeError(f"out of memory in onnxruntime: {text}") from None
            raise BackendError(f"onnxruntime failed on a {tuple(arr.shape)} batch: {text}") from None
        return torch.from_numpy(out)


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
