"""SpaceGuard (streamsr/video/disk_guard.py): when it stops a run, and when it must not."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

import streamsr.video.disk_guard as disk_guard
from streamsr.errors import OutputError
from streamsr.video.disk_guard import MARGIN, SpaceGuard


def fake_statvfs(monkeypatch, *, blocks: int, free: int, avail: int, frsize: int = 4096) -> None:
    monkeypatch.setattr(disk_guard.os, "statvfs", lambda path: SimpleNamespace(
        f_blocks=blocks, f_bfree=free, f_bavail=avail, f_frsize=frsize))


@pytest.fixture
def out(tmp_path):
    path = tmp_path / "out.mp4"
    path.write_bytes(b"\0" * 1000)
    return path


def test_stops_when_the_file_system_is_nearly_full(out, monkeypatch):
    fake_statvfs(monkeypatch, blocks=1000, free=10, avail=10)  # 40 kB: less than the margin
    monkeypatch.setattr(disk_guard.os, "geteuid", lambda: 1000)
    with pytest.raises(OutputError, match=r"disk nearly full \(41.0 kB left.*stopped after 7 frames"):
        SpaceGuard(out).check(in_flight=0, frames=7)


def test_root_may_use_the_reserved_blocks(out, monkeypatch):
    # ext4 past its 5 % reserve: nothing left for users, plenty for root (who writes in containers)
    fake_statvfs(monkeypatch, blocks=10**6, free=50_000, avail=0)
    monkeypatch.setattr(disk_guard.os, "geteuid", lambda: 0)
    SpaceGuard(out).check(in_flight=0, frames=0)  # 200 MB free for root: goes on
    monkeypatch.setattr(disk_guard.os, "geteuid", lambda: 1000)
    with pytest.raises(OutputError, match="disk nearly full"):
        SpaceGuard(out).check(in_flight=0, frames=0)


def test_a_file_system_that_reports_no_sizes_is_not_guarded(out, monkeypatch):
    fake_statvfs(monkeypatch, blocks=0, free=0, avail=0)  # some FUSE mounts say all zeros
    guard = SpaceGuard(out)
    guard.check(in_flight=0, frames=0)
    assert not guard.enabled


def test_a_fifo_is_not_guarded(tmp_path, monkeypatch):
    fifo = tmp_path / "pipe.mkv"
    os.mkfifo(fifo)
    fake_statvfs(monkeypatch, blocks=1000, free=0, avail=0)  # would stop a regular file
    guard = SpaceGuard(fifo)
    guard.check(in_flight=0, frames=0)
    assert not guard.enabled


def test_far_from_full_it_looks_again_only_after_a_quarter_of_the_slack(out, monkeypatch):
    calls = []
    monkeypatch.setattr(disk_guard.os, "geteuid", lambda: 1000)

    def statvfs(path):
        calls.append(path)
        return SimpleNamespace(f_blocks=10**6, f_bfree=1000, f_bavail=1000, f_frsize=4096)

    monkeypatch.setattr(disk_guard.os, "statvfs", statvfs)
    guard = SpaceGuard(out)
    guard.check(in_flight=0, frames=0)
    slack = 1000 * 4096 - guard.needed(1, 1000)
    for _ in range(10):  # well under a quarter of the slack muxed, within a second
        guard.muxed(slack // 100, video=True)
        guard.check(in_flight=0, frames=1)
    assert len(calls) == 1
    guard.muxed(slack // 4, video=True)
    guard.check(in_flight=0, frames=2)
    assert len(calls) == 2


def test_needed_counts_encoder_frames_held_bytes_and_index():
    guard = SpaceGuard(os.devnull)  # never stat-ed here
    for size in (1000, 3000):
        guard.muxed(size, video=True)
    guard.muxed(500, video=False)
    # 2 frames in the encoder at max(2 x mean 2000, largest 3000) = 4000 each; 4500 bytes muxed
    # of which 1500 on disk: 3000 held; index 64 x (3 + 2 + 16)
    assert guard.needed(2, on_disk=1500) == 2 * 4000 + 3000 + 64 * 21 + MARGIN
