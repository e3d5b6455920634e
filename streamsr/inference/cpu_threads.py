"""Choosing one torch thread or all of them for a CPU engine, by measuring the run itself."""

from __future__ import annotations

import logging
import os
import threading

import torch

log = logging.getLogger(__name__)


class CpuThreads:
    """Gives the model one torch thread or all of them, whichever runs it faster right now.

    On a CPU the model usually dominates and wants every core. With a cheap model the
    encoder's threads keep the cores busy, and torch's fork-join ops stall whenever one of
    their threads is descheduled, so one thread can be much faster than all of them; the same
    happens when other processes keep every core busy (docs/architecture.md has the measured
    cases). The load average cannot tell these cases apart (it lags by minutes and still counts
    a job that just ended), so the run measures: the first (warm-up) batch runs with one
    thread, then the engine's time per frame is measured with one thread and with all of them,
    each over at least WINDOW seconds (or FRAMES frames), and the faster setting is kept for
    the rest of the run. The second measurement stops after one batch when it is already CLEAR
    times slower or faster than the first, so at most one batch runs in a bad setting. A count
    the user chose (`--threads`, EngineConfig.threads, OMP_NUM_THREADS) is left alone.
    """

    WINDOW = 0.5  # seconds of engine time per measurement (at least one batch) ...
    FRAMES = 16  # ... or this many frames, whichever comes first
    CLEAR = 1.5  # per-frame time ratio that decides after one batch of the second setting
    _active = 0  # runs measuring now: the thread count is per process, so only one may
    _lock = threading.Lock()

    def __init__(self, engine) -> None:
        self.engine = engine
        self.full = torch.get_num_threads()
        self.enabled = (engine.device.type == "cpu" and self.full > 1
                        and not getattr(engine, "threads_fixed", False)
                        and not os.environ.get("OMP_NUM_THREADS"))
        self.owner = False
        if self.enabled:
            with CpuThreads._lock:
                self.enabled = self.owner = CpuThreads._active == 0
                CpuThreads._active += self.owner
        if self.enabled:  # warm up on one thread: all of them may be the slow setting
            torch.set_num_threads(1)
        self.mark: tuple[float, int] | None = None  # engine busy seconds, frames at window start
        self.per_frame: dict[int, float] = {}  # threads -> engine seconds per frame

    def tick(self) -> None:
        """Call after every batch the engine returns."""
        if not self.enabled:
            return
        now = (self.engine.busy_seconds, self.engine.frames_done)
        if self.mark is None:  # the first batch pays for warm-up: measure from the next one
            self.mark = now
            return
        busy, frames = now[0] - self.mark[0], now[1] - self.mark[1]
        if frames < 1:
            return
        threads = torch.get_num_threads()
        per = busy / frames
        first = self.per_frame.get(1) if threads != 1 else None
        clear = first is not None and (per > self.CLEAR * first or per * self.CLEAR < first)
        if not clear and busy < self.WINDOW and frames < self.FRAMES:
            return
        self.per_frame[threads] = per
        self.mark = now
        if threads == 1:  # measured one thread: now all of them
            torch.set_num_threads(self.full)
            return
        best = min(self.per_frame, key=self.per_frame.get)
        torch.set_num_threads(best)
        self.enabled = False  # decided
        log.info("engine %s per frame: %d torch thread%s", ", ".join(
            f"{1000 * t:.0f} ms with {n}" for n, t in sorted(self.per_frame.items())), best,
            "" if best == 1 else "s")

    def restore(self) -> None:
        """Back to the count the run started with (call once, when the run ends)."""
        if not self.owner:
            return
        self.owner = False
        with CpuThreads._lock:
            CpuThreads._active -= 1
        if torch.get_num_threads() != self.full:
            torch.set_num_threads(self.full)
