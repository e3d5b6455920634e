"""The CLI shell: version, info, import-mprnet, one-line errors with exit code 2."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

import torch
from click.testing import CliRunner
from media import assert_one_line, cli, invoke, model_args
from packaging.requirements import Requirement  # a dependency of pytest itself
from safetensors import safe_open

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

import streamsr
from streamsr.cli import main
from streamsr.models import LITE, PAPER, TINY, DeblurSR
from streamsr.models.weights import load_weights, save_model

KEYS_TSV = Path(__file__).parent / "data" / "mprnet_keys.tsv"


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


def test_info_bundled_lite_weights():
    res = run("info", "--model", "lite", "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    bundled = Path(streamsr.__file__).parent / "weights" / "lite.safetensors"
    assert Path(data["weights"]["path"]).resolve() == bundled.resolve()
    assert data["config"] == asdict(LITE)
    assert data["parameters"] == sum(p.numel() for p in DeblurSR(LITE).parameters())
    with safe_open(str(bundled), framework="pt") as f:
        meta = f.metadata()
    assert json.loads(meta["config"]) == asdict(LITE)
    assert {k: v for k, v in data["weights"].items() if k != "path"} == {
        k: v for k, v in meta.items() if k != "config"}
    text = run("info", "--model", "lite")
    assert text.exit_code == 0
    assert f"{data['parameters']:,}" in text.output
    assert str(bundled.name) in text.output and "untrained" not in text.output


def test_info_builds_no_model_and_names_unusable_weights(tmp_path, monkeypatch):
    # info printed known figures after building (and FLOP-counting) the real model: 8-13 s
    import streamsr.models.deblur_sr as deblur_sr

    monkeypatch.setattr(deblur_sr.DeblurSR, "__init__", lambda *a, **k: (_ for _ in ()).throw(
        AssertionError("info built a model")))
    res = run("info", "--model", "paper", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["macs_per_input_pixel"] == 14_306_617
    monkeypatch.undo()
    path = tmp_path / "init.safetensors"
    save_model(DeblurSR(TINY), path, {"trained": "trunk-only"})
    res = run("info", "--model", str(path), "--json")
    assert res.exit_code == 0, res.output
    assert "cannot make a picture" in json.loads(res.output)["weights_problem"]
    res = run("info", "--model", str(path))
    assert "not usable for upscale" in res.output and "trunk-only" in res.output
    assert json.loads(run("info", "--json").output)["weights_problem"] is None  # bundled lite


def test_info_of_a_weights_file_rebuilds_its_config(tmp_path):
    # a config no name gives: info must read it from the file's metadata
    cfg = replace(TINY, sr_blocks=2, sr_feat=12, name="mine")
    torch.manual_seed(0)
    path = tmp_path / "mine.safetensors"
    save_model(DeblurSR(cfg), path, {"note": "made by test_cli"})
    res = run("info", "--model", str(path), "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["config"] == asdict(cfg)
    assert data["parameters"] == sum(p.numel() for p in DeblurSR(cfg).parameters())
    assert data["parameters"] != 112_088  # not the tiny model's count
    assert data["weights"]["path"] == str(path)
    assert data["weights"]["note"] == "made by test_cli"
    text = run("info", "--model", str(path))
    assert text.exit_code == 0
    assert "12 features, 2 residual blocks" in text.output and str(path) in text.output


def test_import_mprnet_converts_an_official_checkpoint(tmp_path):
    # An official-layout checkpoint as train.py of MPRNet saves it under DataParallel:
    # {"state_dict": {"module.<key>": tensor}}, random values; the one shared PReLU appears
    # under many names with one value, as it does in the real file.
    g = torch.Generator().manual_seed(3)
    state = {}
    for line in KEYS_TSV.read_text().splitlines():
        key, shape = line.split("\t")
        shape = tuple(int(n) for n in shape.split(","))
        prelu = key.endswith(".weight") and shape == (1,)
        state[key] = torch.full((1,), 0.17) if prelu else torch.randn(shape, generator=g)
    ckpt = tmp_path / "model_deblurring.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}}, ckpt)
    out = tmp_path / "joint.safetensors"

    res = run("import-mprnet", str(ckpt), str(out))
    assert res.exit_code == 0, res.output
    assert res.output.startswith(f"wrote {out}")
    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
        stored = {k: f.get_tensor(k) for k in f.keys()}
    assert json.loads(meta["config"]) == asdict(PAPER)
    assert meta["trained"] == "trunk-only"
    unstored = []
    for key, value in state.items():
        if "trunk." + key in stored:
            assert torch.equal(stored["trunk." + key], value), key
        else:
            unstored.append(key)
    # only aliases of the shared PReLU may be stored once under another name
    assert all(tuple(state[k].shape) == (1,) for k in unstored), unstored
    assert len(unstored) == sum(1 for v in state.values() if v.shape == (1,)) - 1
    # and the file rebuilds the paper model with every one of the 316 tensors in place (as
    # `train --init` loads it; `upscale` refuses it: its x4 head is untrained)
    loaded = load_weights(DeblurSR(PAPER), out)
    trunk = loaded.trunk.state_dict()
    assert sorted(trunk) == sorted(state)
    assert all(torch.equal(trunk[k], v) for k, v in state.items())


def test_top_level_options_work_without_click_82s_no_args_error():
    """click 8.1 (allowed by pyproject) has no click.exceptions.NoArgsIsHelpError: naming it
    in an `except` broke --help, --version and a bare `streamsr` there. Without the name,
    they must still work, and a bad top-level option still be one line."""
    code = ("import sys, runpy, click.exceptions as e; e.__dict__.pop('NoArgsIsHelpError', None); "
            "sys.argv = ['streamsr'] + sys.argv[1:]; runpy.run_module('streamsr', run_name='__main__')")
    # a bare `streamsr` prints the help and exits 0 (click 8.1) or 2 (click >= 8.2)
    for args, rcs, text in ((["--help"], {0}, "Usage:"), (["--version"], {0}, "version"),
                            ([], {0, 2}, "Usage:"), (["--bogus"], {2}, "streamsr: error: No such option")):
        r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode in rcs, (args, r.stderr[-1000:])
        assert text in r.stdout + r.stderr and "Traceback" not in r.stderr, (args, r.stderr[-1000:])


# -- one convention for the common options (-q/--quiet, -v/--verbose, --progress, --threads) --

PROGRESS_COMMANDS = {"upscale", "bench", "prepare gopro", "prepare frames", "prepare synthetic",
                     "train", "eval", "eval-video"}
THREADS_COMMANDS = {"upscale", "bench", "train", "eval", "eval-video"}


def _leaf_commands(group, prefix: str = ""):
    import click

    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            yield from _leaf_commands(cmd, f"{prefix}{name} ")
        else:
            yield f"{prefix}{name}", cmd


def test_every_command_spells_the_common_options_alike():
    """-q/--quiet and -v/--verbose on every command (as on the group), --progress/--no-progress
    wherever there is a progress bar (the old `--no-progress` and `-q` spellings included),
    --threads wherever torch's thread count matters."""
    leaves = dict(_leaf_commands(main))
    assert PROGRESS_COMMANDS | THREADS_COMMANDS <= set(leaves)
    for name, cmd in leaves.items():
        opts = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)}
        assert {"-q", "--quiet", "-v", "--verbose"} <= opts, name
        if name in PROGRESS_COMMANDS:
            assert {"--progress", "--no-progress"} <= opts, name
        if name in THREADS_COMMANDS:
            assert "--threads" in opts, name
    top = {o for p in main.params for o in p.opts}
    assert {"-q", "--quiet", "-v", "--verbose"} <= top


def _two_videos(tmp_path):
    sys.path.insert(0, str(Path(__file__).parent))
    import media

    a = media.make_smooth_clip(tmp_path / "a.mp4", n=3, size=(32, 24))
    return a, a


def test_quiet_and_verbose_work_before_and_after_the_command(tmp_path):
    res = run("info", "--model", "tiny", "-q", "-v")
    assert res.exit_code == 0 and "112,088" in res.output  # quiet keeps the result itself
    # accepted, not a usage error: import-mprnet fails on its (missing) input instead
    res = CliRunner().invoke(main, ["-v", "import-mprnet", str(tmp_path / "none.pth"),
                                    str(tmp_path / "o.safetensors"), "-q", "--verbose"])
    assert res.exit_code == 2 and "No such option" not in res.stderr, res.stderr


def test_eval_video_quiet_hides_the_progress_bar_either_side(tmp_path):
    a, b = _two_videos(tmp_path)
    shown = CliRunner().invoke(main, ["eval-video", str(a), "-r", str(b), "--progress"])
    assert shown.exit_code == 0 and "frame" in shown.stderr  # tqdm's bar
    for args in (["-q", "eval-video", str(a), "-r", str(b)],
                 ["eval-video", str(a), "-r", str(b), "-q"],
                 ["eval-video", str(a), "-r", str(b), "--no-progress"],
                 ["-v", "eval-video", str(a), "-r", str(b), "-q", "-v"]):
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 0, (args, res.output)
        assert res.stderr == "" and "PSNR" in res.stdout, args


def test_verbose_after_the_command_logs_info_and_quiet_before_it_silences_upscale(
        tmp_path, tiny_weights, caplog):
    """`upscale ... -v` logs at INFO (it was a usage error), `-v` before and after add up to
    DEBUG, and `streamsr -q upscale ...` prints nothing on a clean run (no bar, no summary)."""
    import logging

    a, _ = _two_videos(tmp_path)
    job = ["--model", str(tiny_weights), "--device", "cpu", "--encoder-preset", "ultrafast"]
    root = logging.getLogger()
    level = root.level
    try:
        res = CliRunner().invoke(main, ["upscale", str(a), str(tmp_path / "v.mp4"), *job, "-v"])
        assert res.exit_code == 0, res.output
        assert "3 frames in" in res.stderr and root.level == logging.INFO
        assert any(r.name == "streamsr.inference.engine" and r.levelno == logging.INFO for r in caplog.records)
        res = CliRunner().invoke(main, ["-v", "upscale", str(a), str(tmp_path / "d.mp4"), *job,
                                        "-v"])
        assert res.exit_code == 0 and root.level == logging.DEBUG
        caplog.clear()
        res = CliRunner().invoke(main, ["-q", "upscale", str(a), str(tmp_path / "q.mp4"), *job])
        assert res.exit_code == 0 and res.stderr == "" and res.stdout == "", res.output
        assert root.level == logging.WARNING and not any(r.levelno < logging.WARNING
                                                          for r in caplog.records)
        res = CliRunner().invoke(main, ["upscale", str(a), str(tmp_path / "n.mp4"), *job,
                                        "--no-progress"])
        assert res.exit_code == 0 and res.stderr.strip().startswith("3 frames in")  # no bar
    finally:
        root.setLevel(level)


def test_threads_option_sets_torch_threads(monkeypatch):
    """`bench --threads 1` runs with one torch thread (the machine record says so), whatever
    the count was before; --threads 0 is a one-line usage error."""
    import streamsr.runtime as engine

    monkeypatch.setattr(engine, "_pinned_threads", None)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        res = CliRunner().invoke(main, ["bench", "--device", "cpu", "--model", "tiny",
                                        "--resolution", "32x16", "--frames", "1", "--skip",
                                        "pipeline", "--skip", "naive", "--skip", "io",
                                        "--threads", "1", "--json", "-"], catch_exceptions=False)
        assert res.exit_code == 0, res.output
        assert json.loads(res.stdout)["machine"]["torch_threads"] == 1
        assert "bench:" in res.stderr  # progress lines are on by default ...
        res = CliRunner().invoke(main, ["bench", "--device", "cpu", "--model", "tiny",
                                        "--resolution", "32x16", "--frames", "1", "--skip",
                                        "pipeline", "--skip", "naive", "--skip", "io", "-q"],
                                 catch_exceptions=False)
        assert res.exit_code == 0 and "bench:" not in res.stderr  # ... and off with -q
        assert "| model only |" in res.stdout  # the result itself still prints
    finally:
        torch.set_num_threads(before)
    res = CliRunner().invoke(main, ["train", "--data", ".", "--threads", "0"])
    assert res.exit_code == 2 and "--threads" in res.stderr


# -- fault cases (docs/faults.md; `pytest -k fault_` runs them all) ---------------------------

def test_fault_01_missing_input_one_line_and_debug_shows_the_traceback(tmp_path, tiny_weights):
    out = tmp_path / "o.mp4"
    r = cli("upscale", tmp_path / "missing.mp4", out, *model_args(tiny_weights), timeout=60)
    assert_one_line(r.returncode, r.stderr, "input not found", "missing.mp4", alone=True)
    assert r.stdout == "" and not out.exists()
    d = cli("--debug", "upscale", tmp_path / "missing.mp4", out, *model_args(tiny_weights), timeout=60)
    assert d.returncode not in (0, 2) and "Traceback" in d.stderr
    assert "InputError: input not found" in d.stderr and not out.exists()
    # bad options of a command are one line too, with a pointer to its help
    for args, words in ((["upscale", "a.mp4", "b.mp4", "--crf", "99"], ["--crf", "99"]),
                        (["upscale", "a.mp4"], ["Missing argument", "OUTPUT"]),
                        (["upscale", "a.mp4", "b.mp4", "--bogus"], ["--bogus"]),
                        (["nosuchcommand"], ["No such command"])):
        r = invoke(*args)
        assert_one_line(r.exit_code, r.stderr, *words, "--help'", alone=True)


def test_fault_02_directory_where_a_file_is_expected(tmp_path, clip, tiny_weights):
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "notes.txt").write_text("no images here")
    base = model_args(tiny_weights)
    r = invoke("upscale", tmp_path / "folder", tmp_path / "o.mp4", *base)
    assert_one_line(r.exit_code, r.stderr, "folder with no images")
    r = invoke("upscale", clip, tmp_path / "o.mp4", "--model", tmp_path / "folder", "--device", "cpu")
    assert_one_line(r.exit_code, r.stderr, "is a directory, not a weights file")
    r = invoke("upscale", clip, clip / "o.mp4", *base)  # the output's "folder" is a file
    assert_one_line(r.exit_code, r.stderr, "cannot")
    r = invoke("import-mprnet", tmp_path / "folder", tmp_path / "x.safetensors")
    assert r.exit_code == 2 and "Traceback" not in r.stderr  # click's usage error
    assert not (tmp_path / "o.mp4").exists() and not (tmp_path / "x.safetensors").exists()


def test_fault_03_zero_length_files(tmp_path, clip, tiny_weights):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    r = invoke("upscale", empty, tmp_path / "o.mp4", *model_args(tiny_weights))
    assert_one_line(r.exit_code, r.stderr, "empty (0 bytes)")
    (tmp_path / "empty.safetensors").write_bytes(b"")
    r = invoke("upscale", clip, tmp_path / "o.mp4", *model_args(tmp_path / "empty.safetensors"))
    assert_one_line(r.exit_code, r.stderr, "not a safetensors weights file")
    (tmp_path / "empty.pth").write_bytes(b"")
    r = invoke("import-mprnet", tmp_path / "empty.pth", tmp_path / "x.safetensors")
    assert_one_line(r.exit_code, r.stderr, "refusing to load")
    assert not (tmp_path / "o.mp4").exists() and not (tmp_path / "x.safetensors").exists()


def test_help_does_not_import_torch():
    """`streamsr --help` and `import streamsr` stay light: torch, PyAV and the model load only
    when a command runs (they used to add ~3.5 s to every help screen)."""
    code = ("import sys; from click.testing import CliRunner; import streamsr; "
            "from streamsr.cli import main; r = CliRunner().invoke(main, ['--help']); "
            "assert r.exit_code == 0 and 'Usage:' in r.output, r.output; "
            "print(sorted(m for m in ('torch', 'av', 'cv2') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-1000:]
    assert r.stdout.strip() == "[]", r.stdout
    # the public names still resolve (on first use)
    code = "import streamsr; print(streamsr.upscale.__module__, streamsr.DeblurSR.__name__)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stdout.split() == ["streamsr.api", "DeblurSR"], r.stderr[-1000:]
