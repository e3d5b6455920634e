"""scripts/gpu_train.sh rehearsed on the CPU: the first lent GPU is spent training, not debugging."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                    reason="needs bash and coreutils' timeout")
def test_gpu_train_dry_run_brings_back_weights_curve_and_margins(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    # two real photographs: the held-out rule makes the second (sorted) the validation photo
    import cv2
    from skimage import data

    cv2.imwrite(str(photos / "astronaut.png"), data.astronaut()[:, :, ::-1])
    cv2.imwrite(str(photos / "immunohistochemistry.png"), data.immunohistochemistry()[:, :, ::-1])
    out = tmp_path / "out"
    env = {**os.environ, "GPU_TRAIN_DRY": "1", "OUT": str(out), "PHOTOS": str(photos),
           "STEPS": "1", "FRAMES": "2", "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_train.sh")], env=env,
                          capture_output=True, text=True, timeout=280)
    log = (out / "gpu_train.log").read_text()
    assert proc.returncode == 0, log[-3000:]
    assert "training rc=0" in log

    import streamsr

    model = streamsr.load_model(str(out / "best.safetensors"))
    assert model.config.name == "lite"
    with open(out / "curve.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and all(math.isfinite(float(r["margin_db"])) for r in rows)
    for clip in ("handheld", "dashcam"):
        q = json.loads((out / f"{clip}.json").read_text())
        assert q["frames"] == 2 and q["width"] == 512 and q["height"] == 320
        assert math.isfinite(q["psnr_margin"]) and math.isfinite(q["temporal_margin"])
