"""One stream of `streamsr serve`: its source thread, its lane into the shared engine, its
outputs thread.

The source thread opens the input (a live feed reconnects on its own, as in `upscale`) and
queues frames into the stream's lane; the shared engine hands results back with `deliver`; the
outputs thread writes them to every output of the stream. Anything that goes wrong here (the
camera, a frame, an output) ends this stream only, with its outputs finalised: the engine never
waits on it (`deliver` gives up after a bounded wait and counts the frame as dropped).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator

import numpy as np

from streamsr.errors import StreamsrError
from streamsr.jobs.stream import Geometry, check_job, open_sink, open_source
from streamsr.options import UpscaleOptions
from streamsr.serve.batcher import Lane, SharedBatcher
from streamsr.serve.config import StreamConfig
from streamsr.video.live import LiveSource, redact
from streamsr.video.source import Frame, Source

log = logging.getLogger(__name__)


def realtime(frames: Iterable[Frame], fps) -> Iterator[Frame]:
    """Yield `frames` no faster than `fps`, as a camera would deliver them, each restamped
    (`wallclock`) when it is handed on: latency then counts from the moment a camera would have
    sent the frame, not from a file's read-ahead. No fps: unchanged."""
    if not fps:
        yield from frames
        return
    step, start = 1 / float(fps), None
    for i, frame in enumerate(frames):
        now = time.monotonic()
        start = now if start is None else start
        if start + i * step > now:
            time.sleep(start + i * step - now)
        frame.wallclock = time.monotonic()
        yield frame

FPS_WINDOW = 5.0  # seconds over which fps in/out are measured
DELIVER_WAIT = 2.0  # longest the engine waits on a stream whose outputs fall behind
STOP_DRAIN = 5.0  # seconds a stopping stream waits for the engine to take its queued frames


def stream_options(config: StreamConfig) -> UpscaleOptions:
    """The `UpscaleOptions` one output of this stream is checked and opened with."""
    return UpscaleOptions().replace(live_options=config.live, codec=config.encode.codec,
                                    crf=config.encode.crf, encoder_preset=config.encode.preset,
                                    pix_fmt=config.encode.pix_fmt, bitrate=config.encode.bitrate,
                                    live=config.is_live, max_pixels=config.max_pixels
                                    or UpscaleOptions().input.max_pixels)


def output_jobs(config: StreamConfig) -> list[tuple[str, object, UpscaleOptions]]:
    """(kind, StreamJob, options) per output, checked without opening anything."""
    base = stream_options(config)
    jobs = []
    for kind, dst in config.outputs.targets():
        options = base.replace(segment_time=config.outputs.segment_time if kind == "segments"
                               else None, overwrite=config.outputs.overwrite)
        jobs.append((kind, check_job(config.input, dst, options), options))
    return jobs


class Rate:
    """Per-second rate of a counter over about the last FPS_WINDOW seconds, from samples of
    it (taken per frame and whenever the rate is read, so a stalled stream reads 0)."""

    def __init__(self, read: Callable[[], int]) -> None:
        self._read = read
        self._samples: collections.deque[tuple[float, int]] = collections.deque()
        self._lock = threading.Lock()

    def sample(self) -> tuple[float, int]:
        now, value = time.monotonic(), self._read()
        with self._lock:
            self._samples.append((now, value))
            while len(self._samples) > 1 and self._samples[1][0] <= now - FPS_WINDOW:
                self._samples.popleft()
            return self._samples[0]

    def fps(self) -> float:
        now, value = time.monotonic(), self._read()
        t0, v0 = self.sample()
        return (value - v0) / (now - t0) if now - t0 >= 0.5 else 0.0


@dataclasses.dataclass
class StreamCounters:
    """What the server reports about one stream (each field written by one thread)."""

    frames_in: int = 0
    frames_out: int = 0
    drops: dict[str, int] = dataclasses.field(default_factory=lambda: collections.Counter())
    latency_last: float = 0.0
    latency_sum: float = 0.0
    output_errors: int = 0


class StreamWorker:
    """Runs one configured stream against the shared batcher."""

    def __init__(self, config: StreamConfig, batcher: SharedBatcher, scale: int) -> None:
        self.config = config
        self.name = config.name
        self.jobs = output_jobs(config)  # ConfigError here: before any thread starts
        self._batcher = batcher
        self._scale = scale
        self.state = "starting"
        self.reason = ""
        self.source: Source | None = None
        self.lane: Lane | None = None
        self.outputs: list[tuple[str, object]] = []  # (label, sink) still being written
        self.counters = StreamCounters()
        self.rate_in = Rate(self.frames_decoded)
        self.rate_out = Rate(lambda: self.counters.frames_out)
        self.latest_out: np.ndarray | None = None
        self.latest_in: np.ndarray | None = None
        self.stop = threading.Event()  # stop reading (server stop, removal)
        self._results: queue.Queue = queue.Queue(maxsize=max(8, 4 * batcher.batch))
        self._reader = threading.Thread(target=self._read, name=f"serve-{self.name}-in",
                                        daemon=True)
        self._writer = threading.Thread(target=self._write, name=f"serve-{self.name}-out",
                                        daemon=True)
        self._reading_done = threading.Event()
        self._outputs_done = threading.Event()
        self._ended = False  # the input ended (not stopped, not failed)
        self._delivered = 0  # results handed back by the engine (written or dropped)

    # -- control ---------------------------------------------------------------------------
    def start(self) -> None:
        self._reader.start()

    def request_stop(self) -> None:
        self.stop.set()

    def idle(self) -> bool:
        """No frames of this stream wait in its lane (the engine has taken them all)."""
        return self.lane is None or not self.lane.frames

    def finish(self, timeout: float = 15.0) -> None:
        """Stop, let the results in flight be written, finalise the outputs."""
        self.stop.set()
        self._reader.join(timeout)
        if self._writer.is_alive():
            self._writer.join(timeout)

    @property
    def live(self) -> LiveSource | None:
        return self.source if isinstance(self.source, LiveSource) else None

    # -- source thread ---------------------------------------------------------------------
    def _read(self) -> None:
        try:
            self._open()
            self._writer.start()
            self.state = "running"
            frames = self.source
            if self.config.realtime and not self.source.info.is_live:
                frames = realtime(frames, self.source.info.fps)
            for frame in frames:
                self.rate_in.sample()
                self.latest_in = frame.rgb
                if not self.lane.put(frame, self.stop):
                    break
                self.counters.frames_in += 1
            else:
                self._ended = True  # "ended" once the outputs are finalised
        except StreamsrError as exc:
            self._set_state("failed", str(exc))
        except Exception as exc:  # noqa: BLE001 - one stream's bug must not end the others
            log.exception("stream %s failed", self.name)
            self._set_state("failed", f"{type(exc).__name__}: {exc}")
        finally:
            self._end_reading()

    def _open(self) -> None:
        kind, job, options = self.jobs[0]
        self.source = source = open_source(job, options)
        info = source.info
        geometry = Geometry(info, info, self._scale, (info.width * self._scale,
                                                      info.height * self._scale))
        live = self.live
        if live is not None:
            live.check_latency_on_iter = False  # checked when the batcher takes a frame
            live.stop_on(self.stop)
        for kind, job, options in self.jobs:
            label = f"{kind}:{redact(job.dst)}"
            try:
                self.outputs.append((label, open_sink(job, source, geometry, options)))
            except StreamsrError as exc:
                self.counters.output_errors += 1
                log.error("stream %s: output %s: %s", self.name, label, exc)
        if not self.outputs:
            raise StreamsrError("no output could be opened")
        self.lane = self._batcher.add(self.name, size=max(2, self._batcher.batch),
                                      accept=live.fresh if live is not None else None)
        self.lane.owner = self

    def _set_state(self, state: str, reason: str) -> None:
        if self.state in ("failed", "stopped"):
            return
        if self.stop.is_set() and state == "ended":
            state, reason = "stopped", "stopped"
        self.state, self.reason = state, reason
        level = logging.WARNING if state == "failed" else logging.INFO
        log.log(level, "stream %s: %s: %s", self.name, state, reason)

    def _end_reading(self) -> None:
        """Wait until the engine has taken this stream's queued frames (unless stopping), then
        let the outputs thread finish."""
        stopping_by = None
        while self.lane is not None and self.lane.frames and not self.lane.closed:
            if self.stop.is_set():  # stopping: the frames in flight get a few seconds
                stopping_by = stopping_by or time.monotonic() + STOP_DRAIN
                if time.monotonic() > stopping_by:
                    break
            time.sleep(0.02)
        if self.lane is not None:
            dropped = self._batcher.remove(self.lane)
            if dropped:
                self.counters.drops["stop"] += dropped
        if self.source is not None:
            self.source.close()  # a live source: queued frames count as dropped_stop
        self._reading_done.set()
        if not self._writer.is_alive() and self._ended is False and self.state == "running":
            self._set_state("stopped", "stopped")

    # -- from the engine thread ------------------------------------------------------------
    def deliver(self, pixels: np.ndarray, frame: Frame) -> None:
        """A result for this stream; waits a bounded time when its outputs fall behind."""
        try:
            if self._outputs_done.is_set():  # stopped meanwhile: nobody writes it any more
                self.counters.drops["stop"] += 1
            elif self.config.live.drop == "none":
                self._results.put((pixels, frame), timeout=DELIVER_WAIT)
            else:
                self._results.put_nowait((pixels, frame))
        except queue.Full:
            self.counters.drops["output"] += 1
        finally:
            self._delivered += 1  # after the put: the writer never sees it counted but missing

    # -- outputs thread --------------------------------------------------------------------
    def _in_flight(self) -> bool:
        """Frames the engine took from the lane whose results have not come back yet."""
        return self.lane is not None and self._delivered < self.lane.taken

    def _write(self) -> None:
        give_up = None  # the engine may have died with frames in flight: wait boundedly
        while True:
            try:
                pixels, frame = self._results.get(timeout=0.1)
            except queue.Empty:
                if self._reading_done.is_set():
                    give_up = give_up or time.monotonic() + STOP_DRAIN
                    if not self._in_flight() or time.monotonic() > give_up:
                        break
                continue
            self._write_one(pixels, frame)
            if not self.outputs:
                self._set_state("failed", "every output failed")
                self.stop.set()
                break
        self._outputs_done.set()
        self._close_outputs()
        if self._ended:
            self._set_state("ended", "the input ended")
        elif self.state == "running":
            self._set_state("stopped", "stopped")

    def _write_one(self, pixels: np.ndarray, frame: Frame) -> None:
        for label, sink in list(self.outputs):
            try:
                sink.write(pixels, frame.pts, frame.time_base, duration=frame.duration)
            except Exception as exc:  # noqa: BLE001 - a full disk ends this output only
                self.counters.output_errors += 1
                log.error("stream %s: output %s failed: %s", self.name, label, exc)
                self.outputs.remove((label, sink))
                self._close(label, sink, trim=True)
        now = time.monotonic()
        c = self.counters
        c.frames_out += 1
        c.latency_last = now - frame.wallclock
        c.latency_sum += c.latency_last
        self.rate_out.sample()
        self.latest_out = pixels
        if self.live is not None:
            self.live.stats.frames_written = c.frames_out

    def _close_outputs(self) -> None:
        while self.outputs:
            label, sink = self.outputs.pop()
            self._close(label, sink, trim=not self._ended)

    def _close(self, label: str, sink, trim: bool) -> None:
        try:
            sink.close(trim=trim)
            log.info("stream %s: finalised %s (%d frames)", self.name, label, sink.frames_written)
        except Exception as exc:  # noqa: BLE001
            log.error("stream %s: output %s could not be finalised: %s", self.name, label, exc)

    # -- reporting -------------------------------------------------------------------------
    def drops(self) -> dict[str, int]:
        """Dropped frames by cause: queue (the camera outran the engine), late (older than
        max_latency), output (outputs fell behind), stop (queued when the stream stopped)."""
        out = {"queue": 0, "late": 0, "output": 0, "stop": 0}
        out.update(self.counters.drops)
        live = self.live
        if live is not None:
            out["queue"] += live.stats.dropped_queue
            out["late"] += live.stats.dropped_late
        return out

    def frames_decoded(self) -> int:
        """Frames the input delivered, the ones dropped before the engine included."""
        live = self.live
        return live.stats.frames_decoded if live is not None else self.counters.frames_in

    def outage_seconds(self) -> float:
        live = self.live
        if live is None:
            return 0.0
        s = live.stats
        down = s.down_since
        return s.downtime + (time.monotonic() - down if down is not None else 0.0)

    def snapshot(self) -> dict:
        """The stream's status and counters as JSON values (/api/streams)."""
        c = self.counters
        live = self.live
        return {"name": self.name, "input": redact(self.config.input), "state": self.state,
                "reason": self.reason, "down": bool(live and live.stats.down_since is not None),
                "outputs": [label for label, _ in self.outputs],
                "frames_in": self.frames_decoded(), "frames_out": c.frames_out,
                "fps_in": round(self.rate_in.fps(), 2), "fps_out": round(self.rate_out.fps(), 2),
                "drops": self.drops(), "reconnects": live.stats.reconnects if live else 0,
                "outage_s": round(self.outage_seconds(), 3),
                "latency_s": round(c.latency_last, 4),
                "latency_mean_s": round(c.latency_sum / c.frames_out, 4) if c.frames_out else 0.0,
                "output_errors": c.output_errors}
