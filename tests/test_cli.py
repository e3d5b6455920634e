"""The CLI shell: version, info, import-mprnet, one-line errors with exit code 2."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner
from packaging.requirements import Requirement  # a dependency of pytest itself

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

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
    # counted conv by conv (and the head by hand) in test_models.test_macs_of_paper_model
    assert data["macs_per_input_pixel"] == 14_306_617


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


def test_bad_option_value_exit_2(tmp_path):
    # Bad values and unknown options, of a command and of `streamsr` itself (parsed before any
    # command runs): one line naming the offending option, exit 2, no Usage block, no traceback.
    clip = tmp_path / "in.mp4"
    clip.write_bytes(b"never read: option parsing fails first")
    cases = [
        (["upscale", str(clip), str(tmp_path / "out.mkv"), "--crf", "99"], "'--crf'"),
        (["--bogus"], "'--bogus'"),
        (["--verbose=3", "info"], "'--verbose'"),
    ]
    for args, named in cases:
        proc = subprocess.run([sys.executable, "-m", "streamsr", *args], capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 2, (args, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, (args, proc.stderr)
        assert lines[0].startswith("streamsr: error:"), lines
        assert named in lines[0], lines
        assert "Traceback" not in proc.stderr and "Usage:" not in proc.stderr
        assert proc.stdout == ""
    assert not (tmp_path / "out.mkv").exists()


def test_import_mprnet_refuses_existing_output(tmp_path):
    out = tmp_path / "o.safetensors"
    out.write_bytes(b"keep me")
    res = CliRunner().invoke(main, ["import-mprnet", str(tmp_path / "x.pth"), str(out)])
    assert res.exit_code == 2
    assert "--overwrite" in res.output
    assert out.read_bytes() == b"keep me"


def test_tomli_fallback_is_a_declared_dependency_on_310():
    # The CLI and recipes fall back to `import tomli` where tomllib is missing (Python 3.10, which
    # pyproject allows): a clean 3.10 install must pull tomli in, and 3.11+ must not need it.
    root = Path(__file__).resolve().parents[1]
    users = [p for p in (root / "streamsr").rglob("*.py")
             if re.search(r"^\s*import tomli\b", p.read_text(), re.M)]
    assert users, "no tomli fallback left: drop this test and the dependency"
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    assert project["requires-python"] == ">=3.10"
    reqs = [Requirement(r) for r in project["dependencies"]]
    tomli = [r for r in reqs if r.name == "tomli"]
    assert len(tomli) == 1, [str(r) for r in reqs]
    assert tomli[0].marker.evaluate({"python_version": "3.10"})
    assert not tomli[0].marker.evaluate({"python_version": "3.11"})
