"""Checkpoints of a training run: written atomically, pruned, read back with a fallback.

A checkpoint holds the model, optimizer, scheduler, grad scaler, RNG states and the position in
the epoch's sample order, so a resumed run continues exactly where it stopped. Files are
OUT/checkpoints/step-NNNNNNNN.pt; the last `keep_last` are kept.
"""

from __future__ import annotations

import logging
import os
import random
import re
from pathlib import Path

import numpy as np
import torch

from streamsr.errors import ConfigError, OutputError, WeightsError

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "streamsr-checkpoint-v1"
_CKPT_RE = re.compile(r"^step-(\d{8})\.pt$")
_CHECKPOINT_KEYS = {"model", "optimizer", "scheduler", "scaler", "rng", "sampler", "step", "best",
                    "recipe"}


def rng_state() -> dict:
    """Every RNG the run draws from (torch, Python, numpy, CUDA), as checkpointable values."""
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
             "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                       "has_gauss": int(np_state[3]), "gauss": float(np_state[4])}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Put back what `rng_state` saved."""
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), None))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def list_checkpoints(out: str | os.PathLike) -> list[Path]:
    """Step checkpoints of a run, oldest first."""
    folder = Path(out) / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if _CKPT_RE.match(p.name)), key=lambda p: p.name)


def save_checkpoint(state: dict, out: Path, step: int, keep_last: int) -> Path:
    """Write step-N.pt atomically (temp file, fsync, rename), then prune to the last `keep_last`."""
    folder = out / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step-{step:08d}.pt"
    tmp = folder / f".{path.name}.tmp"
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise OutputError(f"cannot write checkpoint {path}: {exc.strerror}") from None
    for old in list_checkpoints(out)[:-keep_last]:
        old.unlink(missing_ok=True)
    return path


def load_latest_checkpoint(out: str | os.PathLike) -> tuple[dict, Path]:
    """The newest readable checkpoint of a run; a corrupt one is skipped with a warning."""
    paths = list_checkpoints(out)
    if not paths:
        raise ConfigError(f"nothing to resume: {out} has no checkpoints")
    for path in reversed(paths):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
                raise ValueError("not a streamsr checkpoint")
            missing = sorted(_CHECKPOINT_KEYS - set(state))
            if missing or not isinstance(state["recipe"], dict):
                raise ValueError(f"incomplete checkpoint (missing {missing or ['recipe']})")
            return state, path
        except Exception as exc:  # truncated zip, bad pickle, wrong content: try the one before
            log.warning("checkpoint %s is unreadable (%s); falling back to the previous one",
                        path, str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__)
    raise WeightsError(f"every checkpoint in {Path(out) / 'checkpoints'} is unreadable")


__all__ = ["CHECKPOINT_FORMAT", "list_checkpoints", "load_latest_checkpoint", "rng_state",
           "save_checkpoint", "set_rng_state"]
