"""The three overlapping stages of one run: decode thread -> batcher + engine -> encode thread.

A decode thread fills a bounded queue with frames, the calling thread groups them into
`FrameBatch`es for `Engine.map`, and an encode thread writes the results. Each batch carries its
frames (timestamps, duration, name) through the engine, so results pair with their frames
without any bookkeeping here. Bounded queues give back-pressure, so memory does not grow with
the length of the video. Frames leave in the order they came.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator

import numpy as np

from streamsr.errors import StreamsrError
from streamsr.inference.batch import FrameBatch
from streamsr.inference.cpu_threads import CpuThreads
from streamsr.video.overlay import side_by_side
from streamsr.video.sink import Sink
from streamsr.video.source import Frame, Source

END = object()  # end-of-stream marker in the queues
POLL = 0.1  # seconds between checks for a stop request while a queue is full/empty


def put(q: queue.Queue, item, *stops: threading.Event) -> bool:
    """Put with back-pressure; False if a stop event fired while waiting."""
    while True:
        if any(s.is_set() for s in stops):
            return False
        try:
            q.put(item, timeout=POLL)
            return True
        except queue.Full:
            continue


class Stages:
    """The threads and queues of one `upscale` call."""

    def __init__(self, source: Source, sink: Sink, engine, batch: int, queue_frames: int,
                 sbs: bool, progress) -> None:
        self.source, self.sink, self.engine = source, sink, engine
        self.batch = max(1, batch)
        self.frames_in: queue.Queue = queue.Queue(maxsize=max(2, queue_frames))
        self.frames_out: queue.Queue = queue.Queue(maxsize=max(2, queue_frames))
        self.sbs = sbs
        # frames reach a yuv420p encoder as planes made on the device (inference/pack.py) when
        # the sink takes them; the side-by-side view composes RGB frames, so it keeps RGB
        self.yuv420 = None if sbs else getattr(sink, "yuv420", None)
        self.progress = progress
        self.stop_request = threading.Event()  # SIGINT/SIGTERM: stop reading new frames
        self.abort = threading.Event()  # an error somewhere: every stage stops
        self.error: BaseException | None = None
        self.failed = False
        self.total = source.info.frames
        self.max_frames: int | None = None  # stop after this many input frames (files)
        self.cut = False  # max_frames stopped the run before the input's end
        self.live = False  # live: run partial batches instead of waiting for a full one
        self.fresh: Callable[[Frame], bool] | None = None  # live: False drops a too-old frame

    def _fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        self.failed = True
        self.abort.set()

    # -- decode thread ----------------------------------------------------------------------
    def _decode(self) -> None:
        try:
            frames = iter(self.source)
            for taken, frame in enumerate(frames, 1):
                if self.stop_request.is_set() or not put(self.frames_in, frame, self.abort, self.stop_request):
                    break
                if self.max_frames is not None and taken >= self.max_frames:
                    self.cut = self._more(frames)
                    break
        except StreamsrError as exc:  # the input went bad: finish the frames decoded so far first
            if self.error is None:
                self.error = exc
            self.failed = True
        except BaseException as exc:  # noqa: BLE001 - re-raised in the calling thread
            self._fail(exc)
        finally:
            put(self.frames_in, END, self.abort)

    @staticmethod
    def _more(frames: Iterator[Frame]) -> bool:
        """Whether the input has a frame after the ones taken (one more frame is decoded)."""
        try:
            return next(frames, None) is not None
        except StreamsrError:  # damage after the last frame taken: that part is cut too
            return True

    # -- encode thread ----------------------------------------------------------------------
    def _encode(self) -> None:
        try:
            while True:
                try:
                    item = self.frames_out.get(timeout=POLL)
                except queue.Empty:
                    if self.abort.is_set():
                        return
                    continue
                if item is END:
                    return
                pixels, frame = item
                self.sink.write(pixels, frame.pts, frame.time_base, name=frame.name,
                                duration=frame.duration)
                if self.progress is not None:
                    self.progress(self.sink.frames_written, self.total)
        except BaseException as exc:  # noqa: BLE001
            self._fail(exc)

    # -- batcher (calling thread) -----------------------------------------------------------
    def _batches(self) -> Iterator[FrameBatch]:
        """Consecutive frames of one size, up to `batch` at a time, as uint8 (deep sources:
        uint16) NHWC RGB batches with their frames."""
        held: Frame | None = None
        while not self.abort.is_set():
            group: list[Frame] = [held] if held is not None else []
            held = None
            ended = False
            while len(group) < self.batch:
                if self.stop_request.is_set():
                    ended = True
                    break
                try:
                    item = self.frames_in.get(timeout=0 if (self.live and group) else POLL)
                except queue.Empty:
                    if self.abort.is_set():
                        return
                    if self.live and group:
                        break  # live: run what has arrived rather than wait for a full batch
                    continue
                if item is END:
                    ended = True
                    break
                if self.fresh is not None and not self.fresh(item):
                    continue
                if group and item.rgb.shape != group[0].rgb.shape:
                    held = item  # a new frame size starts the next batch
                    break
                group.append(item)
            if group:
                yield FrameBatch.of(group)
            if ended and held is None:
                return

    def go(self) -> None:
        decoder = threading.Thread(target=self._decode, name="streamsr-decode", daemon=True)
        encoder = threading.Thread(target=self._encode, name="streamsr-encode", daemon=True)
        decoder.start()
        encoder.start()
        threads = CpuThreads(self.engine)
        try:
            for batch in self.engine.map(self._batches(), yuv420=self.yuv420):
                threads.tick()
                pixels, group = batch.pixels, batch.frames
                if len(pixels) != len(group):
                    raise RuntimeError(f"engine returned {len(pixels)} frames for {len(group)}")
                if self.sbs:
                    pixels = side_by_side(np.stack([f.rgb for f in group]), pixels)
                for out, frame in zip(pixels, group, strict=True):
                    if not put(self.frames_out, (out, frame), self.abort):
                        break
                if self.abort.is_set():
                    break
        except BaseException as exc:
            self._fail(exc)
        finally:
            threads.restore()
            if not self.abort.is_set():
                put(self.frames_out, END, self.abort)
            encoder.join()
            self.abort.set()  # release the decoder if it waits on a full queue
            decoder.join(timeout=10)
        if self.error is not None:
            raise self.error
