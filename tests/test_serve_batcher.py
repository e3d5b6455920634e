"""The shared batcher: round-robin over streams, grouped by frame size, bounded wait."""

from __future__ import annotations

import threading
import time

import numpy as np

from streamsr.serve.batcher import SharedBatcher
from streamsr.video.source import Frame


def frame(i: int, size=(8, 6)) -> Frame:
    w, h = size
    return Frame(rgb=np.full((h, w, 3), i % 256, np.uint8), pts=i, time_base=1, index=i,
                 wallclock=time.monotonic())


def test_round_robin_keeps_each_lane_in_order_and_loses_nothing():
    b = SharedBatcher(batch=4, timeout=0.01)
    stop = threading.Event()
    fast, slow = b.add("fast", size=64), b.add("slow", size=64)
    for i in range(40):
        fast.put(frame(i), stop)
    for i in range(4):
        slow.put(frame(100 + i), stop)
    seen: dict[str, list[int]] = {"fast": [], "slow": []}
    batch_lanes = []
    for _ in range(11):
        shared = b.next_batch(stop)
        assert len(shared.batch) == len(shared.lanes) <= 4
        for f, lane in zip(shared.batch.frames, shared.lanes, strict=True):
            seen[lane.name].append(f.pts)
        batch_lanes.append([lane.name for lane in shared.lanes])
    assert seen["fast"] == list(range(40)) and seen["slow"] == list(range(100, 104))
    # the slow lane gets an equal share of the first batches, not a turn after the fast
    # lane's backlog
    assert batch_lanes[0] == ["fast", "slow", "fast", "slow"] or \
        batch_lanes[0] == ["slow", "fast", "slow", "fast"]
    assert batch_lanes[1].count("slow") == 2


def test_batches_group_one_frame_size_and_take_turns():
    b = SharedBatcher(batch=4, timeout=0.01)
    stop = threading.Event()
    small, big = b.add("small", 16), b.add("big", 16)
    for i in range(6):
        small.put(frame(i, (8, 6)), stop)
        big.put(frame(i, (16, 12)), stop)
    shapes = []
    for _ in range(4):
        shared = b.next_batch(stop)
        assert len({f.rgb.shape for f in shared.batch.frames}) == 1
        assert shared.batch.pixels.shape[0] == len(shared.lanes)
        shapes.append(shared.batch.frames[0].rgb.shape)
    assert set(shapes) == {(6, 8, 3), (12, 16, 3)}


def test_a_lone_frame_waits_at_most_the_batch_timeout():
    b = SharedBatcher(batch=8, timeout=0.05)
    stop = threading.Event()
    lane = b.add("one")
    lane.put(frame(0), stop)
    t0 = time.monotonic()
    shared = b.next_batch(stop)
    took = time.monotonic() - t0
    assert len(shared.batch) == 1 and took < 0.5


def test_frames_too_old_at_pickup_are_skipped_by_the_lane_filter():
    b = SharedBatcher(batch=4, timeout=0.01)
    stop = threading.Event()
    lane = b.add("cam", accept=lambda f: f.pts % 2 == 0)
    for i in range(4):
        lane.put(frame(i), stop)
    got = []
    while len(got) < 2:
        got += [f.pts for f in b.next_batch(stop).batch.frames]
    assert got == [0, 2]


def test_stop_ends_a_waiting_batcher_and_remove_reports_leftovers():
    b = SharedBatcher(batch=4, timeout=0.01)
    stop = threading.Event()
    lane = b.add("cam", size=8)
    threading.Timer(0.2, stop.set).start()
    assert b.next_batch(stop) is None
    stop2 = threading.Event()
    for i in range(3):
        lane.put(frame(i), stop2)
    assert b.remove(lane) == 3
    assert not lane.put(frame(9), stop2)
