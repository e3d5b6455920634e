"""N streams through one `serve` against N separate `upscale` processes, on the same machine
in the same run: what sharing one model buys.

Both sides upscale the same generated clip N times with the same model, device and encoder.
The server gets all the CPU threads for its one engine; each process gets an equal share
(threads / N), so both use the same CPU budget. Aggregate fps is N x frames over the wall
time from start (model loading included, Python and torch imports excluded, on both sides)
to the last output finalised.
Latency is measured the same way on both sides: per frame, from the moment it is handed on
by its source to the moment every output has written it, averaged over all frames of all
streams. With `realtime` (the default) both sides read the clip at its frame rate, as a camera
would deliver it, and the clock starts when the frame is handed on (not when a file's
read-ahead decoded it). The server measures it in its outputs thread; each process runs the
unchanged `streamsr.upscale` with a timing hook (its source paced, its sink's `write` timed)
and reports the mean on stdout.
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
    processes_latency_mean_s: float
    realtime: bool = True  # both sides fed at the clip's frame rate

    @property
    def ratio(self) -> float:
        return self.serve_fps / self.processes_fps if self.processes_fps else float("inf")

    @property
    def latency_ratio(self) -> float:
        """serve's mean latency over the processes' (below 1: serve is faster)."""
        if not self.processes_latency_mean_s:
            return float("inf")
        return self.serve_latency_mean_s / self.processes_latency_mean_s

    def as_dict(self) -> dict:
        return {**asdict(self), "ratio": round(self.ratio, 3),
                "latency_ratio": round(self.latency_ratio, 3)}

    def table(self) -> str:
        w, h = self.resolution
        return "\n".join([
            f"{self.streams} streams x {self.frames} frames of {w}x{h}, {self.threads} CPU threads"
            + (", fed at the clip's frame rate" if self.realtime else ", read as fast as possible"),
            "| run | wall s | aggregate fps | mean latency s |",
            "|---|---|---|---|",
            f"| serve (one shared engine) | {self.serve_seconds:.1f} | {self.serve_fps:.2f} | "
            f"{self.serve_latency_mean_s:.3f} |",
            f"| {self.streams} upscale processes | {self.processes_seconds:.1f} | "
            f"{self.processes_fps:.2f} | {self.processes_latency_mean_s:.3f} |",
            f"serve / processes: {self.ratio:.2f}x fps, {self.latency_ratio:.2f}x mean latency "
            f"(batch fill {self.serve_batch_fill:.2f})"])


def bench_streams(n: int, *, resolution: tuple[int, int] = (160, 90), frames: int = 24,
                  model: str = "lite", device: str = "cpu", batch: int | None = None,
                  encoder_preset: str = "veryfast", realtime: bool = True,
                  workdir: str | os.PathLike | None = None) -> StreamsBench:
    """Run both sides once and return their numbers (`realtime`: feed the clip at its frame
    rate on both sides, as cameras would)."""
    if n < 1:
        raise StreamsrError("--streams must be at least 1")
    threads = available_cpus()
    with tempfile.TemporaryDirectory(prefix="streamsr-serve-bench-", dir=workdir) as tmp:
        folder = Path(tmp)
        clip = make_clip(folder / "clip.mp4", *resolution, frames)
        serve_s, latency, fill = _run_serve(n, clip, folder, model, device, batch, encoder_preset,
                                            realtime)
        procs_s, procs_latency = _run_processes(n, clip, folder, model, device, batch,
                                                encoder_preset, threads, realtime)
    total = n * frames
    return StreamsBench(n, frames, resolution, threads, serve_s, total / serve_s, latency, fill,
                        procs_s, total / procs_s, procs_latency, realtime)


def _run_serve(n: int, clip: Path, folder: Path, model: str, device: str, batch: int | None,
               encoder_preset: str, realtime: bool) -> tuple[float, float, float]:
    encode = EncodeOptions(preset=encoder_preset)
    streams = tuple(StreamConfig(f"s{i}", str(clip),
                                 Outputs(file=str(folder / f"serve_{i}.mkv"), overwrite=True),
                                 encode=encode, realtime=realtime) for i in range(n))
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
    counters = [w.counters for w in server.workers.values()]
    written = sum(c.frames_out for c in counters)
    latency = sum(c.latency_sum for c in counters) / written if written else 0.0
    return seconds, latency, server.counters.fill_mean


# each process: imports first, then stamps its start; the stamps exclude interpreter and
# torch import time (the server side has paid that already) but include loading the model.
# The hook paces the source (as the server's `realtime` does) and times each write, the way
# the server's outputs thread does; the pipeline itself runs unchanged.
_CHILD = """
import json, time
import streamsr
import streamsr.jobs.stream as stream
from streamsr.runtime import pin_cpu_threads
from streamsr.serve.worker import realtime
from streamsr.video.source import VideoSource
pin_cpu_threads({threads})
handed, latencies = {{}}, []
decode = VideoSource.__iter__
def paced(self):
    frames = decode(self)
    for frame in (realtime(frames, self.info.fps) if {realtime!r} else frames):
        handed[frame.pts] = frame.wallclock
        yield frame
VideoSource.__iter__ = paced
plain_sink = stream.open_sink
def timed_sink(*args, **kwargs):
    sink = plain_sink(*args, **kwargs)
    write = sink.write
    def timed(pixels, pts, *rest, **more):
        write(pixels, pts, *rest, **more)
        latencies.append(time.monotonic() - handed.pop(pts))
    sink.write = timed
    return sink
stream.open_sink = timed_sink
start = time.time()
streamsr.upscale({clip!r}, {out!r}, model={model!r}, device={device!r}, batch={batch!r},
                 encoder_preset={preset!r}, overwrite=True)
print(json.dumps({{"start": start, "end": time.time(), "latencies": latencies}}))
"""


def _run_processes(n: int, clip: Path, folder: Path, model: str, device: str,
                   batch: int | None, encoder_preset: str, threads: int, realtime: bool
                   ) -> tuple[float, float]:
    """Seconds from the first process's start to the last one's end (after their imports), and
    the mean latency over every frame of every process."""
    share = max(1, threads // n)
    procs = []
    for i in range(n):
        code = _CHILD.format(threads=share, clip=str(clip), out=str(folder / f"proc_{i}.mkv"),
                             model=model, device=device, batch=batch, preset=encoder_preset,
                             realtime=realtime)
        procs.append(subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    results = [p.communicate() for p in procs]
    bad = [err for p, (_, err) in zip(procs, results, strict=True) if p.returncode != 0]
    if bad:
        raise StreamsrError(f"serve bench: an upscale process failed: {bad[0].strip()[-300:]}")
    stamps = [json.loads(out.strip().splitlines()[-1]) for out, _ in results]
    latencies = [x for s in stamps for x in s["latencies"]]
    mean = sum(latencies) / len(latencies) if latencies else 0.0
    return max(s["end"] for s in stamps) - min(s["start"] for s in stamps), mean
