"""Soak: 20,000 small frames through the whole pipeline; memory must stay flat.

Slow (about a minute or two on 2 cores), so not in the default run: `pytest -m slow tests/test_soak.py`.
The run happens in a fresh subprocess that samples its own resident set size (from
/proc/self/statm) every few hundred written frames; after a warm-up (allocator pools, encoder
buffers, torch's first calls) the RSS may not grow by more than a small bound. A leak of one
output frame (128x96x3 bytes) per input frame would add 700 MB; one of a few hundred bytes per
frame would still show as several MB.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
FRAMES = 20_000
SAMPLE_EVERY = 500
WARMUP = 2_000  # frames before the baseline sample
GROWTH_MB = 12  # allowed RSS growth after warm-up

_CHILD = r"""
import json, os, sys
from fractions import Fraction
import av, numpy as np
import media
from streamsr.api import upscale

src, dst, n, every = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
# the input: n frames of 32x24 written one at a time (never all in memory)
out = av.open(src, "w")
vs = out.add_stream("libx264", rate=25)
vs.width, vs.height, vs.pix_fmt = 32, 24, "yuv420p"
vs.codec_context.options = {"crf": "20", "preset": "ultrafast"}
for i in range(n):
    frame = av.VideoFrame.from_ndarray(media.index_frame(i % 65536, 32, 24), format="rgb24")
    frame.pts = i
    for p in vs.encode(frame):
        out.mux(p)
for p in vs.encode(None):
    out.mux(p)
out.close()

page = os.sysconf("SC_PAGE_SIZE")
samples = []

def progress(done, total):
    if done % every == 0:
        with open("/proc/self/statm") as f:
            samples.append((done, int(f.read().split()[1]) * page / 2**20))

stats = upscale(src, dst, model=media.BicubicX4(), device="cpu", batch=4,
                encoder_preset="ultrafast", progress=progress)
print(json.dumps({"frames": stats.frames, "samples": samples}))
"""


@pytest.mark.slow
@pytest.mark.timeout(1900)  # pyproject's global 300 s would cut the 20,000-frame run short
@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs /proc (Linux)")
def test_20000_frames_memory_stays_flat(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{HERE.parent}{os.pathsep}{HERE}"}
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path / "in.mkv"),
                           str(tmp_path / "out.mkv"), str(FRAMES), str(SAMPLE_EVERY)],
                          capture_output=True, text=True, timeout=1800, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["frames"] == FRAMES
    samples = dict(result["samples"])
    assert len(samples) == FRAMES // SAMPLE_EVERY
    baseline = samples[WARMUP]
    later = {k: v for k, v in samples.items() if k >= WARMUP}
    growth = max(later.values()) - baseline
    print(f"RSS MiB at frame: {json.dumps({k: round(v, 1) for k, v in samples.items()})}")
    print(f"RSS after warm-up: {baseline:.1f} MiB, peak {max(later.values()):.1f} MiB, "
          f"growth {growth:.1f} MiB (bound {GROWTH_MB})")
    assert growth < GROWTH_MB, samples
    # the first and last thousand frames carry their own index: nothing lost or reordered
    import av
    import media

    with av.open(str(tmp_path / "out.mkv")) as c:
        count = 0
        for f in c.decode(video=0):
            if count < 1000 or count >= FRAMES - 1000:
                assert media.read_index(f.to_ndarray(format="rgb24")) == count % 65536
            count += 1
    assert count == FRAMES
