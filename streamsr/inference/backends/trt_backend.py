"""TensorRT on a CUDA GPU: the exported ONNX graph built into an engine per input shape, cached.

An engine is only valid for the GPU model, TensorRT version, precision and shape it was built
for, and building one takes minutes, so built engines are kept in <cache>/tensorrt under a key
of the graph (weights hash, config, graph version), the input shape, the precision, the GPU's
name and compute capability and the TensorRT version (`engine_key`). The cache checks every
entry's bytes against the sha256 recorded when it was stored, and an engine TensorRT refuses to
deserialize is rebuilt once. Inputs and outputs are the engine's float32 CUDA tensors, enqueued
on torch's current stream, so the engine's pinned ring and events order them as before.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

import torch
from torch import Tensor

from streamsr.inference.backends import BackendError, require
from streamsr.inference.backends.base import BackendForward
from streamsr.inference.backends.cache import ArtifactCache, key_name
from streamsr.inference.backends.graph import model_scale, output_shape
from streamsr.inference.backends.onnx_export import runtime_key, runtime_onnx

log = logging.getLogger(__name__)

MAX_SHAPES = 4  # engines kept loaded at once (each holds its own activation memory)
WORKSPACE = 1 << 30  # builder scratch memory


def gpu_identity(device: torch.device, trt_version: str) -> dict:
    """What makes an engine specific to a machine: GPU model, compute capability, TensorRT."""
    props = torch.cuda.get_device_properties(device)
    return {"gpu": props.name, "capability": f"{props.major}.{props.minor}",
            "tensorrt": trt_version}


def engine_key(graph_key: dict, shape: tuple[int, ...], precision: str, gpu: dict) -> dict:
    """The cache key of one engine (see the module docstring)."""
    return {"graph": key_name(graph_key), "shape": list(shape), "precision": precision, **gpu}


class TensorRTForward(BackendForward):
    """The exported model as TensorRT engines (one per input shape) on `device`."""

    name = "tensorrt"

    def __init__(self, model: torch.nn.Module, device: torch.device, dtype: torch.dtype,
                 cache: ArtifactCache | None = None) -> None:
        super().__init__(model, device, dtype)
        require("tensorrt")
        import tensorrt as trt

        self.trt = trt
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.scale = model_scale(model)
        self.graph_key = runtime_key(model)
        self.onnx_path = runtime_onnx(model, key=self.graph_key)
        self.cache = cache or ArtifactCache("tensorrt")
        self.gpu = gpu_identity(device, trt.__version__)
        self.contexts: OrderedDict[tuple[int, ...], tuple[object, object]] = OrderedDict()
        log.info("tensorrt %s on %s (%s): %s", trt.__version__, self.gpu["gpu"], device,
                 self.precision)

    def build(self, shape: tuple[int, ...]) -> bytes:
        """A serialized engine for exactly `shape` (minutes for `paper`)."""
        trt = self.trt
        builder = trt.Builder(self.logger)
        flags = 0
        if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):  # TensorRT < 10
            flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, self.logger)
        if not parser.parse(self.onnx_path.read_bytes()):
            errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
            raise BackendError(f"tensorrt cannot parse the exported model: {errors[0] if errors else '?'}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE)
        if self.dtype == torch.float16:
            config.set_flag(trt.BuilderFlag.FP16)
        elif self.dtype == torch.bfloat16:
            if not hasattr(trt.BuilderFlag, "BF16"):
                raise BackendError(f"tensorrt {trt.__version__} has no bf16; use --precision fp16")
            config.set_flag(trt.BuilderFlag.BF16)
        profile = builder.create_optimization_profile()
        profile.set_shape("frames", shape, shape, shape)
        config.add_optimization_profile(profile)
        log.warning("building a TensorRT engine for input %s in %s (once; cached in %s)",
                    "x".join(map(str, shape)), self.precision, self.cache.folder)
        with torch.cuda.device(self.device):
            serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise BackendError(f"tensorrt could not build an engine for input {shape} "
                               f"({self.precision}); see the TensorRT messages above")
        return bytes(serialized)

    def context(self, shape: tuple[int, ...]):
        """The execution context for `shape`: from the cache, built when missing or bad."""
        if shape in self.contexts:
            self.contexts.move_to_end(shape)
            return self.contexts[shape][1]
        key = engine_key(self.graph_key, shape, self.precision, self.gpu)
        engine = None
        for _attempt in range(2):
            path = self.cache.get(key, ".engine", lambda tmp: tmp.write_bytes(self.build(shape)))
            with torch.cuda.device(self.device):
                engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
            if engine is not None:
                break
            log.warning("cached TensorRT engine %s cannot be loaded: rebuilding it", path.name)
            self.cache.remove(key, ".engine")
        if engine is None:
            raise BackendError(f"tensorrt cannot load the engine it built for input {shape}")
        context = engine.create_execution_context()
        if context is None:
            raise RuntimeError("out of memory: tensorrt could not create an execution context")
        while len(self.contexts) >= MAX_SHAPES:
            self.contexts.popitem(last=False)
        self.contexts[shape] = (engine, context)
        return context

    def run(self, x: Tensor) -> Tensor:
        x = x.detach().float().contiguous()
        shape = tuple(x.shape)
        context = self.context(shape)
        out = torch.empty(output_shape(shape, self.scale), device=x.device, dtype=torch.float32)
        context.set_input_shape("frames", shape)
        context.set_tensor_address("frames", x.data_ptr())
        context.set_tensor_address("hr", out.data_ptr())
        if not context.execute_async_v3(torch.cuda.current_stream(x.device).cuda_stream):
            raise BackendError(f"tensorrt failed to run a {shape} batch")
        return out
