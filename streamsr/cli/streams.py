"""The command keeps running whatever happens to its log stream.

Run by cron or a service manager, streamsr may start with stderr closed (`2>&-`), read-only,
or on a full device (`2>/dev/full`). Without care, the first progress-bar update raises
`OSError` in the encode thread, tqdm is left holding its lock, and the process hangs at exit;
and a closed descriptor 0-2 is handed to the next file opened, so FFmpeg's log lines (written
to descriptor 2) would land in the output video. `protect_std_streams` points closed or
unwritable descriptors 0-2 at /dev/null and wraps `sys.stderr` in a stream that never raises:
the first write that fails sends the rest of the log (Python's and FFmpeg's) to /dev/null.
"""

from __future__ import annotations

import fcntl
import io
import os
import sys


def _usable(fd: int, write: bool) -> bool:
    try:
        mode = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE
    except OSError:  # closed
        return False
    return mode != os.O_RDONLY if write else mode != os.O_WRONLY


def _to_devnull(fd: int) -> None:
    null = os.open(os.devnull, os.O_RDWR)
    if null != fd:
        os.dup2(null, fd)
        os.close(null)


class NeverFailingStream(io.TextIOBase):
    """A text stream whose `write` and `flush` never raise: when the stream under it fails
    (closed, full, read-only), its descriptor is pointed at /dev/null and writing goes on."""

    def __init__(self, inner) -> None:
        super().__init__()
        self._inner = inner
        self.broken = False

    @property
    def encoding(self) -> str:
        return getattr(self._inner, "encoding", None) or "utf-8"

    @property
    def errors(self) -> str | None:
        return getattr(self._inner, "errors", None)

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        try:
            return self._inner.isatty()
        except (OSError, ValueError):
            return False

    def fileno(self) -> int:
        return self._inner.fileno()

    def write(self, text: str) -> int:
        try:
            return self._inner.write(text)
        except (OSError, ValueError):
            self._give_up()
            return len(text)

    def flush(self) -> None:
        try:
            self._inner.flush()
        except (OSError, ValueError):
            self._give_up()

    def _give_up(self) -> None:
        self.broken = True
        try:
            fd = self._inner.fileno()
        except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
            fd = None
        if fd is not None and fd in (1, 2):
            _to_devnull(fd)  # FFmpeg writes its log here too; and the buffered text drains
            try:
                self._inner.flush()
            except (OSError, ValueError):
                pass
        self._inner = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 - lives as long as the process


def protect_std_streams() -> None:
    """Descriptors 0-2 open (on /dev/null when closed or unusable) and a `sys.stderr` that never
    raises. Call first thing in the command; calling it again does nothing more."""
    for fd, write in ((0, False), (1, True), (2, True)):
        if not _usable(fd, write):
            _to_devnull(fd)
    if sys.stdin is None:
        sys.stdin = open(os.devnull, encoding="utf-8")  # noqa: SIM115
    if sys.stdout is None:
        sys.stdout = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115
    if sys.stderr is None:
        sys.stderr = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115
    if not isinstance(sys.stderr, NeverFailingStream):
        sys.stderr = NeverFailingStream(sys.stderr)
