"""One run at a time per output: an exclusive `flock` on a small file beside it.

Two `--resume` runs (or torchrun jobs, or folder runs) on the same output would write the same
parts and temporary files and corrupt each other's work. The first takes the lock and writes
who it is (pid and host) into the file; the second fails at once, in one line naming them. The
kernel drops the lock when its holder exits, however it exits (SIGKILL included), so a lock file
left behind never blocks a later run; a run that ends normally removes it.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
from pathlib import Path

from streamsr.errors import OutputError
from streamsr.video.output_paths import short

log = logging.getLogger(__name__)

MARK = "streamsr lock"


def lock_path_for(output: str | os.PathLike, folder: bool = False) -> Path:
    """The lock of an output: OUT.lock beside a file, OUT/.streamsr.lock in an output folder."""
    out = Path(output)
    return out / ".streamsr.lock" if folder else out.with_name(out.name + ".lock")


class OutputLock:
    """`with OutputLock(path, what):` holds the lock at `path` for the output `what`."""

    def __init__(self, path: Path, what: str | os.PathLike) -> None:
        self.path = path
        self.what = str(what)
        self._fd: int | None = None

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        """Take the lock, or raise OutputError naming the run that holds it."""
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as exc:
                raise OutputError(f"cannot write {short(self.path)} (the lock of "
                                  f"{short(self.what)}): {exc.strerror or exc}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    holder = _read(fd)
                    os.close(fd)
                    who = holder.removeprefix(MARK).lstrip(": ").strip() or "another process"
                    raise OutputError(f"{self.what} is being written by another streamsr run "
                                      f"({who}; lock {self.path}): wait for it to finish or stop "
                                      f"it") from None
                os.close(fd)  # a file system without locks (ENOLCK, EOPNOTSUPP): go on unlocked
                log.warning("cannot lock %s (%s): nothing stops a second run on %s meanwhile",
                            self.path, exc.strerror or exc, self.what)
                return
            # the holder before us may have removed the file between our open and our lock:
            # then we hold a lock on a name nobody else sees; take the file that is there now
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        text = _read(fd)
        if text and not text.startswith(MARK):
            os.close(fd)
            raise OutputError(f"{self.path} exists and is not a streamsr lock file; move it away "
                              f"(it locks runs on {self.what})")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{MARK}: pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Remove the lock file (while still holding it) and let go."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.unlink(self.path)
        except OSError:
            pass
        os.close(fd)


def _read(fd: int) -> str:
    try:
        return os.pread(fd, 200, 0).decode("utf-8", "replace").splitlines()[0] if os.fstat(fd).st_size else ""
    except (OSError, IndexError):
        return ""
