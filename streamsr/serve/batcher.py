"""Shared batches from many streams: round-robin over the streams, grouped by frame size.

Each stream puts its decoded frames into its own `Lane`. `SharedBatcher.batches()` builds one
`FrameBatch` at a time for the engine: it picks the frame size of the next lane in turn that
has a frame, then takes one frame from each lane of that size in turn until the batch is full,
so a fast camera cannot fill batches while a slow one waits. A batch that is not full waits at
most `timeout` seconds after its first frame for more, so a lone stream's latency stays
bounded. Lanes keep their frames in order and each batch remembers which lane every frame came
from (`ServeBatch.lanes`), so results go back to the right stream in order.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from streamsr.inference.batch import FrameBatch
from streamsr.video.source import Frame


class Lane:
    """One stream's frames waiting for the engine (bounded: a full lane makes its reader wait)."""

    def __init__(self, name: str, cond: threading.Condition, size: int = 8,
                 accept: Callable[[Frame], bool] | None = None) -> None:
        self.name = name
        self.size = max(1, size)
        self.accept = accept  # False drops a frame at pickup (too old for a live stream)
        self.frames: collections.deque[Frame] = collections.deque()
        self.closed = False
        self.owner: object = None  # the stream worker its results go to
        self.taken = 0  # frames the engine has taken (their results are due to the owner)
        self._cond = cond

    def put(self, frame: Frame, stop: threading.Event) -> bool:
        """Queue a frame, waiting while the lane is full; False when `stop` or the lane closed."""
        with self._cond:
            while len(self.frames) >= self.size:
                if stop.is_set() or self.closed:
                    return False
                self._cond.wait(0.1)
            if self.closed:
                return False
            self.frames.append(frame)
            self._cond.notify_all()
            return True

    def close(self) -> int:
        """No more frames go in or out; returns how many were left queued."""
        with self._cond:
            self.closed = True
            left = len(self.frames)
            self.frames.clear()
            self._cond.notify_all()
            return left


@dataclass(frozen=True)
class ServeBatch:
    """A shared batch: the engine's FrameBatch and, per frame, the lane it came from."""

    batch: FrameBatch
    lanes: tuple[Lane, ...]


class SharedBatcher:
    """Round-robin, size-grouped batches over the lanes added so far."""

    def __init__(self, batch: int, timeout: float) -> None:
        self.batch = max(1, batch)
        self.timeout = timeout
        self.cond = threading.Condition()
        self._lanes: list[Lane] = []
        self._next = 0  # the lane that starts the next batch

    def add(self, name: str, size: int = 8, accept: Callable[[Frame], bool] | None = None) -> Lane:
        with self.cond:
            lane = Lane(name, self.cond, size, accept)
            self._lanes.append(lane)
            return lane

    def remove(self, lane: Lane) -> int:
        """Take a lane out; returns the frames it still held (dropped)."""
        with self.cond:
            left = lane.close()
            if lane in self._lanes:
                self._lanes.remove(lane)
            return left

    def _take(self, group: list[Frame], owners: list[Lane], shape: tuple | None) -> tuple | None:
        """One pass over the lanes, one frame from each whose next frame has `shape`."""
        lanes = self._lanes
        n = len(lanes)
        for i in range(n):
            if len(group) >= self.batch:
                break
            lane = lanes[(self._next + i) % n]
            while lane.frames:
                frame = lane.frames[0]
                if shape is not None and frame.rgb.shape != shape:
                    break
                lane.frames.popleft()
                if lane.accept is not None and not lane.accept(frame):
                    continue  # too old: counted by the lane's source, try its next frame
                shape = frame.rgb.shape
                lane.taken += 1
                group.append(frame)
                owners.append(lane)
                break
        return shape

    def next_batch(self, stop: threading.Event) -> ServeBatch | None:
        """The next shared batch, or None once `stop` is set (frames still queued stay)."""
        group: list[Frame] = []
        owners: list[Lane] = []
        shape = None
        deadline = None
        with self.cond:
            while not stop.is_set():
                before = len(group)
                shape = self._take(group, owners, shape)
                if len(group) > before:
                    self.cond.notify_all()  # room in the lanes for their readers
                if group and deadline is None:
                    deadline = time.monotonic() + self.timeout
                if len(group) >= self.batch:
                    break
                if len(group) > before:
                    continue  # another pass may find more of this size right away
                if group and time.monotonic() >= deadline:
                    break
                self.cond.wait(0.1 if deadline is None else max(0.0, deadline - time.monotonic()))
            if not group:
                return None
            if self._lanes:
                self._next = (self._next + 1) % len(self._lanes)
        return ServeBatch(FrameBatch(np.stack([f.rgb for f in group]), tuple(group)), tuple(owners))

    def batches(self, stop: threading.Event) -> Iterator[ServeBatch]:
        while (batch := self.next_batch(stop)) is not None:
            yield batch
