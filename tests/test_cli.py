"""The CLI shell: version, info, import-mprnet, one-line errors with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys

from click.testing import CliRunner

import streamsr
from streamsr.cli import main


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_version():
    res = run("--version")
    assert res.exit_code == 0
    assert streamsr.__version__ in res.output


def test_info_json_paper():
    res = run("info", "--model", "paper", "--json")
    assert res.exit_code == 0
    data = json.loads(res.output)
    assert data["parameters"] == 21_839_972
    assert data["trunk_parameters"] == 20_127_073
    assert data["config"]["trunk"]["n_feat"] == 96
    # a 3x3 conv 96->96 alone costs 82,944 MACs per pixel: the whole model costs far more
    assert data["macs_per_input_pixel"] > 100 * 82_944


def test_info_text_lite():
    res = run("info", "--model", "tiny")
    assert res.exit_code == 0
    assert "112,088" in res.output


def test_user_errors_are_one_line_exit_2(tmp_path):
    # Run as a real process: exit code and stderr exactly as a user sees them.
    cases = [
        ["info", "--model", str(tmp_path / "missing.safetensors")],
        ["import-mprnet", str(tmp_path / "missing.pth"), str(tmp_path / "o.safetensors")],
    ]
    for args in cases:
        proc = subprocess.run([sys.executable, "-m", "streamsr", *args], capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
        assert proc.stderr.startswith("streamsr: error:")


def test_bad_option_value_exit_2():
    res = CliRunner().invoke(main, ["info", "--bogus"])
    assert res.exit_code == 2


def test_import_mprnet_refuses_existing_output(tmp_path):
    out = tmp_path / "o.safetensors"
    out.write_bytes(b"keep me")
    res = CliRunner().invoke(main, ["import-mprnet", str(tmp_path / "x.pth"), str(out)])
    assert res.exit_code == 2
    assert "--overwrite" in res.output
    assert out.read_bytes() == b"keep me"
