"""Where the numbers come from: CPU/GPU names, core counts, load and library versions."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import shutil
import subprocess
from dataclasses import dataclass

import av
import torch

from streamsr.runtime import available_cpus


@dataclass
class Machine:
    """Where the numbers come from."""

    cpu: str
    cpu_cores: int
    cpus_available: int
    torch_threads: int
    gpu: str | None
    gpu_memory_gib: float | None
    torch: str
    cuda: str | None
    cudnn: int | None
    pyav: str
    ffmpeg: str
    ffmpeg_cli: str | None
    python: str
    platform: str
    load_average: list[float] | None  # 1/5/15-minute load when the run ended (others' work too)


def describe_machine(device: torch.device) -> Machine:
    """CPU/GPU names, core counts and library versions."""
    gpu = mem = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        gpu, mem = props.name, round(props.total_memory / 2**30, 1)
    return Machine(
        cpu=_cpu_name(), cpu_cores=os.cpu_count() or 1, cpus_available=available_cpus(),
        torch_threads=torch.get_num_threads(), gpu=gpu, gpu_memory_gib=mem,
        torch=torch.__version__, cuda=torch.version.cuda,
        cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        pyav=av.__version__, ffmpeg=str(getattr(av, "ffmpeg_version_info", "unknown")),
        ffmpeg_cli=_ffmpeg_cli_version(), python=platform.python_version(),
        platform=platform.platform(), load_average=_load_average())


def now() -> str:
    """The current UTC time, ISO 8601 to the second, with a Z."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ffmpeg_cli_version() -> str | None:
    exe = shutil.which("ffmpeg")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "-version"], capture_output=True, text=True, timeout=10).stdout
        return out.splitlines()[0] if out else exe
    except (OSError, subprocess.SubprocessError):
        return exe


def _load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None
