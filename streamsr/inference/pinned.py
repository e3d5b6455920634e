"""The CUDA hand-over of uint8 batches: pinned host buffers, double-buffered, with the copies on
their own streams, so the upload of batch n+1 and the read-back of batch n-1 overlap the model
on batch n."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext

import numpy as np
import torch
from torch import Tensor

from streamsr.inference.batch import FrameBatch, check_frames


class _Ring:
    """Two slots of pinned input, device input and pinned output buffers, and their events."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.compute = torch.cuda.current_stream(device)
        self.copy = torch.cuda.Stream(device)
        self.readback = torch.cuda.Stream(device)
        self.pinned_in: list[Tensor | None] = [None, None]
        self.pinned_out: list[Tensor | None] = [None, None]
        self.device_in: list[Tensor | None] = [None, None]
        self.uploaded = [torch.cuda.Event(), torch.cuda.Event()]  # H2D of the slot done
        self.consumed = [torch.cuda.Event(), torch.cuda.Event()]  # the model no longer reads device_in
        self.downloaded = [torch.cuda.Event(), torch.cuda.Event()]  # D2H into pinned_out done

    def upload(self, slot: int, frames: np.ndarray) -> Tensor:
        """`frames` on the device (the copy ordered on the compute stream, not waited for)."""
        nbytes = frames.nbytes
        # Host side: wait until slot's previous upload (batch n-2) left the pinned buffer.
        self.uploaded[slot].synchronize()
        self.pinned_in[slot] = _ensure(self.pinned_in[slot], nbytes, pin=True)
        host = self.pinned_in[slot][:nbytes].view(frames.shape)
        host.copy_(torch.from_numpy(frames))
        grown = _ensure(self.device_in[slot], nbytes, device=self.device, stream=self.copy)
        if grown is not self.device_in[slot]:
            grown.record_stream(self.compute)  # allocated on `copy`, read on `compute`
            self.device_in[slot] = grown
        dev = self.device_in[slot][:nbytes].view(frames.shape)
        with torch.cuda.stream(self.copy):
            self.copy.wait_event(self.consumed[slot])  # batch n-2's model call is done with dev
            dev.copy_(host, non_blocking=True)
            self.uploaded[slot].record(self.copy)
        self.compute.wait_event(self.uploaded[slot])
        return dev

    def download(self, slot: int, out: Tensor) -> None:
        """Start reading `out` back into the slot's pinned output once the model is done."""
        self.consumed[slot].record(self.compute)
        self.readback.wait_event(self.consumed[slot])
        out_bytes = out.numel()
        self.pinned_out[slot] = _ensure(self.pinned_out[slot], out_bytes, pin=True)
        with torch.cuda.stream(self.readback):
            self.pinned_out[slot][:out_bytes].view(out.shape).copy_(out, non_blocking=True)
            self.downloaded[slot].record(self.readback)
        out.record_stream(self.readback)  # keep `out` alive until the copy has read it

    def collect(self, slot: int, shape: tuple[int, ...]) -> np.ndarray:
        """Wait for one read-back (an event, not a device sync) and copy it out of pinned memory."""
        self.downloaded[slot].synchronize()
        buf = self.pinned_out[slot]
        assert buf is not None
        return buf[:math.prod(shape)].view(shape).numpy().copy()


def map_pinned(batches: Iterable[FrameBatch], infer: Callable[[Tensor], Tensor],
               device: torch.device) -> Iterator[FrameBatch]:
    """`infer` (uint8 NHWC on the device -> its output on the device) over uint8 batches, one
    result per batch, in order, each with its batch's frames; H2D/D2H on copy streams, ordered
    by events."""
    ring = _Ring(device)
    pending: tuple[int, tuple[int, ...], FrameBatch] | None = None  # awaiting yield
    for n, batch in enumerate(batches):
        slot = n % 2
        frames = check_frames(batch.pixels)
        if frames.dtype != np.uint8:
            raise TypeError("the CUDA pinned ring takes uint8 frames; a stream is one dtype")
        dev = ring.upload(slot, frames)
        with torch.inference_mode():
            out = infer(dev)
        ring.download(slot, out)
        if pending is not None:
            yield pending[2].with_pixels(ring.collect(*pending[:2]))
        pending = (slot, tuple(out.shape), batch)
    if pending is not None:
        yield pending[2].with_pixels(ring.collect(*pending[:2]))


def _ensure(buf: Tensor | None, nbytes: int, *, pin: bool = False, device: torch.device | None = None,
            stream: torch.cuda.Stream | None = None) -> Tensor:
    """A flat uint8 buffer of at least `nbytes` (reused when big enough, grown otherwise)."""
    if buf is not None and buf.numel() >= nbytes:
        return buf
    if device is not None:
        with torch.cuda.stream(stream) if stream is not None else nullcontext():
            return torch.empty(nbytes, dtype=torch.uint8, device=device)
    return torch.empty(nbytes, dtype=torch.uint8, pin_memory=pin)
