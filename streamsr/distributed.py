"""Who am I in a torchrun job: rank and world from the environment, a process group, a device.

torchrun (`python -m torch.distributed.run`) starts one process per GPU and tells each its
place through RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE. Inference only exchanges small
Python objects (a segment plan, per-rank results), so the group always carries a gloo backend
for CPU objects; on CUDA it also gets NCCL for device tensors. The timeout is long: a rank that
finishes its share early waits at the next collective for the slowest one, which can take hours
on a long video (STREAMSR_DIST_TIMEOUT, seconds, overrides it).
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from streamsr.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 7 * 24 * 3600.0  # ranks wait for each other this long at a collective


@dataclass(frozen=True)
class DistEnv:
    """This process's place in the job (all zeros and ones for a plain single process)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        """True on the process that plans, joins and reports (rank 0)."""
        return self.rank == 0


def _int(environ: Mapping[str, str], key: str, default: int) -> int:
    value = environ.get(key)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"environment variable {key}={value!r} is not an integer") from None


def dist_env(environ: Mapping[str, str] | None = None) -> DistEnv:
    """Rank/world from torchrun's environment variables (defaults: a single process)."""
    env = os.environ if environ is None else environ
    world = _int(env, "WORLD_SIZE", 1)
    rank = _int(env, "RANK", 0)
    local_rank = _int(env, "LOCAL_RANK", 0)
    local_world = _int(env, "LOCAL_WORLD_SIZE", world)
    if world < 1 or not 0 <= rank < world or local_rank < 0:
        raise ConfigError(f"inconsistent torchrun environment: RANK={rank} WORLD_SIZE={world} "
                          f"LOCAL_RANK={local_rank}")
    return DistEnv(rank, world, local_rank, max(1, local_world))


def device_for(env: DistEnv, device: str = "auto") -> str:
    """This rank's device: "auto"/"cuda" become cuda:LOCAL_RANK when there are GPUs.

    An explicit "cuda:N" or "cpu" is kept as given (the user placed the process themselves).
    """
    if device in ("auto", "cuda") and torch.cuda.is_available():
        count = torch.cuda.device_count()
        if env.local_rank >= count:
            raise ConfigError(f"LOCAL_RANK {env.local_rank} has no GPU of its own ({count} GPUs on "
                              f"this machine); start at most {count} processes per node")
        return f"cuda:{env.local_rank}"
    if device == "auto":
        return "cpu"
    return device


def backend_for(device: str) -> str:
    """gloo for CPU objects, plus NCCL for tensors on CUDA devices."""
    return "cpu:gloo,cuda:nccl" if device.startswith("cuda") else "gloo"


def timeout() -> datetime.timedelta:
    """How long a rank waits for the others at a collective."""
    text = os.environ.get("STREAMSR_DIST_TIMEOUT")
    try:
        seconds = float(text) if text else DEFAULT_TIMEOUT_S
    except ValueError:
        raise ConfigError(f"STREAMSR_DIST_TIMEOUT={text!r} is not a number of seconds") from None
    return datetime.timedelta(seconds=seconds)


class ProcessGroup:
    """Context manager: join torchrun's process group (when there is one), leave it at the end.

    A group that already exists (started by the caller) is used and left alone.
    """

    def __init__(self, env: DistEnv, device: str = "cpu") -> None:
        self.env = env
        self.device = device
        self.owned = False

    def __enter__(self) -> ProcessGroup:
        if self.env.distributed and not dist.is_initialized():
            if self.device.startswith("cuda"):
                torch.cuda.set_device(torch.device(self.device))
            dist.init_process_group(backend_for(self.device), timeout=timeout(),
                                    rank=self.env.rank, world_size=self.env.world_size)
            self.owned = True
            log.info("rank %d/%d joined the process group (%s, device %s)", self.env.rank,
                     self.env.world_size, backend_for(self.device), self.device)
        return self

    def __exit__(self, *exc) -> None:
        if self.owned and dist.is_initialized():
            dist.destroy_process_group()
        self.owned = False

    # The collectives below are no-ops (or trivial) for a single process.

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        """`obj` from rank `src` on every rank (picklable objects)."""
        if not self.env.distributed:
            return obj
        box = [obj if self.env.rank == src else None]
        dist.broadcast_object_list(box, src=src)
        return box[0]

    def all_gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, indexed by rank, on every rank."""
        if not self.env.distributed:
            return [obj]
        out: list[Any] = [None] * self.env.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        """Wait until every rank got here."""
        self.all_gather(None)
