"""The command does not depend on its log stream: a closed or full stderr (cron, services)
neither hangs it nor stops it, and its exit code still tells the outcome."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import media

from streamsr.cli.streams import NeverFailingStream

REPO = Path(__file__).resolve().parents[1]


def test_a_failing_stream_is_swallowed_and_replaced(tmp_path):
    class Full(io.StringIO):
        def write(self, text):
            raise OSError(28, "No space left on device")

        def flush(self):
            raise OSError(28, "No space left on device")

    stream = NeverFailingStream(Full())
    assert stream.write("progress 1/10\n") == len("progress 1/10\n")
    stream.flush()
    assert stream.broken
    assert stream.write("progress 2/10\n") == len("progress 2/10\n")  # /dev/null from now on


def test_closed_or_full_stderr_neither_hangs_nor_stops_the_run(tmp_path, tiny_weights):
    src = media.make_index_clip(tmp_path / "in.mp4", n=8)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    base = [sys.executable, "-m", "streamsr", "upscale", str(src)]
    opts = ["--model", str(tiny_weights), "--device", "cpu", "--encoder-preset", "ultrafast",
            "--batch", "2", "--progress"]  # the progress bar writes to stderr after every frame
    runs = {
        "closed": subprocess.Popen(["sh", "-c", 'exec "$@" 2>&-', "sh", *base,
                                    str(tmp_path / "closed.mp4"), *opts], env=env,
                                   stdout=subprocess.DEVNULL),
        "full": subprocess.Popen([*base, str(tmp_path / "full.mp4"), *opts], env=env,
                                 stdout=subprocess.DEVNULL, stderr=open("/dev/full", "w")),  # noqa: SIM115
        "error": subprocess.Popen(["sh", "-c", 'exec "$@" 2>&- >&-', "sh", *base[:-1],
                                   str(tmp_path / "missing.mp4"), str(tmp_path / "x.mp4"), *opts],
                                  env=env),
    }
    codes = {}
    try:
        for name, proc in runs.items():
            codes[name] = proc.wait(timeout=180)
    finally:
        for proc in runs.values():
            if proc.poll() is None:
                proc.kill()
    assert codes == {"closed": 0, "full": 0, "error": 2}
    for name in ("closed", "full"):
        frames, _, _ = media.decode_all(tmp_path / f"{name}.mp4")
        assert len(frames) == 8  # complete: every frame, and a finalised file
        assert b"x264 [" not in (tmp_path / f"{name}.mp4").read_bytes()  # no log text inside
    assert not (tmp_path / "x.mp4").exists()
