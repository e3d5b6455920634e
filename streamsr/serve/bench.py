"""N streams through one `serve` against N separate `upscale` processes, on the same machine
in the same run: what sharing one model buys.

Both sides upscale the same generated clip N times with the same model, device and encoder.
The server gets all the CPU threads for its one engine; each process gets an equal share
(threads / N), so both use the same CPU budget. Aggregate fps is N x frames over the wall
time from start (model loading included, Python and torch imports excluded, on both sides)
to the last output finalised.
Latency (decode to write, per frame) is measured inside the server; the processes run the
plain file pipeline, which does not report it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from streamsr.bench.clip import make_clip
from streamsr.errors import StreamsrError
from streamsr.runtime import available_cpus
from streamsr.serve.config import Outputs, ServeConfig, ServerConfig, StreamConfig
from streamsr.serve.server import Server
from streamsr.video.encoder import EncodeOptions


@dataclass(frozen=True)
class StreamsBench:
    streams: int
    frames: int  # per stream
    resolution: tuple[int, int]
    threads: int
    serve_seconds: float
    serve_fps: float
    serve_latency_mean_s: float
    serve_batch_fill: float
    processes_seconds: float
    processes_fps: float

    @property
    def ratio(self) -> float:
        return self.serve_fps / self.processes_fps if self.processes_fps else float("inf")

    def as_dict(self) -> dict:
        return {**asdict(self), "ratio": round(self.ratio, 3)}

    def table(self) -> str:
        w, h = self.resolution
        return "\n".join([
            f"{self.streams} streams x {self.frames} frames of {w}x{h}, {self.threads} CPU threads",
            "| run | wall s | aggregate fps | mean latency s |",
            "|---|---|---|---|",
            f"| serve (one shared engine) | {self.serve_seconds:.1f} | {self.serve_fps:.2f} | "
            f"{self.serve_latency_mean_s:.3f} |",
            f"| {self.streams} upscale processes | {self.processes_seconds:.1f} | "
            f"{self.processes_fps:.2f} | n/a |",
            f"serve / processes: {self.ratio:.2f}x (batch fill {self.serve_batch_fill:.2f})"])


def bench_streams(n: int, *, resolution: tuple[int, int] = (160, 90), frames: int = 24,
                  model: str = "lite", device: str = "cpu", batch: int | None = None,
                  encoder_preset: str = "veryfast", workdir: str | os.PathLike | None = None
                  ) -> StreamsBench:
    """Run both sides once and return their numbers."""
    if n < 1:
        raise StreamsrError("--streams must be at least 1")
    threads = available_cpus()
    with tempfile.TemporaryDirectory(prefix="streamsr-serve-bench-", dir=workdir) as tmp:
        folder = Path(tmp)
        clip = make_clip(folder / "clip.mp4", *resolution, frames)
        serve_s, latency, fill = _run_serve(n, clip, folder, model, device, batch, encoder_preset)
        procs_s = _run_processes(n, clip, folder, model, device, batch, encoder_preset, threads)
    total = n * frames
    return StreamsBench(n, frames, resolution, threads, serve_s, total / serve_s, latency, fill,
                        procs_s, total / procs_s)


def _run_serve(n: int, clip: Path, folder: Path, model: str, device: str, batch: int | None,
               encoder_preset: str) -> tuple[float, float, float]:
    encode = EncodeOptions(preset=encoder_preset)
    streams = tuple(StreamConfig(f"s{i}", str(clip),
                                 Outputs(file=str(folder / f"serve_{i}.mkv"), overwrite=True),
                                 encode=encode) for i in range(n))
    config = ServeConfig(ServerConfig(model=model, device=device, batch=batch), streams)
    t0 = time.perf_counter()
    server = Server(config)
    server.start()
    try:
        while any(w.state not in ("ended", "failed") for w in server.workers.values()):
            if server.engine_error:
                raise StreamsrError(f"serve bench: the engine failed: {server.engine_error}")
            time.sleep(0.05)
    finally:
        server.stop()
    seconds = time.perf_counter() - t0
    failed = [w.reason for w in server.workers.values() if w.state == "failed"]
    if failed:
        raise StreamsrError(f"serve bench: a stream failed: {failed[0]}")
    snaps = [w.snapshot() for w in server.workers.values()]
    latency = sum(s["latency_mean_s"] for s in snaps) / len(snaps)
    return seconds, latency, server.counters.fill_mean


# each process: imports first, then stamps its start; the stamps exclude interpreter and
# torch import time (the server side has paid that already) but include loading the model
_CHILD = """
import json, sys, time
import streamsr
from streamsr.runtime import pin_cpu_threads
pin_cpu_threads({threads})
start = time.time()
streamsr.upscale({clip!r}, {out!r}, model={model!r}, device={device!r}, batch={batch!r},
                 encoder_preset={preset!r}, overwrite=True)
print(json.dumps({{"start": start, "end": time.time()}}))
"""


def _run_processes(n: int, clip: Path, folder: Path, model: str, device: str,
                   batch: int | None, encoder_preset: str, threads: int) -> float:
    """Seconds from the first process's start to the last one's end (after their imports)."""
    share = max(1, threads // n)
    procs = []
    for i in range(n):
        code = _CHILD.format(threads=share, clip=str(clip), out=str(folder / f"proc_{i}.mkv"),
                             model=model, device=device, batch=batch, preset=encoder_preset)
        procs.append(subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    results = [p.communicate() for p in procs]
    bad = [err for p, (_, err) in zip(procs, results, strict=True) if p.returncode != 0]
    if bad:
        raise StreamsrError(f"serve bench: an upscale process failed: {bad[0].strip()[-300:]}")
    stamps = [json.loads(out.strip().splitlines()[-1]) for out, _ in results]
    return max(s["end"] for s in stamps) - min(s["start"] for s in stamps)
