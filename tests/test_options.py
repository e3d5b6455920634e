"""`UpscaleOptions`: built once from keywords, a preset or the CLI's flags; presets load here."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from media import assert_one_line, decodable, invoke, model_args

from streamsr.cli import main
from streamsr.errors import ConfigError
from streamsr.options import (
    InputOptions,
    OutputOptions,
    UpscaleOptions,
    find_preset,
    load_preset,
    options_from,
    preset_keys,
)
from streamsr.video.live import LiveOptions
from streamsr.video.source import DEFAULT_MAX_PIXELS


def test_keywords_reach_their_parts_with_the_old_names_and_aliases():
    opts = UpscaleOptions.from_keywords(
        model="paper", device="cpu", tile=32, crf=20, encoder_preset="fast", pix_fmt="yuv444p",
        encoder_options={"tune": "film"}, side_by_side_view=True, start=1.5, frames=4,
        rtsp_transport="udp", resume=True, part_frames=6, status_interval=2.0)
    assert opts.model == "paper" and (opts.engine.device, opts.engine.tile) == ("cpu", 32)
    assert (opts.encode.crf, opts.encode.preset, opts.encode.pix_fmt, opts.encode.options) == \
        (20, "fast", "yuv444p", {"tune": "film"})
    assert opts.output == OutputOptions(side_by_side=True, resume=True, part_frames=6)
    assert opts.input == InputOptions(start=1.5, frames=4)
    assert opts.live.rtsp_transport == "udp" and opts.status_interval == 2.0
    # the aliases streamsr.upscale has always taken
    alias = UpscaleOptions.from_keywords(side_by_side=True, preset="veryslow")
    assert alias.output.side_by_side and alias.encode.preset == "veryslow"
    live = LiveOptions(drop="none", max_latency=2.0)
    assert UpscaleOptions.from_keywords(live_options=live).live == live


def test_defaults_are_those_of_upscale():
    opts = UpscaleOptions()
    assert opts.model == "lite" and opts.input.max_pixels == DEFAULT_MAX_PIXELS
    assert (opts.encode.codec, opts.encode.crf, opts.encode.preset, opts.encode.pix_fmt) == \
        ("libx264", 18, "medium", "yuv420p")
    assert (opts.engine.device, opts.engine.precision, opts.engine.backend) == ("auto", "auto", "torch")
    assert opts.input.live is None and opts.queue_frames is None and opts.status_interval == 5.0


def test_unknown_keywords_are_refused_naming_them():
    with pytest.raises(TypeError, match=r"unexpected options: \['bogus'\]"):
        UpscaleOptions.from_keywords(crf=20, bogus=1)
    with pytest.raises(TypeError, match="options"):
        options_from(UpscaleOptions(), {"options": {}})


def test_options_are_frozen_and_replace_makes_a_copy():
    opts = UpscaleOptions.from_keywords(crf=20)
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.model = "paper"  # type: ignore[misc]
    other = opts.replace(tile=64, overwrite=True)
    assert (opts.engine.tile, opts.output.overwrite) == (None, False)
    assert (other.engine.tile, other.output.overwrite, other.encode.crf) == (64, True, 20)
    assert options_from(opts, {}) is opts and options_from(None, {"crf": 3}).encode.crf == 3


def test_content_settings_are_the_options_that_change_an_output():
    base = UpscaleOptions()
    assert set(base.content_settings()) == {
        "precision", "backend", "tile", "codec", "crf", "encoder_preset", "pix_fmt", "bitrate",
        "encoder_options", "side_by_side_view", "outscale", "size"}
    for change in ({"crf": 30}, {"tile": 64}, {"side_by_side": True}, {"size": "64x-1"},
                   {"encoder_options": {"tune": "film"}}, {"precision": "fp32"}):
        assert base.replace(**change).content_settings() != base.content_settings(), change
    for same in ({"batch": 2}, {"device": "cpu"}, {"overwrite": True}, {"resume": True},
                 {"model": "paper"}):  # the model is fingerprinted by the parts job itself
        assert base.replace(**same).content_settings() == base.content_settings(), same


def test_presets_are_bundled_or_a_path_never_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pipelines").mkdir()
    (tmp_path / "pipelines" / "dashcam.toml").write_text('crf = 40\n')
    (tmp_path / "pipelines" / "mine.toml").write_text('crf = 40\n')
    assert load_preset("dashcam")["crf"] == 20  # the bundled one, not ./pipelines/dashcam.toml
    with pytest.raises(ConfigError, match="no pipeline preset named 'mine'"):
        find_preset("mine")
    assert load_preset("pipelines/mine.toml") == {"crf": 40}
    assert load_preset(tmp_path / "pipelines" / "mine.toml") == {"crf": 40}
    with pytest.raises(ConfigError, match="not found"):
        find_preset("pipelines/missing.toml")


def test_preset_values_are_checked_and_unknown_keys_named(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text('crf = "high"\n')
    with pytest.raises(ConfigError, match="bad value for crf"):
        load_preset(path)
    path.write_text('network = "my.module.Net"\n')
    with pytest.raises(ConfigError, match="unknown option 'network'"):
        load_preset(path)
    path.write_text('overwrite = true\n')  # about one run, not a way of processing
    with pytest.raises(ConfigError, match="unknown option 'overwrite'"):
        load_preset(path)
    path.write_text('encoder_opt = "tune=film"\n')
    with pytest.raises(ConfigError, match="encoder_opt must be a table"):
        load_preset(path)
    path.write_text('ext = "jpg"\ntimeout = 3\nside-by-side = true\n[encoder_opt]\ntune = "film"\n')
    assert load_preset(path) == {"image_ext": "jpg", "open_timeout": 3, "read_timeout": 3,
                                 "side_by_side": True, "encoder_options": {"tune": "film"}}
    opts = UpscaleOptions.from_preset(path, read_timeout=9.0)
    assert (opts.output.image_ext, opts.live.open_timeout, opts.live.read_timeout) == ("jpg", 3, 9.0)


def test_cli_flags_win_over_the_preset_and_build_one_options_object(tmp_path, monkeypatch):
    import streamsr.api

    seen = []
    monkeypatch.setattr(streamsr.api, "upscale", lambda src, dst, options, **kw: seen.append(options))
    preset = tmp_path / "p.toml"
    preset.write_text('crf = 30\ndrop = "none"\ntimeout = 3\nmax_pixels = 0\n[encoder_opt]\ntune = "film"\n')
    r = CliRunner().invoke(main, ["upscale", "in.mp4", "out.mp4", "--preset", str(preset),
                                  "--timeout", "2", "--encoder-opt", "g=5", "--size", "64x-1",
                                  "--ext", "png", "--compile", "-q"])
    assert r.exit_code == 0, r.output
    (opts,) = seen
    assert (opts.encode.crf, opts.live.drop) == (30, "none")  # from the preset
    assert (opts.live.open_timeout, opts.live.read_timeout) == (2.0, 2.0)  # the flag wins
    assert opts.encode.options == {"g": "5"} and opts.input.max_pixels is None
    assert (opts.output.size, opts.output.image_ext, opts.engine.compile) == ("64x-1", "png", True)
    preset.write_text('crf = 99\n')  # the flag's own range applies to a preset's value
    r = CliRunner().invoke(main, ["upscale", "in.mp4", "out.mp4", "--preset", str(preset)])
    assert r.exit_code == 2 and "bad value for crf" in r.stderr


def test_bundled_presets_load():
    for name in ("dashcam", "handheld", "archive"):
        assert find_preset(name).parent.name == "pipelines"
        values = load_preset(name)
        assert values["model"] == "lite" and "codec" in values and "crf" in values
    assert load_preset("archive")["pix_fmt"] == "yuv420p10le"
    for bad in ("../etc/passwd", "a/b", "..", ".hidden"):
        with pytest.raises(ConfigError, match="bad preset name"):
            find_preset(bad)
    with pytest.raises(ConfigError, match="no pipeline preset"):
        find_preset("nosuchpreset")


def test_pipelines_readme_lists_every_preset_key():
    """Every key a preset accepts is documented, and no documented key is refused."""
    text = (Path(__file__).parent.parent / "pipelines" / "README.md").read_text()
    keys = text[text.index("Keys (TOML):"):text.index("`description` is free text")]
    listed = set(re.findall(r"`([a-z_]+)`", keys)) - {"encoder_opt"}
    assert listed == set(preset_keys()) - {"encoder_opt"}


# -- fault cases (docs/faults.md; `pytest -k fault_` runs them all) ---------------------------

def test_fault_20_preset_names_with_paths_are_refused(tmp_path, clip, tiny_weights, monkeypatch):
    # A preset NAME is read from the package's presets only; a file is given as a .toml path.
    # Plant valid presets where each traversal would land (from the current folder too), so a
    # traversal that got through would load one and run (exit 0), not fail.
    work = tmp_path / "a" / "b"
    (work / "pipelines").mkdir(parents=True)
    monkeypatch.chdir(work)
    preset = "frames = 1\n"
    (work / "pipelines" / "mine.toml").write_text(preset)  # the control: a real preset
    for target in (work / "x.toml", tmp_path / "a" / "x.toml", tmp_path / "abs.toml"):
        target.write_text(preset)
    assert (work / "pipelines" / ".." / "x.toml").is_file()
    assert (work / "pipelines" / ".." / ".." / "x.toml").is_file()
    r = invoke("upscale", clip, tmp_path / "ok.mp4", "--preset", "pipelines/mine.toml",
               *model_args(tiny_weights))
    assert r.exit_code == 0, r.stderr
    assert len(decodable(tmp_path / "ok.mp4")) == 1  # the control preset was read: 1 of 4 frames
    for name in ("../../x", "../x", str(tmp_path / "abs"), "/etc/passwd", "..", ".x", "a/b",
                 "x\\..\\y", "~root", "../pipelines/mine"):
        r = invoke("upscale", clip, tmp_path / "o.mp4", "--preset", name, *model_args(tiny_weights))
        assert_one_line(r.exit_code, r.stderr, f"bad preset name {name!r}", alone=True)
    assert not (tmp_path / "o.mp4").exists()
