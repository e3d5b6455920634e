"""One measured part (`Timing`) and the progress callback every part reports through."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

log = logging.getLogger("streamsr.bench")

Progress = Callable[[str], None]


@dataclass
class Timing:
    """One measured part: `frames` processed in `seconds` (warm), so `fps` = frames / seconds."""

    fps: float
    frames: int
    seconds: float
    detail: dict = field(default_factory=dict)


def sync(device: torch.device) -> None:
    """Wait for queued CUDA work, so a wall clock read after it covers that work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def said(t: Timing) -> str:
    """A part's result as the progress line prints it."""
    return f"  {t.fps:.3g} fps ({t.frames} frames in {t.seconds:.2f} s)"


def announce(progress: Progress | None, text: str) -> None:
    """Log a step and hand it to the caller's progress callback, if any."""
    log.info("bench: %s", text)
    if progress is not None:
        progress(text)
