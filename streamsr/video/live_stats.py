"""What a live run reports: its counters (`LiveStats`: frames, drops, outages, latency) and
the periodic one-line status built from them."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from streamsr.video.live import LiveSource

log = logging.getLogger(__name__)


@dataclass
class LiveStats:
    """Counters of a live run; each field is written by one thread only."""

    frames_decoded: int = 0
    frames_delivered: int = 0
    frames_written: int = 0
    dropped_queue: int = 0
    dropped_late: int = 0
    dropped_stop: int = 0  # decoded but still queued when the run stopped (signal, error)
    reconnects: int = 0
    failed_attempts: int = 0
    outages: list[tuple[float, float]] = field(default_factory=list)  # monotonic (start, end)
    down_since: float | None = None  # monotonic start of the outage going on now, else None
    attempt: int = 0  # the connection attempt going on now (or the last one made)
    latency_last: float = 0.0
    latency_max: float = 0.0
    latency_sum: float = 0.0
    queue_depth: int = 0
    queue_size: int = 0

    @property
    def dropped(self) -> int:
        """All frames decoded but not handed to inference."""
        return self.dropped_queue + self.dropped_late + self.dropped_stop

    @property
    def latency_mean(self) -> float:
        return self.latency_sum / self.frames_delivered if self.frames_delivered else 0.0

    @property
    def downtime(self) -> float:
        """Seconds the feed was down, summed over the finished outages."""
        return sum(end - start for start, end in self.outages)

    def as_dict(self) -> dict[str, float | int]:
        """Plain numbers for reports and JSON."""
        return {
            "frames_decoded": self.frames_decoded, "frames_delivered": self.frames_delivered,
            "frames_written": self.frames_written, "dropped": self.dropped,
            "dropped_queue": self.dropped_queue, "dropped_late": self.dropped_late,
            "dropped_stop": self.dropped_stop,
            "reconnects": self.reconnects, "outages": len(self.outages),
            "downtime_s": round(self.downtime, 3), "latency_mean_s": round(self.latency_mean, 4),
            "latency_max_s": round(self.latency_max, 4),
        }


class StatusLine:
    """Formats a periodic one-line status (fps in/out, queue, drops, latency, reconnects).

    While the feed is down the line starts with how long it has been down and which
    connection attempt is under way: `live: DOWN for 3.2 s, attempt 4, ...`.
    """

    def __init__(self, stats: LiveStats, interval: float = 5.0) -> None:
        self.stats = stats
        self.interval = interval
        self._t = time.monotonic()
        self._decoded = stats.frames_decoded
        self._written = stats.frames_written

    def line(self) -> str:
        """The status since the previous call, and resets the rate window."""
        now = time.monotonic()
        dt = max(now - self._t, 1e-6)
        s = self.stats
        fps_in = (s.frames_decoded - self._decoded) / dt
        fps_out = (s.frames_written - self._written) / dt
        self._t, self._decoded, self._written = now, s.frames_decoded, s.frames_written
        down_since = s.down_since
        state = (f"DOWN for {now - down_since:.1f} s, attempt {s.attempt}, "
                 if down_since is not None else "")
        return (f"live: {state}in {fps_in:.1f} fps, out {fps_out:.1f} fps, "
                f"queue {s.queue_depth}/{s.queue_size}, "
                f"dropped {s.dropped} (queue {s.dropped_queue}, late {s.dropped_late}), "
                f"latency {s.latency_last:.2f}s (max {s.latency_max:.2f}s), "
                f"reconnects {s.reconnects} (down {s.downtime:.1f}s)")


def live_progress(source: LiveSource, progress: Callable[[int, int | None], None] | None,
                  status: Callable[[str], None] | None, interval: float = 5.0
                  ) -> Callable[[int, int | None], None]:
    """Wrap the pipeline's per-frame progress callback to count output frames, and have the
    source report a status line every `interval` seconds (0: none), outages included."""
    if interval > 0:
        source.report_status(status or (lambda text: log.info("%s", text)), interval)

    def on_frame(done: int, total: int | None) -> None:
        source.stats.frames_written = done
        if progress is not None:
            progress(done, total)

    return on_frame
