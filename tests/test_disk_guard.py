"""SpaceGuard (streamsr/video/disk_guard.py): when it stops a run, and when it must not."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import av
import media
import numpy as np
import pytest
from media import ENV, REPO, H, W, assert_one_line, cli, decodable, indices, model_args, run_api

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


# -- fault cases (docs/faults.md; `pytest -k fault_` runs them all) ---------------------------

_DISK_FULL_CHILD = r"""
import resource, signal, sys
import media
from streamsr.errors import OutputError
from streamsr.api import upscale
written = []
try:
    upscale(sys.argv[1], sys.argv[2], model=media.BicubicX4(), device="cpu", batch=2,
            encoder_preset="ultrafast", crf=0, progress=lambda done, total: written.append(done))
except OutputError as exc:
    print(max(written, default=0), flush=True)
    print(exc, file=sys.stderr)
    sys.exit(3)
"""


def _file_size_limit(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


@pytest.fixture(scope="module")
def noisy_clip(tmp_path_factory):
    """300 lossless frames of index patterns under noise (12 s: output sizes grow steadily)."""
    n = 300
    rng = np.random.default_rng(0)
    noisy = [np.clip(media.index_frame(i, W, H).astype(int) + rng.integers(-40, 41, (H, W, 3)), 0, 255)
             .astype(np.uint8) for i in range(n)]
    return media.write_clip(tmp_path_factory.mktemp("noisy") / "in.mkv", noisy,
                            options={"crf": "0", "preset": "ultrafast"}), n


def strictly_decoded(path) -> int:
    """Frames of `path`, decoded with errors raised (the file must be whole, index included)."""
    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


@pytest.mark.parametrize("ext", ["mkv", "mp4"])
def test_fault_15_disk_full_keeps_a_playable_partial_output(tmp_path, noisy_clip, ext):
    src, n = noisy_clip
    full = run_api(src, tmp_path / f"full.{ext}", crf=0).output_bytes
    limit = full // 2  # the file-size limit is reached halfway through
    out = tmp_path / f"out.{ext}"
    proc = subprocess.run([sys.executable, "-c", _DISK_FULL_CHILD, str(src), str(out)],
                          capture_output=True, text=True, timeout=180, cwd=REPO, env=ENV,
                          preexec_fn=_file_size_limit(limit))
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "cannot write" in proc.stderr and "disk nearly full" in proc.stderr, proc.stderr[-2000:]
    assert out.stat().st_size <= limit
    reported = int(proc.stdout.split()[-1])
    assert 0 < reported < n
    # stopped while the file could still be finished: every frame handed to the encoder is in
    # it, in order, and the file decodes without an error (an MP4 needs its index for that)
    got = decodable(out)
    assert len(got) == reported == strictly_decoded(out), (len(got), reported)
    assert indices(got) == list(range(reported))


def test_fault_15_full_file_system_stops_in_time(tmp_path, noisy_clip, monkeypatch):
    """A file system with a fixed budget (statvfs reports what is left of it) is never overrun."""
    import streamsr.video.disk_guard as space

    src, n = noisy_clip
    budget = run_api(src, tmp_path / "full.mp4", crf=0).output_bytes // 2
    disk = tmp_path / "disk"
    disk.mkdir()
    real = os.statvfs

    class Left:
        f_frsize = 1
        f_blocks = budget

        def __init__(self) -> None:
            used = sum(p.stat().st_size for p in disk.iterdir())
            self.f_bavail = self.f_bfree = max(0, budget - used)

    monkeypatch.setattr(space.os, "statvfs", lambda path: Left() if Path(path) == disk else real(path))
    written: list[int] = []
    with pytest.raises(OutputError, match="disk nearly full") as err:
        run_api(src, disk / "out.mp4", crf=0, progress=lambda done, total: written.append(done))
    assert "finalised" in str(err.value)
    out = disk / "out.mp4"
    assert out.stat().st_size <= budget
    assert 0 < max(written) < n
    assert strictly_decoded(out) == max(written)
    assert indices(decodable(out)) == list(range(max(written)))


def test_fault_15_cli_disk_full_is_one_line(tmp_path, clip, tiny_weights):
    r = cli("upscale", clip, tmp_path / "cli.mp4", *model_args(tiny_weights), "--crf", "0",
            timeout=180, preexec_fn=_file_size_limit(8000))
    assert_one_line(r.returncode, r.stderr, "cannot write", "disk nearly full", "finalised")
