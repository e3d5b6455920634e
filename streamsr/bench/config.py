"""What `streamsr bench` measures (`BenchConfig`), its defaults, and the parsers for its flags."""

from __future__ import annotations

import shutil
from dataclasses import dataclass

from streamsr.bench.encoding import encode_options
from streamsr.errors import ConfigError
from streamsr.inference.graphs import CUDA_GRAPH_MODES
from streamsr.video.encoder import check_encoder
from streamsr.video.source import DECODERS

PARTS = ("model", "pipeline", "naive", "io")
SWEEP_RESOLUTIONS = ((320, 180), (480, 270), (960, 540))
SWEEP_BATCHES = {"cuda": (1, 2, 4, 8), "cpu": (1, 2, 4)}
DEFAULT_FRAMES = {"cuda": 96, "cpu": 8}
MIN_IO_FRAMES = 48  # the I/O parts are cheap: a longer clip keeps start-up costs from dominating
FFMPEG_METHODS = ("auto", "pyav", "cli")


@dataclass
class BenchConfig:
    """What to measure: clip size and length, model, engine settings, which parts."""

    resolution: tuple[int, int] = (320, 180)  # (width, height) of the input clip
    frames: int | None = None  # None: 96 on CUDA, 8 on CPU
    io_frames: int | None = None  # frames for the I/O-only parts; None: max(frames, 48)
    model: str = "lite"  # lite | paper | tiny | path to a weights file
    device: str = "auto"
    precision: str = "auto"
    batch: int | None = None  # None: the engine's choice
    compile: bool = False
    cuda_graphs: str = "auto"  # auto | on | off (engine and pipeline; no effect on CPU)
    backend: str = "torch"  # what runs the model (engine and pipeline), see streamsr.backends
    threads: int | None = None  # CPU threads of the engine and pipeline (None: the engine's)
    decoder: str = "software"  # the pipeline parts' video decoder: software | cuda | auto
    codec: str = "libx264"  # encoder of every part that writes video (pipeline, naive, FFmpeg)
    encoder_preset: str = "medium"  # its speed preset (p1-p7 for NVENC)
    parts: tuple[str, ...] = PARTS
    ffmpeg: str = "auto"  # reference for the I/O part: auto (cli if installed), pyav, cli
    seed: int = 0
    workdir: str | None = None  # where clips and outputs go (default: a temp dir, removed after)

    def check(self) -> None:
        """Raise ConfigError for values that cannot be benchmarked."""
        w, h = self.resolution
        if w < 16 or h < 16 or w % 2 or h % 2:
            raise ConfigError(f"resolution must be even and at least 16x16, got {w}x{h}")
        for name in ("frames", "io_frames"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name.replace('_', ' ')} must be at least 1, got {value}")
        if self.batch is not None and self.batch < 1:
            raise ConfigError(f"batch must be at least 1, got {self.batch}")
        unknown = set(self.parts) - set(PARTS)
        if unknown or not self.parts:
            raise ConfigError(f"parts must be among {', '.join(PARTS)}, got {', '.join(self.parts)}")
        if self.ffmpeg not in FFMPEG_METHODS:
            raise ConfigError(f"ffmpeg must be one of {', '.join(FFMPEG_METHODS)}, got {self.ffmpeg}")
        if self.decoder not in DECODERS:
            raise ConfigError(f"decoder must be one of {', '.join(DECODERS)}, got {self.decoder}")
        if self.cuda_graphs not in CUDA_GRAPH_MODES:
            raise ConfigError(f"cuda_graphs must be one of {', '.join(CUDA_GRAPH_MODES)}, "
                              f"got {self.cuda_graphs}")
        if self.ffmpeg == "cli" and shutil.which("ffmpeg") is None:
            raise ConfigError("--ffmpeg cli asked for, but no `ffmpeg` program is installed")
        check_encoder(encode_options(self.codec, self.encoder_preset))  # NVENC: can it open?


def parse_resolution(text: str) -> tuple[int, int]:
    """'320x180' -> (320, 180)."""
    try:
        w, h = (int(v) for v in text.lower().replace("×", "x").split("x"))
    except ValueError:
        raise ConfigError(f"resolution must look like 320x180, got {text!r}") from None
    return w, h


def parse_batches(text: str | None) -> tuple[int, ...] | None:
    """'1,2,4' -> (1, 2, 4); None stays None."""
    if text is None:
        return None
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"batches must look like 1,2,4, got {text!r}") from None
