"""The output lock (streamsr/lock.py): one job per output at a time, its holder named."""

from __future__ import annotations

import os
import socket

import pytest

from streamsr.errors import OutputError
from streamsr.lock import MARK, OutputLock


def test_the_lock_names_its_holder(tmp_path):
    path = tmp_path / "x.lock"
    with OutputLock(path, "x.mp4"):
        assert path.read_text() == f"{MARK}: pid {os.getpid()} on {socket.gethostname()}\n"
        with pytest.raises(OutputError, match=rf"x.mp4 is being written .*pid {os.getpid()}"):
            OutputLock(path, "x.mp4").acquire()
    assert not path.exists()
    with OutputLock(path, "x.mp4"):  # free again
        pass
