"""The page at / in a real headless browser (Debian's Chromium): one tile per stream, each
showing that stream's latest output frame."""

from __future__ import annotations

import os
import shutil
import subprocess

import media
import numpy as np
import pytest
from PIL import Image
from test_serve import Running, write_config

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}


def chromium(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                           "--hide-scrollbars", "--virtual-time-budget=4000", *args],
                          capture_output=True, text=True, timeout=60)


def page_server(tmp_path, clips: dict[str, os.PathLike]) -> Running:
    config = tmp_path / "serve.toml"
    write_config(config, "".join(
        f'[[stream]]\nname = "{name}"\ninput = "{clip}"\nfile = "{tmp_path / name}.mkv"\n'
        'encoder_preset = "ultrafast"\n' for name, clip in clips.items()))
    run = Running(config)
    run.wait_for(lambda s: all(x["state"] == "ended" for x in s.values()))
    return run


@pytest.mark.timeout(120)
def test_page_shows_one_tile_per_stream_in_a_real_browser(tmp_path):
    if CHROMIUM is None:  # CI sets STREAMSR_REQUIRE_BROWSER=1: a missing browser fails there
        reason = "Chromium is not installed (.ci/setup-browser.sh installs it)"
        if os.environ.get("STREAMSR_REQUIRE_BROWSER") == "1":
            pytest.fail(f"STREAMSR_REQUIRE_BROWSER=1 but {reason}", pytrace=False)
        pytest.skip(reason)
    clips = {name: media.make_color_clip(tmp_path / f"{name}.mp4", rgb=rgb, n=3)
             for name, rgb in COLOURS.items()}
    run = page_server(tmp_path, clips)
    try:
        url = f"http://127.0.0.1:{run.port}/"
        dom = chromium("--dump-dom", url)
        assert dom.returncode == 0, dom.stderr[-1000:]
        assert dom.stdout.count('class="tile"') == 3
        for name in COLOURS:
            assert f'id="tile-{name}"' in dom.stdout and f"/tile/{name}.jpg" in dom.stdout
        shot = tmp_path / "page.png"
        proc = chromium(f"--screenshot={shot}", "--window-size=1200,700", url)
        assert proc.returncode == 0 and shot.exists(), proc.stderr[-1000:]
    finally:
        run.close()
    pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3).astype(int)
    for name, rgb in COLOURS.items():  # each stream's frame is on the page
        near = np.abs(pixels - np.array(rgb)).max(axis=1) < 40
        assert near.mean() > 0.02, f"no {name} tile in the screenshot"
