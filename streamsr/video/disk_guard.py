"""Stop writing a video while there is still room to finish the file.

An MP4/MOV file is only playable once its index (the `moov` box) is written, and that happens
last, at close: when the disk fills (or a file-size limit or quota is reached) in the middle of
a run, the muxer cannot write it and the whole file is lost. An MKV cut short plays, but the
frames still inside the encoder (x264 holds dozens) never reach it. So the sink asks this
guard, before each frame, whether the space left would still hold everything closing needs:
the frames inside the encoder (flushed at close), what the muxer holds in memory (an MKV
cluster: up to seconds of video), the index (a few dozen bytes per packet) and a fixed margin
for I/O buffers, copied audio up to the cut and the trailer. When it would not,
the run stops there with a clear error and the file is finalised with every frame handed to
the encoder.

"Space left" is the smaller of the file system's free space (`statvfs`: what unprivileged
users may use, or all free blocks for root, who may also use the reserved share) and the
process's file-size limit (`RLIMIT_FSIZE`, as `ulimit -f` sets) minus the file's current size.
A file system that reports no sizes (some FUSE mounts) and outputs that are not regular files
(a FIFO) are not guarded. Far from full, the guard looks again only after a quarter of the
slack has been written or a second has passed, so a network file system is not asked (stat,
statfs) for every frame.
"""

from __future__ import annotations

import os
import resource
import stat
import time
from pathlib import Path

from streamsr.errors import OutputError

INDEX_BYTES_PER_PACKET = 64  # stsz + stts + ctts + stco + stss entries, with room to spare
MARGIN = 128 * 1024  # I/O buffers (32 kB in libavformat), trailer boxes, audio up to the cut


def _human(n: float) -> str:
    if n < 1e3:
        return f"{n:.0f} bytes"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} bytes"


class SpaceGuard:
    """Counts what is muxed into one output file and refuses a frame that would leave no room."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.packets = 0  # packets muxed (all streams)
        self.bytes = 0  # their payload bytes
        self.video_packets = 0
        self.video_bytes = 0
        self.largest_video = 0
        self.enabled = True
        self._recheck_bytes = 0  # look again once this much has been muxed ...
        self._recheck_time = 0.0  # ... or at this time (monotonic), whichever comes first

    def muxed(self, size: int, video: bool) -> None:
        """Call for every packet handed to the muxer."""
        self.packets += 1
        self.bytes += size
        if video:
            self.video_packets += 1
            self.video_bytes += size
            self.largest_video = max(self.largest_video, size)

    def needed(self, in_flight: int, on_disk: int = 0) -> int:
        """Bytes closing the file needs with `in_flight` frames inside the encoder and `on_disk`
        bytes of the file written (the muxed payload beyond that is still in the muxer's memory)."""
        mean = self.video_bytes / self.video_packets if self.video_packets else 0
        # frames still in the encoder come out at close: count each at twice the mean packet
        # (and never less than the largest seen) so a flush of busier frames still fits
        flush = in_flight * max(2 * mean, self.largest_video)
        index = INDEX_BYTES_PER_PACKET * (self.packets + in_flight + 16)
        held = max(0, self.bytes - on_disk)
        return int(flush + held + index + MARGIN)

    def room(self, on_disk: int) -> int | None:
        """Bytes this file can still grow by: disk space and the file-size limit, whichever is
        less; None when neither is known."""
        room = None
        try:
            st = os.statvfs(self.path.parent if str(self.path.parent) else ".")
            if st.f_blocks > 0 and st.f_frsize > 0:  # all zeros: the file system does not say
                free = st.f_bfree if os.geteuid() == 0 else st.f_bavail
                room = free * st.f_frsize
        except OSError:
            pass
        soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
        if soft != resource.RLIM_INFINITY:
            left = max(0, soft - on_disk)
            room = left if room is None else min(room, left)
        return room

    def check(self, in_flight: int, frames: int) -> None:
        """Raise OutputError before a frame that would leave too little room to finish the file."""
        if not self.enabled:
            return
        now = time.monotonic()
        if self.bytes < self._recheck_bytes and now < self._recheck_time:
            return
        try:
            st = self.path.stat()
        except OSError:
            st = None
        if st is not None and not stat.S_ISREG(st.st_mode):
            self.enabled = False  # a FIFO or a device: no file to finish
            return
        on_disk = st.st_size if st is not None else 0
        need = self.needed(in_flight + 1, on_disk)
        room = self.room(on_disk)
        if room is None:
            self.enabled = False
            return
        self._recheck_bytes = self.bytes + (room - need) // 4
        self._recheck_time = now + 1.0
        if room < need:
            raise OutputError(
                f"cannot write {self.path}: disk nearly full ({_human(room)} left, finishing the "
                f"file needs about {_human(need)}): stopped after {frames} frames and finalised the "
                f"file with them")


__all__ = ["SpaceGuard"]
