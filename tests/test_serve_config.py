"""`streamsr serve` configs: good ones parse; every mistake is one line naming stream and key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from streamsr.serve.config import ServeConfigError, load_config, parse_config

GOOD = """
[server]
listen = "127.0.0.1:0"
model = "lite"
batch = 4
batch_timeout = 0.02

[[stream]]
name = "door"
input = "rtsp://127.0.0.1:8554/door"
file = "door.mkv"
push = "rtsp://127.0.0.1:8555/door-x4"
drop = "none"
max_latency = 2
crf = 23

[[stream]]
name = "yard"
input = "yard.mp4"
segments = "yard_%H%M%S.mkv"
segment_time = 60
"""


def test_good_config_parses_into_option_parts(tmp_path):
    path = tmp_path / "serve.toml"
    path.write_text(GOOD)
    config = load_config(path)
    assert config.server.batch == 4 and config.server.host_port == ("127.0.0.1", 0)
    door, yard = config.streams
    assert door.is_live and not yard.is_live
    assert door.outputs.targets() == [("file", "door.mkv"), ("push", "rtsp://127.0.0.1:8555/door-x4")]
    assert door.live.drop == "none" and door.live.max_latency == 2.0
    assert door.live.reconnect_max == 0  # a server reconnects forever by default
    assert door.encode.crf == 23
    assert yard.outputs.segment_time == 60.0


@pytest.mark.parametrize("table, words", [
    ({"server": {"listen": "0.0.0.0:8600"}}, "[server]: token: listening on 0.0.0.0"),
    ({"server": {"listen": "nowhere"}}, "[server]: listen: want"),
    ({"server": {"batch": 0}}, "[server]: batch: must be at least 1"),
    ({"server": {"bogus": 1}}, "[server]: bogus: unknown key"),
    ({"server": {"port": 1}}, "[server]: port: unknown key"),
    ({"camera": {}}, "unknown table 'camera'"),
    ({"stream": [{"name": "a", "input": "x.mp4"}]}, "stream 'a': outputs: none"),
    ({"stream": [{"input": "x.mp4", "file": "o.mkv"}]}, "stream '#1': name: required"),
    ({"stream": [{"name": "a b", "input": "x.mp4", "file": "o.mkv"}]}, "stream 'a b': name:"),
    ({"stream": [{"name": "a", "input": "x.mp4", "file": "o.mkv", "drop": "newest"}]},
     "stream 'a': drop: --drop must be one of"),
    ({"stream": [{"name": "a", "input": "x.mp4", "file": "o.mkv", "max_latency": "2s"}]},
     "stream 'a': max_latency: '2s' is not a number"),
    ({"stream": [{"name": "a", "input": "x.mp4", "file": "o.mkv", "cameraa": 1}]},
     "stream 'a': cameraa: unknown key"),
    ({"stream": [{"name": "a", "input": "x.mp4", "file": "o.mkv"},
                 {"name": "a", "input": "y.mp4", "file": "p.mkv"}]}, "stream 'a': name: used by two"),
])
def test_bad_config_names_stream_and_key(table, words):
    with pytest.raises(ServeConfigError) as info:
        parse_config(table, "serve.toml")
    assert words in str(info.value)
    assert "\n" not in str(info.value)


def test_a_stream_preset_gives_live_and_encoder_settings_its_keys_win():
    config = parse_config({"stream": [{"name": "cam", "input": "rtsp://10.0.0.2/s",
                                       "file": "cam.mkv", "preset": "rtsp-live", "crf": 30,
                                       "timeout": 4}]})
    cam = config.streams[0]
    assert cam.live.max_latency == 1.0 and cam.live.drop == "oldest"  # from the preset
    assert cam.encode.preset == "veryfast" and cam.encode.options == {"tune": "zerolatency"}
    assert cam.encode.crf == 30  # the stream's own key wins
    assert cam.live.open_timeout == cam.live.read_timeout == 4.0
    with pytest.raises(ServeConfigError, match="stream 'cam': preset: no pipeline preset"):
        parse_config({"stream": [{"name": "cam", "input": "x.mp4", "file": "o.mkv",
                                  "preset": "nope"}]})


def test_token_allows_any_address():
    config = parse_config({"server": {"listen": "0.0.0.0:8600", "token": "s3cret"}})
    assert config.server.token == "s3cret"


def test_cli_bad_config_is_one_red_line_exit_2(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[[stream]]\nname = "cam"\ninput = "x.mp4"\nfile = "o.mkv"\ndrop = "all"\n')
    proc = subprocess.run([sys.executable, "-m", "streamsr", "serve", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "stream 'cam': drop:" in lines[0], proc.stderr


def test_cli_non_loopback_listen_without_token_is_refused(tmp_path):
    path = tmp_path / "ok.toml"
    path.write_text('[[stream]]\nname = "cam"\ninput = "x.mp4"\nfile = "o.mkv"\n')
    proc = subprocess.run([sys.executable, "-m", "streamsr", "serve", str(path), "--listen",
                           "0.0.0.0:8600"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "token" in proc.stderr, proc.stderr


@pytest.mark.parametrize("name", ["cameras", "files"])
def test_example_configs_load(name):
    path = Path(__file__).resolve().parents[1] / "pipelines" / "serve" / f"{name}.toml"
    config = load_config(path)
    assert config.streams and config.server.host_port[0] == "127.0.0.1"
