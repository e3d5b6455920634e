"""Live network sources: low-delay opening, reconnect with backoff, a bounded queue with drops.

A camera feed does not wait for the model. `LiveSource` decodes on its own thread into a small
queue; when inference falls behind, the oldest frames are dropped (or, with `drop="none"`, the
reader waits) and every drop is counted. Frames older than `max_latency` when the consumer
picks them up are dropped too. When the feed stalls or closes, the source reconnects with capped
exponential backoff and carries on. Output timestamps follow the source clock: within a
connection they are the stream's own pts, and each new connection is anchored at the wall-clock
time its first frame arrived, so outages and drops show up as gaps, never as time squeezed out.
"""

from __future__ import annotations

import collections
import errno
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from urllib.parse import urlsplit

import av

from streamsr.errors import ConfigError, SourceError
from streamsr.video.color import read_color
from streamsr.video.ffmpeg import main_video_stream
from streamsr.video.frame import RgbConverter, check_pixels
from streamsr.video.live_stats import LiveStats, StatusLine
from streamsr.video.source import (
    DEFAULT_MAX_PIXELS,
    Frame,
    Source,
    VideoInfo,
    check_frames,
    check_window,
)

log = logging.getLogger(__name__)

NETWORK_SCHEMES = frozenset(
    {"rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "udp", "rtp", "tcp", "srt", "hls"})
DROP_POLICIES = ("oldest", "none")


def is_network_uri(uri: str) -> bool:
    """True for URLs that name a network stream (rtsp://, rtmp://, http(s)://, udp://, ...)."""
    return urlsplit(str(uri)).scheme.lower() in NETWORK_SCHEMES


def redact(uri: str) -> str:
    """The URL without its password, for logs and error messages."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return parts._replace(netloc=netloc).geturl()


@dataclass(frozen=True)
class LiveOptions:
    """How to open, buffer and keep alive a network source."""

    rtsp_transport: str = "tcp"     # tcp | udp
    open_timeout: float = 10.0      # seconds to connect and read the stream header
    read_timeout: float = 5.0       # seconds without data before the feed counts as stalled
    reconnect_max: int = 10         # consecutive failed attempts before giving up; 0 = forever
    backoff_initial: float = 0.5    # first retry delay, doubled per failed attempt
    backoff_max: float = 30.0       # cap on the retry delay
    queue_size: int = 4             # decoded frames buffered ahead of inference
    drop: str = "oldest"            # oldest: evict the oldest frame when full; none: wait
    max_latency: float | None = None  # drop frames older than this (seconds) at pickup
    low_delay: bool = True          # no demuxer buffering, short probing
    options: dict[str, str] = field(default_factory=dict)  # extra FFmpeg options, win last

    def validate(self) -> None:
        """Raise ConfigError for values that cannot work."""
        if self.rtsp_transport not in ("tcp", "udp"):
            raise ConfigError(f"--rtsp-transport must be tcp or udp, not {self.rtsp_transport!r}")
        if self.drop not in DROP_POLICIES:
            raise ConfigError(f"--drop must be one of {', '.join(DROP_POLICIES)}, not {self.drop!r}")
        if self.reconnect_max < 0:
            raise ConfigError("--reconnect-max must be >= 0 (0 = retry forever)")
        if self.queue_size < 1:
            raise ConfigError("the live queue needs room for at least one frame")
        if self.max_latency is not None and self.max_latency <= 0:
            raise ConfigError("--max-latency must be a positive number of seconds")
        if self.open_timeout <= 0 or self.read_timeout <= 0:
            raise ConfigError("timeouts must be positive")


def ffmpeg_options(uri: str, opts: LiveOptions) -> dict[str, str]:
    """FFmpeg demuxer/protocol options for `uri`: transport, socket timeouts, low delay."""
    scheme = urlsplit(uri).scheme.lower()
    usec = str(int(opts.read_timeout * 1e6))
    out: dict[str, str] = {"rw_timeout": usec}
    if scheme in ("rtsp", "rtsps"):
        out["rtsp_transport"] = opts.rtsp_transport
        out["timeout"] = usec  # RTSP: socket I/O timeout in microseconds
    elif scheme in ("http", "https", "udp", "tcp"):
        out["timeout"] = usec
    # rtmp's "timeout" means "listen for a connection", so it is left alone there.
    if opts.low_delay and is_network_uri(uri):  # nobuffer drops the probed packets of a file
        out.update({"fflags": "nobuffer", "flags": "low_delay",
                    "probesize": "65536", "analyzeduration": "500000"})
    out.update(opts.options)
    return out


class _End:
    """Marks the end of the stream in the frame queue."""


class DropQueue:
    """A bounded FIFO that evicts its oldest item when full (`drop="oldest"`) or blocks."""

    def __init__(self, size: int, drop: str, stop: threading.Event) -> None:
        self._items: collections.deque = collections.deque()
        self._size = size
        self._drop = drop
        self._stop = stop
        self._cond = threading.Condition()
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: object) -> None:
        """Add a frame; evicts or waits when full. Returns early when stopping."""
        with self._cond:
            while len(self._items) >= self._size:
                if self._drop == "oldest":
                    self._items.popleft()
                    self.evicted += 1
                    break
                if self._stop.is_set():
                    return
                self._cond.wait(0.1)
            self._items.append(item)
            self._cond.notify_all()

    def put_control(self, item: object) -> None:
        """Add an end or error marker, which is never dropped and never waits."""
        with self._cond:
            self._items.append(item)
            self._cond.notify_all()

    def get(self, give_up: Callable[[], bool] = lambda: False) -> object:
        """The oldest item; an end marker once `give_up()` is true while the queue is empty."""
        with self._cond:
            while not self._items:
                if give_up():
                    return _End()
                self._cond.wait(0.1)
            item = self._items.popleft()
            self._cond.notify_all()
            return item


class LiveSource(Source):
    """A network stream as an iterator of `Frame`s, kept alive across outages.

    Frames are converted as a file's are (`frame.RgbConverter`): a feed that changes size is
    scaled to its first size, and a size past `max_pixels` (--max-pixels) is refused, at the
    start or later, with the same error as a file.
    """

    def __init__(self, uri: str, options: LiveOptions | None = None, *,
                 duration: float | None = None, frames: int | None = None,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS) -> None:
        self.uri = str(uri)
        self.options = options or LiveOptions()
        self.options.validate()
        check_window(None, duration)
        check_frames(frames)
        self.duration = duration
        self.max_frames = frames
        self.stats = LiveStats(queue_size=self.options.queue_size)
        self._stop = threading.Event()
        self._queue = DropQueue(self.options.queue_size, self.options.drop, self._stop)
        self._thread: threading.Thread | None = None
        self._status_thread: threading.Thread | None = None
        self._status_lock = threading.Lock()
        # A pipeline that buffers frames itself sets this False and calls `fresh()` right
        # before inference, so the latency bound covers its own queue too.
        self.check_latency_on_iter = True
        self._consumer_stops: tuple[threading.Event, ...] = ()
        self._closed = False
        self._status: tuple[Callable[[str], None], float] | None = None
        self._container = self._connect(first=True)
        stream = main_video_stream(self._container)
        self._say_audio_is_dropped(self._container)
        self._pending: list[av.VideoFrame] = []
        if not (stream.codec_context.width and stream.codec_context.height):
            self._pending = self._first_frame(self._container)  # the header had no frame size
        self.info = self._video_info(stream)
        try:
            check_pixels(self.info.uri, self.info.width, self.info.height, max_pixels)
        except BaseException:
            self._container.close()
            raise
        self._to_rgb = RgbConverter(self.info.uri, self.info, max_pixels=max_pixels)
        self._next_index = 0
        self._last_pts: int | None = None
        self._t0: float | None = None
        self._last_frame_at: float | None = None  # monotonic time the newest frame was due
        self._duration_reached = False  # a frame at or past `duration` arrived (not kept)

    # -- opening -------------------------------------------------------------------------

    def _open_once(self) -> av.container.InputContainer:
        opts = ffmpeg_options(self.uri, self.options)
        container = av.open(self.uri, options=opts,
                            timeout=(self.options.open_timeout, self.options.read_timeout))
        stream = main_video_stream(container)
        if stream is None:
            container.close()
            raise SourceError(f"{redact(self.uri)}: the stream has no video")
        stream.thread_type = "AUTO" if not self.options.low_delay else "SLICE"
        return container

    def _connect(self, first: bool) -> av.container.InputContainer:
        """Open the stream, retrying with capped exponential backoff; SourceError when out of tries.

        On the first open, errors that no retry can fix (an unknown protocol, a 4xx answer such
        as 404 for an unknown RTSP mount or 401) fail at once. Later, while reconnecting to a feed
        that worked, they are retried like any other: a rebooting camera may answer 404 for a while.
        """
        opts = self.options
        attempt = 0
        while True:
            attempt += 1
            self.stats.attempt = attempt
            started = time.monotonic()
            try:
                container = self._open_once()
                if attempt > 1 or not first:
                    log.warning("live: connected to %s (attempt %d)", redact(self.uri), attempt)
                return container
            except SourceError:
                raise
            except (av.FFmpegError, OSError) as exc:
                self.stats.failed_attempts += 1
                reason = _reason(exc)
                took = time.monotonic() - started
                if took >= 0.9 * min(opts.open_timeout, opts.read_timeout):
                    # FFmpeg reports a timed-out open as whatever it was parsing (often
                    # "Invalid data found when processing input"): say what happened instead.
                    reason = f"no answer within {took:.1f} s"
                elif first and _permanent(exc):
                    hint = (f" (the server refuses RTSP over {opts.rtsp_transport}: try "
                            f"--rtsp-transport {'udp' if opts.rtsp_transport == 'tcp' else 'tcp'})"
                            if getattr(exc, "errno", None) == errno.EPROTONOSUPPORT else "")
                    raise SourceError(f"{redact(self.uri)}: {reason}{hint}") from None
                what = "open" if first else "reconnect"
                if opts.reconnect_max and attempt >= opts.reconnect_max + (1 if first else 0):
                    raise SourceError(
                        f"{redact(self.uri)}: cannot {what} after {attempt} attempt(s): "
                        f"{reason}") from None
                delay = min(opts.backoff_max, opts.backoff_initial * 2 ** (attempt - 1))
                log.warning("live: %s attempt %d to %s failed (%s); retrying in %.1fs",
                            what, attempt, redact(self.uri), reason, delay)
                if self._stop.wait(delay):
                    raise SourceError(f"{redact(self.uri)}: stopped while reconnecting") from None

    def _first_frame(self, container: av.container.InputContainer) -> list[av.VideoFrame]:
        """Decode up to the first frame, for streams whose header does not give the frame size."""
        try:
            frame = next(container.decode(main_video_stream(container)), None)
        except (av.FFmpegError, OSError) as exc:
            container.close()
            raise SourceError(f"{redact(self.uri)}: no frame arrived: {_reason(exc)}") from None
        if frame is None:
            container.close()
            raise SourceError(f"{redact(self.uri)}: the stream ended before its first frame")
        return [frame]

    def _say_audio_is_dropped(self, container: av.container.InputContainer) -> None:
        """One warning when the feed has audio: live runs write video only (the frames are
        re-timed onto the output clock across drops and reconnects; the audio is not)."""
        audio = [s for s in container.streams.audio]
        if audio:
            codecs = ", ".join(s.codec_context.name if s.codec_context else "?" for s in audio)
            log.warning("live: %s has %d audio stream(s) (%s); live mode writes video only, so "
                        "the output has no audio", redact(self.uri), len(audio), codecs)

    def _video_info(self, stream: av.video.stream.VideoStream) -> VideoInfo:
        cc = stream.codec_context
        first = self._pending[0] if self._pending else None
        head = first if first is not None else cc  # both carry the size and colour tags
        pix_fmt = first.format.name if first is not None else cc.pix_fmt
        fps = stream.average_rate or stream.guessed_rate or stream.base_rate
        return VideoInfo(
            width=head.width, height=head.height, fps=Fraction(fps) if fps else None,
            time_base=Fraction(stream.time_base or Fraction(1, 90000)), frames=None,
            duration=None, pix_fmt=pix_fmt or "yuv420p",
            color=read_color(head),
            rotation=0, is_live=True, uri=redact(self.uri))

    # -- reading -------------------------------------------------------------------------

    def _done(self) -> bool:
        if self._stop.is_set():
            return True
        if self.max_frames is not None and self.stats.frames_decoded >= self.max_frames:
            return True
        return self._duration_reached

    def _read_session(self, container: av.container.InputContainer) -> None:
        """Decode one connection into the queue, re-timing its pts onto the output clock."""
        stream = main_video_stream(container)
        tb_in = Fraction(stream.time_base or self.info.time_base)
        tb_out = self.info.time_base
        anchor: tuple[int, int] | None = None  # (input pts, output pts) of this session
        arrived = 0.0  # monotonic arrival of the previous frame of this session
        pending, self._pending = self._pending, []
        for frame in itertools.chain(pending, container.decode(stream)):
            now = time.monotonic()
            if self._t0 is None:
                self._t0 = now
            due = now
            if frame.pts is None or anchor is None or frame.pts < anchor[0]:
                # A new connection (or a pts restart): anchor at wall-clock time since start.
                start = round((now - self._t0) / tb_out)
                if self._last_pts is not None:
                    start = max(start, self._last_pts + 1)
                anchor = (frame.pts, start) if frame.pts is not None else None
                pts = start
            else:
                pts = anchor[1] + round((frame.pts - anchor[0]) * tb_in / tb_out)
                if self._last_pts is not None and pts <= self._last_pts:
                    pts = self._last_pts + 1
                # FFmpeg hands over the last frame before a stall only when the read times out:
                # it was due one frame interval after its predecessor arrived, not then.
                due = min(now, arrived + (pts - self._last_pts) * tb_out)
            arrived, self._last_frame_at = now, due
            # half a tick of slack, as the file source: 0.2 s as a float is a hair above 1/5
            if self.duration is not None and pts * tb_out >= Fraction(self.duration) - tb_out / 2:
                self._duration_reached = True  # like a file: frames in [0, duration) only
                return
            rgb = self._to_rgb(frame, self._next_index)  # scaled to the first size, or refused
            item = Frame(rgb=rgb, pts=pts, time_base=tb_out, index=self._next_index, wallclock=now)
            self._next_index += 1
            self._last_pts = pts
            self.stats.frames_decoded += 1
            self._queue.put(item)
            self.stats.dropped_queue = self._queue.evicted
            self.stats.queue_depth = len(self._queue)
            if self._done():
                return

    def _run(self) -> None:
        container = self._container
        try:
            while True:
                reason = "the stream ended"
                # A file, or a stream that announces a duration, ends at its end; a live feed
                # that ends has gone away and is reconnected.
                finite = container.duration is not None or not is_network_uri(self.uri)
                ended = False
                try:
                    self._read_session(container)
                    ended = True
                except (av.FFmpegError, OSError) as exc:
                    reason = _reason(exc)
                finally:
                    container.close()
                if self._done() or (ended and finite):
                    break
                # The outage began with the last frame, not when it was noticed: a frozen feed
                # is only declared down after read_timeout without data.
                down = max(self._last_frame_at or 0.0,
                           self.stats.outages[-1][1] if self.stats.outages else 0.0)
                down = down or time.monotonic()
                self.stats.down_since = down
                log.warning("live: lost %s (%s); reconnecting", redact(self.uri), reason)
                container = self._connect(first=False)
                self.stats.reconnects += 1
                self.stats.outages.append((down, time.monotonic()))
                self.stats.down_since = None
            self._queue.put_control(_End())
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, who re-raises
            self._queue.put_control(exc)

    def __iter__(self) -> Iterator[Frame]:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="streamsr-live", daemon=True)
            self._thread.start()
            if self._status is not None:
                self._status_thread = threading.Thread(
                    target=self._report_status, name="streamsr-live-status", daemon=True)
                self._status_thread.start()
        while True:
            item = self._queue.get(self._consumer_gone)
            self.stats.queue_depth = len(self._queue)
            if isinstance(item, _End):
                return
            if isinstance(item, BaseException):
                raise item
            if self.check_latency_on_iter and not self.fresh(item):
                continue
            yield item

    def report_status(self, report: Callable[[str], None], interval: float) -> None:
        """Call `report(line)` every `interval` seconds while the source is read (call before
        iterating). A timer thread does it, so the lines keep coming while the feed is down."""
        self._status = (report, interval)

    def _report_status(self) -> None:
        report, interval = self._status
        line = StatusLine(self.stats, interval)
        while not self._stop.wait(interval):
            with self._status_lock:  # close() takes it: no line after the run has ended
                if self._stop.is_set():
                    return
                report(line.line())

    def stop_on(self, *events: threading.Event) -> None:
        """End iteration as soon as any of `events` is set, even while the feed is down."""
        self._consumer_stops = events

    def _consumer_gone(self) -> bool:
        return self._stop.is_set() or any(e.is_set() for e in self._consumer_stops)

    @property
    def dropped(self) -> int:  # type: ignore[override]
        """Frames decoded but never handed to inference (queue overflow or too old)."""
        return self.stats.dropped

    def fresh(self, frame: Frame) -> bool:
        """Take `frame` for inference unless older than max_latency (then count it as dropped)."""
        age = time.monotonic() - frame.wallclock
        if self.options.max_latency is not None and age > self.options.max_latency:
            self.stats.dropped_late += 1
            return False
        s = self.stats
        s.frames_delivered += 1
        s.latency_last = age
        s.latency_max = max(s.latency_max, age)
        s.latency_sum += age
        return True

    def close(self) -> None:
        """Stop reading and release the connection (waits briefly for the reader thread).

        Frames decoded but never handed to inference (still queued when a signal or an error
        stopped the run) are counted as `dropped_stop`, so decoded = delivered + dropped.
        """
        if self._closed:
            return
        self._closed = True
        with self._status_lock:  # waits for a status line being printed now
            self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.options.read_timeout + 1.0)
            if self._thread.is_alive():
                log.warning("live: reader thread still busy after close")
        else:
            self._container.close()
        s = self.stats
        if s.down_since is not None:  # stopped (or gave up) during an outage: it counts too
            s.outages.append((s.down_since, time.monotonic()))
            s.down_since = None
        s.dropped_queue = self._queue.evicted
        s.queue_depth = 0
        s.dropped_stop = max(0, s.frames_decoded - s.frames_delivered - s.dropped_queue
                             - s.dropped_late)

    def __enter__(self) -> LiveSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# 400 Bad Request, 401 Unauthorized, 403 Forbidden, 404 Not Found: a wrong URL or credentials.
# Other 4xx answers are retried: 429 Too Many Requests, and RTSP's 453 Not Enough Bandwidth or
# 454 Session Not Found, which a camera at its stream limit sends while an old session lingers.
_PERMANENT_HTTP = tuple(getattr(av.error, name) for name in (
    "HTTPBadRequestError", "HTTPUnauthorizedError", "HTTPForbiddenError", "HTTPNotFoundError")
    if hasattr(av.error, name))


def _permanent(exc: BaseException) -> bool:
    """Errors that retrying cannot fix: no such protocol in this FFmpeg, an RTSP server that
    refuses the transport (461, which FFmpeg reports as EPROTONOSUPPORT), or a 400/401/403/404
    answer."""
    if isinstance(exc, av.error.ProtocolNotFoundError):
        return True
    if isinstance(exc, OSError) and exc.errno == errno.EPROTONOSUPPORT:
        return True
    return isinstance(exc, _PERMANENT_HTTP)


def _reason(exc: BaseException) -> str:
    """A short reason for logs: FFmpeg's message without the repeated URL."""
    return str(getattr(exc, "strerror", None) or exc or type(exc).__name__)


def open_live_source(uri: str, options: LiveOptions | None = None, *,
                     duration: float | None = None, frames: int | None = None,
                     max_pixels: int | None = DEFAULT_MAX_PIXELS) -> LiveSource:
    """Connect to a network stream (retrying as configured) and return its `LiveSource`."""
    return LiveSource(uri, options, duration=duration, frames=frames, max_pixels=max_pixels)
