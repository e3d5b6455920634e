"""Every file an output makes FFmpeg write gets the overwrite check, and none is the input.

The expectation is always on the files themselves: the bytes of an input or an existing file
are compared before and after, and outputs are decoded and their frames counted.
"""

from __future__ import annotations

import os
from pathlib import Path

import av
import media
import pytest
from click.testing import CliRunner
from media import H, W, assert_one_line, invoke, model_args, run_api

from streamsr.api import upscale
from streamsr.cli import main
from streamsr.errors import ConfigError, InputError, OutputError
from streamsr.video.output_paths import local_file, output_file, side_files, url_scheme

N = 4
FAST = dict(model=media.BicubicX4(), device="cpu", encoder_preset="ultrafast")


@pytest.fixture
def src(tmp_path) -> Path:
    return media.make_index_clip(tmp_path / "in.mp4", n=N, size=(32, 24))


def _frames(path: Path) -> list[int]:
    frames, _, _ = media.decode_all(path)
    return [media.read_index(f) for f in frames]


def test_names_are_read_the_way_ffmpeg_opens_them():
    assert url_scheme("file:out.mp4") == "file" and url_scheme("pipe:1") == "pipe"
    assert url_scheme("cam:01.mp4") is None and url_scheme("/abs/x:y.mp4") is None
    assert url_scheme("./file:x.mp4") is None
    assert local_file("file:out.mp4") == Path("out.mp4")
    assert local_file("file:///abs/in.mp4") == Path("/abs/in.mp4")
    assert local_file("file://abs/in.mp4") == Path("/abs/in.mp4")  # FFmpeg strips "file:" only
    assert local_file("http://host/x.mp4") is None
    with pytest.raises(OutputError, match="not FFmpeg's pipe: protocol"):
        output_file("pipe:1")


@pytest.mark.parametrize("spell", ["file:{rel}", "file:{abs}", "file://{abs}", "FILE:{rel}"])
def test_a_protocol_prefix_cannot_write_over_the_input(tmp_path, src, spell, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = src.read_bytes()
    dst = spell.format(rel=src.name, abs=src.resolve())
    with pytest.raises(ConfigError, match="same file"):
        upscale(src.name, dst, overwrite=True, **FAST)
    assert src.read_bytes() == before


def test_a_protocol_prefix_gets_the_overwrite_check_and_writes_the_named_file(tmp_path, src,
                                                                             monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out.mp4"
    out.write_bytes(b"precious")
    for dst in ("file:out.mp4", f"file://{out}"):
        with pytest.raises(OutputError, match="exists; pass --overwrite"):
            upscale(src, dst, **FAST)
        assert out.read_bytes() == b"precious"
    stats = upscale(src, "file:out.mp4", overwrite=True, **FAST)
    assert stats.frames == N and _frames(out) == list(range(N))
    assert not any(p.name.startswith("file:") for p in tmp_path.iterdir())


def test_other_protocols_are_refused_before_anything_is_written(tmp_path, src, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for dst in ("pipe:1", "http://127.0.0.1:9/x.mp4", "crypto:out.mp4", "subfile,,0,10,:x.mp4"):
        with pytest.raises(OutputError, match="protocol"):
            upscale(src, dst, **FAST)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4"]


def test_a_name_that_only_looks_like_a_protocol_is_a_local_file(tmp_path, src, monkeypatch):
    monkeypatch.chdir(tmp_path)  # FFmpeg itself would answer "protocol not found"
    assert upscale(src, "cam:01.mp4", **FAST).frames == N
    assert _frames(tmp_path / "cam:01.mp4") == list(range(N))


def test_hls_segments_get_the_overwrite_check(tmp_path, src):
    playlist = tmp_path / "out.m3u8"
    segment = tmp_path / "out0.ts"
    segment.write_bytes(b"an older segment")
    assert side_files(playlist) == [segment]
    with pytest.raises(OutputError, match=r"out0\.ts exists \(written by the hls output .*--overwrite"):
        upscale(src, playlist, **FAST)
    assert segment.read_bytes() == b"an older segment" and not playlist.exists()
    assert upscale(src, playlist, overwrite=True, **FAST).frames == N
    assert "out0.ts" in playlist.read_text()
    with av.open(str(segment), format="mpegts") as c:  # too small for FFmpeg's probe to be sure
        assert [media.read_index(f.to_ndarray(format="rgb24")) for f in c.decode(video=0)] == \
            list(range(N))


def test_an_hls_segment_is_never_written_over_the_input(tmp_path):
    src = media.make_index_clip(tmp_path / "out0.ts", n=N, size=(32, 24))
    before = src.read_bytes()
    with pytest.raises(ConfigError, match="same file.*out0.ts"):
        upscale(src, tmp_path / "out.m3u8", overwrite=True, **FAST)
    assert src.read_bytes() == before and not (tmp_path / "out.m3u8").exists()


def test_dash_chunks_get_the_overwrite_check(tmp_path, src):
    (tmp_path / "init-stream0.m4s").write_bytes(b"older")
    with pytest.raises(OutputError, match="init-stream0.m4s exists"):
        upscale(src, tmp_path / "out.mpd", **FAST)
    assert (tmp_path / "init-stream0.m4s").read_bytes() == b"older"


@pytest.mark.parametrize("name", ["out.chk", "out.tga"])
def test_containers_that_name_their_own_files_are_refused(tmp_path, src, name):
    with pytest.raises(OutputError, match="writes files of its own naming"):
        upscale(src, tmp_path / name, **FAST)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4"]


def test_a_name_too_long_for_the_file_system_is_one_line(tmp_path, src):
    long = tmp_path / ("x" * 300 + ".mp4")
    with pytest.raises(OutputError, match=r"file name too long \(304 bytes; the file system allows"):
        upscale(src, long, **FAST)
    with pytest.raises(OutputError, match="file name too long"):
        upscale(src, tmp_path / ("x" * 300) / "out.mp4", **FAST)
    with pytest.raises(InputError, match="input not found: .*file name too long"):
        upscale(long, tmp_path / "out.mp4", **FAST)
    runner = CliRunner()
    for args in ([str(src), str(long)], [str(long), str(tmp_path / "o.mp4")],
                 [str(src), str(tmp_path / ("y" * 300))]):  # a folder of images
        result = runner.invoke(main, ["upscale", *args, "--device", "cpu"])
        lines = [x for x in result.stderr.splitlines() if x.strip()]
        assert result.exit_code == 2 and len(lines) == 1 and "too long" in lines[0], result.stderr
    assert sorted(os.listdir(tmp_path)) == ["in.mp4"]


def test_the_cli_refuses_the_input_given_as_a_file_url(tmp_path, src):
    before = src.read_bytes()
    result = CliRunner().invoke(main, ["upscale", str(src), f"file://{src}", "--overwrite",
                                       "--device", "cpu"])
    lines = [x for x in result.stderr.splitlines() if x.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and "same file" in lines[0], result.stderr
    assert src.read_bytes() == before


def test_a_live_output_named_without_a_container_is_checked_with_its_mkv(tmp_path):
    src = media.make_index_clip(tmp_path / "cam.mkv", n=N, size=(32, 24))
    before = src.read_bytes()
    with pytest.raises(ConfigError, match="same file"):  # live mode writes cam.mkv for "cam"
        upscale(src, tmp_path / "cam", live=True, overwrite=True, **FAST)
    assert src.read_bytes() == before


# -- fault cases (docs/faults.md; `pytest -k fault_` runs them all) ---------------------------

def test_fault_14_output_folder_not_writable(tmp_path, clip, tiny_weights):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        targets = []
        if not os.access(locked, os.W_OK):  # not root: permissions apply
            targets.append((locked / "o.mp4", "not writable"))
        if Path("/proc/sys").is_dir() and not os.access("/proc/sys", os.W_OK):
            targets.append((Path("/proc/sys/streamsr_o.mp4"), "not writable"))
        if Path("/sys/kernel").is_dir():  # writable by mode for root, refused by the kernel
            targets.append((Path("/sys/kernel/streamsr_o.mp4"), "cannot write"))
        if not targets:
            pytest.skip("no unwritable folder available here")
        for path, words in targets:
            r = invoke("upscale", clip, path, *model_args(tiny_weights))
            assert_one_line(r.exit_code, r.stderr, str(path), words)
            assert not path.exists()
            with pytest.raises(OutputError):
                run_api(clip, path)
    finally:
        locked.chmod(0o700)


def test_fault_16_existing_output_is_never_overwritten_without_overwrite(tmp_path, clip, tiny_weights):
    base = model_args(tiny_weights)
    existing = tmp_path / "keep.mp4"
    existing.write_bytes(b"precious")
    r = invoke("upscale", clip, existing, *base)
    assert_one_line(r.exit_code, r.stderr, "exists", "--overwrite")
    assert existing.read_bytes() == b"precious"
    folder = tmp_path / "frames"
    folder.mkdir()
    (folder / "mine.png").write_bytes(b"precious")
    r = invoke("upscale", clip, folder, *base)
    assert_one_line(r.exit_code, r.stderr, "not empty", "--overwrite")
    assert [p.name for p in folder.iterdir()] == ["mine.png"]
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"precious")
    r = invoke("import-mprnet", tmp_path / "nothing.pth", weights)
    assert_one_line(r.exit_code, r.stderr, "exists", "--overwrite")
    assert weights.read_bytes() == b"precious"
    r = invoke("upscale", clip, existing, *base, "--overwrite")
    assert r.exit_code == 0 and len(media.decode_all(existing)[0]) == 4
    # --overwrite never means "write over the input", whatever the name it is reached by
    src = media.make_index_clip(tmp_path / "src.mp4", n=3, size=(W, H))
    original = src.read_bytes()
    (tmp_path / "link.mp4").symlink_to(src)
    os.link(src, tmp_path / "hard.mp4")
    for same in (src, tmp_path / "link.mp4", tmp_path / "hard.mp4", tmp_path / "." / "src.mp4"):
        r = invoke("upscale", src, same, *base, "--overwrite")
        assert_one_line(r.exit_code, r.stderr, "same file")
    images = tmp_path / "imgs"
    media.write_images(images, n=2, size=(W, H))
    before = {p.name: p.read_bytes() for p in images.iterdir()}
    r = invoke("upscale", images, images, *base, "--overwrite")
    assert_one_line(r.exit_code, r.stderr, "same file")
    assert src.read_bytes() == original
    assert {p.name: p.read_bytes() for p in images.iterdir()} == before
