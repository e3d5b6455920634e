"""CpuThreads: one torch thread or all of them, measured in the run, unless the user chose."""

from __future__ import annotations

import media
import pytest
import torch

from streamsr.api import upscale
from streamsr.inference.cpu_threads import CpuThreads

FAST = dict(encoder_preset="ultrafast", device="cpu", batch=3)  # odd batch: partial last batch


def _run(src, dst, **kw):
    return upscale(src, dst, **{"model": media.BicubicX4(), **FAST, **kw})


class _StubEngine:
    device = torch.device("cpu")
    busy_seconds, frames_done = 0.0, 0


@pytest.fixture
def two_threads(monkeypatch):
    """2 torch threads, a 1 s measuring window, and `batch(seconds)`: the stub engine reports a
    2-frame batch that took `seconds` to a fresh `CpuThreads`. Yields (governor, batch)."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(CpuThreads, "WINDOW", 1.0)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    engine = _StubEngine()
    gov = CpuThreads(engine)

    def batch(seconds: float) -> None:
        engine.busy_seconds += seconds
        engine.frames_done += 2
        gov.tick()

    try:
        yield gov, batch
    finally:
        gov.restore()
        torch.set_num_threads(before)


@pytest.mark.parametrize("one_thread_faster", [True, False])
def test_cpu_threads_keep_the_faster_setting(two_threads, one_thread_faster):
    gov, batch = two_threads
    batch(5.0)  # warm-up: not measured; one thread is measured first
    assert torch.get_num_threads() == 1
    batch(0.6)  # window not full yet
    batch(0.6)  # 1.2 s for 4 frames (0.3 s each) with one thread: next, all threads
    assert torch.get_num_threads() == 2
    batch(0.5 if not one_thread_faster else 0.8)  # within 1.5x of one thread: keep measuring
    assert torch.get_num_threads() == 2
    batch(0.5 if not one_thread_faster else 0.8)
    assert torch.get_num_threads() == (1 if one_thread_faster else 2)
    batch(10.0)  # decided once: later batches change nothing
    assert torch.get_num_threads() == (1 if one_thread_faster else 2)
    assert not CpuThreads(_StubEngine()).enabled  # a second run in the process leaves it alone
    gov.restore()
    assert torch.get_num_threads() == 2
    again = CpuThreads(_StubEngine())
    assert again.enabled  # free again once the first run ended
    again.restore()


@pytest.mark.parametrize("both", [0.05, 5.0])
def test_cpu_threads_decide_after_one_batch_when_clear(two_threads, both):
    """A setting 1.5x slower or faster per frame than the first is decided on at once."""
    gov, batch = two_threads
    for seconds in (5.0, 0.6, 0.6):  # warm-up, then 0.3 s per frame with one thread
        batch(seconds)
    assert torch.get_num_threads() == 2 and gov.enabled
    batch(both)  # one 2-frame batch with both threads
    assert not gov.enabled  # decided after a single batch, far below the 1 s window
    assert torch.get_num_threads() == (2 if both < 0.6 else 1)


def test_upscale_leaves_the_thread_count_as_it_found_it(tmp_path, monkeypatch):
    from streamsr.runtime import use_cpu_threads
    use_cpu_threads()  # the first engine of a process sets the count once; then compare
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    src = media.make_index_clip(tmp_path / "in.mp4", n=4)
    _run(src, tmp_path / "out.mp4")
    assert torch.get_num_threads() == before


# -- measured in the run, unless the user chose the count -----------------------------------------

class _ThreadSpy(torch.nn.Module):
    """x4 nearest that records torch's thread count at every call."""

    scale = 4

    def __init__(self) -> None:
        super().__init__()
        self.counts: list[int] = []

    def forward(self, x):
        self.counts.append(torch.get_num_threads())
        return torch.nn.functional.interpolate(x, scale_factor=4, mode="nearest")


@pytest.mark.parametrize("threads", [None, 1])
def test_threads_are_measured_in_the_run_unless_given(tmp_path, monkeypatch, threads):
    """Whatever the load average says, a run without `threads` tries one thread (warm-up and
    first window) and then all of them; with `threads=1` every call runs on one thread."""
    import streamsr.runtime as eng

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(eng, "_pinned_threads", None)
    monkeypatch.setattr(eng, "available_cpus", lambda: 2)
    monkeypatch.setattr(eng.os, "getloadavg", lambda: (9.0, 9.0, 9.0))  # ignored
    monkeypatch.setattr(CpuThreads, "FRAMES", 2)  # one 2-frame batch per measurement
    before = torch.get_num_threads()
    spy = _ThreadSpy()
    src = media.make_index_clip(tmp_path / "in.mp4", n=8)
    try:
        upscale(src, tmp_path / "out.mp4", model=spy, device="cpu", batch=2,
                encoder_preset="ultrafast", threads=threads)
    finally:
        torch.set_num_threads(before)
    calls = spy.counts  # the engine's trial call at plan time, then one per 2-frame batch
    if threads == 1:
        assert calls == [1] * 5
    else:  # all CPUs despite the load; batches: warm-up and window on 1 thread, window on 2
        assert calls[:4] == [2, 1, 1, 2] and len(calls) == 5, calls
