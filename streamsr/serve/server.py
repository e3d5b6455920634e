"""The running server: one shared engine thread and a `StreamWorker` per configured stream.

The engine thread takes shared batches from the `SharedBatcher`, runs them through one
`Engine` (one model instance, one device context) and hands each result to the worker of the
stream it came from. `apply` moves the server to a new config: streams whose table changed or
disappeared are stopped (their outputs finalised), new or changed ones started; the others are
not touched. `stop` lets the frames in flight finish and finalises every output.
"""

from __future__ import annotations

import collections
import logging
import threading
import time

from streamsr.errors import ConfigError, StreamsrError
from streamsr.jobs.stream import resolve_model
from streamsr.serve.batcher import SharedBatcher
from streamsr.serve.config import ServeConfig
from streamsr.serve.worker import StreamWorker

log = logging.getLogger(__name__)


class EngineCounters:
    """Shared-engine numbers for /metrics (written by the engine thread only)."""

    def __init__(self) -> None:
        self.batches = 0
        self.frames = 0
        self.fill_sum = 0.0  # sum over batches of frames / batch size
        self.streams_per_batch_sum = 0
        self.model_seconds = 0.0

    @property
    def fill_mean(self) -> float:
        return self.fill_sum / self.batches if self.batches else 0.0


class Server:
    """Streams, the shared engine and their state; the HTTP layer only reads it."""

    def __init__(self, config: ServeConfig, model=None) -> None:
        from streamsr.inference.engine import Engine

        self.config = config
        self.engine = Engine(resolve_model(model if model is not None else config.server.model),
                             config.server.engine_config())
        self.batch = config.server.batch or self.engine.batch
        self.batcher = SharedBatcher(self.batch, config.server.batch_timeout)
        self.workers: dict[str, StreamWorker] = {}
        self.retired: collections.deque[StreamWorker] = collections.deque(maxlen=32)
        self.counters = EngineCounters()
        self.engine_error: str | None = None
        self.started = time.monotonic()
        self.lock = threading.Lock()  # guards `workers` between reloads and readers
        self._engine_stop = threading.Event()
        self._engine_thread = threading.Thread(target=self._engine_loop, name="serve-engine",
                                               daemon=True)
        # every stream's outputs are checked before anything starts: a bad one fails the start
        self._pending = [StreamWorker(s, self.batcher, self.engine.scale) for s in config.streams]

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        self._engine_thread.start()
        with self.lock:
            for worker in self._pending:
                self.workers[worker.name] = worker
                worker.start()
        self._pending = []
        log.info("serve: %d stream(s), shared batch %d, batch timeout %.3f s",
                 len(self.workers), self.batch, self.config.server.batch_timeout)

    def apply(self, config: ServeConfig) -> tuple[list[str], list[str]]:
        """Move to `config`'s streams; returns (started, stopped) stream names. Streams whose
        table is unchanged keep running untouched; a stream whose new table is bad keeps its
        old one (ConfigError is raised after the good changes are applied)."""
        if config.server != self.config.server:
            log.warning("serve: [server] changes take effect on restart only")
        new = {s.name: s for s in config.streams}
        started, stopped, errors = [], [], []
        with self.lock:
            current = dict(self.workers)
        for name, worker in current.items():
            if name not in new or new[name] != worker.config:
                try:
                    replacement = (StreamWorker(new[name], self.batcher, self.engine.scale)
                                   if name in new else None)
                except StreamsrError as exc:
                    errors.append(f"stream {name!r}: {exc}")
                    continue
                self._retire(worker)
                stopped.append(name)
                if replacement is not None:
                    self._add(replacement)
                    started.append(name)
        for name, stream in new.items():
            if name not in current:
                try:
                    self._add(StreamWorker(stream, self.batcher, self.engine.scale))
                    started.append(name)
                except StreamsrError as exc:
                    errors.append(f"stream {name!r}: {exc}")
        self.config = ServeConfig(self.config.server, config.streams, config.path)
        if errors:
            raise ConfigError("; ".join(errors))
        return started, stopped

    def _add(self, worker: StreamWorker) -> None:
        with self.lock:
            self.workers[worker.name] = worker
        worker.start()

    def _retire(self, worker: StreamWorker) -> None:
        with self.lock:
            self.workers.pop(worker.name, None)
            self.retired.append(worker)
        worker.request_stop()
        threading.Thread(target=worker.finish, name=f"serve-{worker.name}-stop", daemon=True).start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop reading everywhere, let the engine take the frames already queued, finalise."""
        with self.lock:
            workers = list(self.workers.values())
        for worker in workers:
            worker.request_stop()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._engine_thread.is_alive() and \
                not all(w.idle() for w in workers):
            time.sleep(0.05)
        self._engine_stop.set()
        self._engine_thread.join(timeout)
        for worker in workers:
            worker.finish(timeout)
        for worker in list(self.retired):
            worker.finish(timeout)

    # -- the shared engine ------------------------------------------------------------------
    def _engine_loop(self) -> None:
        owners: collections.deque = collections.deque()
        c = self.counters

        def feed():
            for shared in self.batcher.batches(self._engine_stop):
                owners.append(shared.lanes)
                yield shared.batch

        try:
            for out in self.engine.map(feed()):
                lanes = owners.popleft()
                c.batches += 1
                c.frames += len(lanes)
                c.fill_sum += len(lanes) / self.batch
                c.streams_per_batch_sum += len({id(lane) for lane in lanes})
                c.model_seconds = self.engine.busy_seconds
                for pixels, frame, lane in zip(out.pixels, out.frames, lanes, strict=True):
                    if lane.owner is not None:
                        lane.owner.deliver(pixels, frame)
        except Exception as exc:  # noqa: BLE001 - reported by /health and ends the server
            log.exception("serve: the shared engine failed")
            self.engine_error = f"{type(exc).__name__}: {exc}"

    # -- state for HTTP ---------------------------------------------------------------------
    def engine_alive(self) -> bool:
        return self._engine_thread.is_alive() and self.engine_error is None

    def health(self) -> tuple[bool, str]:
        """(healthy, reason): unhealthy when the engine died or any stream failed or is down."""
        if self.engine_error is not None:
            return False, f"engine failed: {self.engine_error}"
        if not self._engine_thread.is_alive():
            return False, "engine not running"
        with self.lock:
            workers = list(self.workers.values())
        bad = [f"{w.name}: {w.state}" + (f" ({w.reason})" if w.reason else "")
               for w in workers if w.state == "failed"]
        bad += [f"{w.name}: down for {w.outage_seconds():.1f} s" for w in workers
                if w.live is not None and w.live.stats.down_since is not None]
        if bad:
            return False, "; ".join(bad)
        return True, f"{len(workers)} stream(s) ok"

    def snapshot(self) -> dict:
        with self.lock:
            workers = list(self.workers.values())
        c = self.counters
        return {"streams": [w.snapshot() for w in workers],
                "engine": {"batch": self.batch, "batches": c.batches, "frames": c.frames,
                           "batch_fill_mean": round(c.fill_mean, 4),
                           "model_seconds": round(c.model_seconds, 3),
                           "device": str(self.engine.device), "backend": self.engine.backend,
                           "error": self.engine_error},
                "uptime_s": round(time.monotonic() - self.started, 1)}

    def worker(self, name: str) -> StreamWorker | None:
        with self.lock:
            return self.workers.get(name)
