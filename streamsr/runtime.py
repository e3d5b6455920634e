"""The process runtime shared by inference, training and benchmarks.

One place decides, for every entry point:

- the device and the numeric precision (`resolve_device`, `resolve_precision`: one policy, with
  the single difference between inference and training written down in one function);
- what SIGINT/SIGTERM mean (`StopSignals`: the first one asks the work to stop cleanly, a
  second one interrupts at once);
- this process's place in a torchrun job (`DistEnv`, `dist_env`, `device_for`, `ProcessGroup`);
- how many CPU threads torch uses (`available_cpus`, `pin_cpu_threads`, `use_cpu_threads`).

torchrun (`python -m torch.distributed.run`) starts one process per GPU and tells each its
place through RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE. The process group always
carries a gloo backend for CPU objects and tensors; on CUDA it also gets NCCL for device
tensors. The timeout is long: an inference rank that finishes its share early waits at the next
collective for the slowest one, which can take hours on a long video (STREAMSR_DIST_TIMEOUT,
seconds, overrides it). Training ranks meet at every step, and when one dies torchrun ends the
others, so the same long timeout costs training nothing.
"""

from __future__ import annotations

import datetime
import logging
import math
import os
import signal
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from streamsr.errors import ConfigError

log = logging.getLogger(__name__)

PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
DEFAULT_TIMEOUT_S = 7 * 24 * 3600.0  # ranks wait for each other this long at a collective


# --- device and precision ------------------------------------------------------------------------

def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; anything else as given (checked)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} asked for, but CUDA is not available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device {name!r} does not exist ({torch.cuda.device_count()} GPUs)")
    elif device.type != "cpu":
        raise ConfigError(f"unsupported device {name!r}; use cpu, cuda or cuda:N")
    return device


def _bf16_supported(device: torch.device) -> bool:
    with torch.cuda.device(device):
        return torch.cuda.is_bf16_supported()


def resolve_precision(name: str, device: torch.device, training: bool = False) -> torch.dtype:
    """The compute dtype for `name` (auto, bf16, fp16, fp32) on `device`.

    'auto' is bf16 on GPUs that support it and fp32 on the CPU, for inference and training
    alike. On an older GPU without bf16 the two differ, on purpose: inference takes fp16 (no
    gradients, so fp16's narrow range only has to hold activations, and it is twice as fast as
    fp32), while training stays in fp32, because fp16 gradients need loss scaling and an
    unattended run can still diverge hours in; fp16 training is there when asked for
    (`precision = "fp16"`, with a gradient scaler). Training also refuses what it cannot do:
    fp16 on the CPU, bf16 on a GPU without it.
    """
    if name == "auto":
        if device.type != "cuda":
            return torch.float32
        if _bf16_supported(device):
            return torch.bfloat16
        return torch.float32 if training else torch.float16
    try:
        dtype = PRECISIONS[name]
    except KeyError:
        raise ConfigError(f"unknown precision {name!r}; use auto, bf16, fp16 or fp32") from None
    if training and dtype == torch.float16 and device.type != "cuda":
        raise ConfigError("precision fp16 needs a CUDA GPU; use bf16 or fp32 on the CPU")
    if training and dtype == torch.bfloat16 and device.type == "cuda" and not _bf16_supported(device):
        raise ConfigError("this GPU does not support bf16; use --set precision=fp16 or fp32")
    return dtype


# --- stop signals --------------------------------------------------------------------------------

class StopSignals:
    """Turns SIGINT/SIGTERM into a flag while active (main thread only), then restores handlers.

    The first signal sets `signum` and `event` and logs `message`; the work checks the flag at
    its next safe point (the pipeline finalises its output, the trainer saves a checkpoint). A
    second signal restores the previous handlers and raises KeyboardInterrupt at once.
    """

    def __init__(self, enabled: bool = True,
                 message: str = "finishing the frames in flight and finalising the output") -> None:
        self.signum: int | None = None
        self.event = threading.Event()
        self.message = message
        self._old: dict[int, object] = {}
        self.enabled = enabled and threading.current_thread() is threading.main_thread()

    def _handle(self, signum, _frame) -> None:
        if self.signum is not None:  # second signal: stop waiting politely
            self.restore()
            raise KeyboardInterrupt
        self.signum = signum
        self.event.set()
        log.warning("%s received: %s", signal.Signals(signum).name, self.message)

    def __enter__(self) -> StopSignals:
        if self.enabled:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        self.restore()

    def restore(self) -> None:
        """Put back the handlers that were there before."""
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()


# --- torchrun environment ------------------------------------------------------------------------

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
        """True on the process that plans, joins, logs and saves (rank 0)."""
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


# --- CPU threads ---------------------------------------------------------------------------------

def available_cpus() -> int:
    """CPUs this process may use: affinity mask and cgroup quota, not the host's core count."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()
        if quota != "max":
            n = min(n, max(1, math.floor(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


_pinned_threads: int | None = None  # the CLI's --threads: this process's count, fixed


def pin_cpu_threads(threads: int) -> None:
    """Use exactly `threads` torch intra-op threads in this process (the CLI's `--threads`):
    every CPU engine keeps that count and the pipeline does not measure another."""
    global _pinned_threads
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"threads must be a whole number of at least 1, got {threads!r}")
    _pinned_threads = threads
    torch.set_num_threads(threads)


def cpu_threads_fixed() -> bool:
    """True when the user chose the thread count: `--threads` or OMP_NUM_THREADS."""
    return _pinned_threads is not None or bool(os.environ.get("OMP_NUM_THREADS"))


def use_cpu_threads(threads: int | None = None) -> int:
    """Set torch's intra-op thread count for a CPU engine and return it.

    `threads` (EngineConfig.threads) wins, then `--threads` (`pin_cpu_threads`), then
    OMP_NUM_THREADS (torch already follows it); otherwise every CPU this process may use.
    The load average is no guide: it lags by minutes and counts jobs that ended long ago, so
    the pipeline instead measures the model with one thread and with all of them in the run
    itself and keeps the faster. Decode and encode run in FFmpeg's own threads and mostly wait
    on bounded queues; on CPU the model is the bottleneck by orders of magnitude.
    """
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ConfigError(f"threads must be a whole number of at least 1, got {threads!r}")
    elif _pinned_threads is not None:
        threads = _pinned_threads
    elif os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    else:
        threads = available_cpus()
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    log.info("torch intra-op threads: %d (%d CPUs available)", threads, available_cpus())
    return threads
