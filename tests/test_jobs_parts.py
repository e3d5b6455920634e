"""Jobs in parts (`streamsr.jobs.parts`): one file split at keyframes over two torchrun ranks
(or four parts in one process) and joined by stream copy, matching a single-process run;
resume after an interruption; one job per output at a time, every part at one frame size, and
an existing output kept only when it really is this input's upscale.

Frames carry their index as a pattern (tests/media.py), so every output is checked by decoding
it and reading the indices back; files that must stay untouched are compared byte for byte.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
from pathlib import Path

import av
import media
import numpy as np
import pytest
import torch
from media import file_indices as indices
from media import psnr, torchrun

from streamsr.api import upscale
from streamsr.errors import ConfigError, Interrupted, OutputError
from streamsr.jobs.parts import parts_dir_for, upscale_parts
from streamsr.lock import MARK, lock_path_for
from streamsr.runtime import DistEnv

GOP6 = {"crf": "12", "preset": "ultrafast", "g": "6", "x264-params": "scenecut=0"}
GOP6_BFRAMES = {"crf": "12", "preset": "fast", "g": "6", "x264-params": "scenecut=0"}  # B-frames, IDR every 6
OPTS = dict(part_frames=6, device="cpu", batch=2, encoder_preset="ultrafast", env=DistEnv())


class CountingX4(media.BicubicX4):
    """Bicubic x4 that counts the 64x48 frames it sees and can send itself SIGINT once after `stop_after`."""

    def __init__(self, stop_after: int | None = None) -> None:
        super().__init__()
        self.seen = 0
        self.stop_after = stop_after

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (48, 64):  # the engine's small trial run to size its batches
            return super().forward(x)
        self.seen += x.shape[0]
        if self.stop_after is not None and self.seen >= self.stop_after:
            self.stop_after = None
            os.kill(os.getpid(), signal.SIGINT)  # like Ctrl-C in the middle of a long file
        return super().forward(x)


@pytest.fixture
def src(tmp_path) -> Path:
    return media.make_index_clip(tmp_path / "in.mp4", n=18, options=GOP6)


class Gate(media.BicubicX4):
    """Bicubic x4 that, at its first frame of the clip, says so and waits until released."""

    def __init__(self) -> None:
        super().__init__()
        self.started, self.release = threading.Event(), threading.Event()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] == (48, 64) and not self.started.is_set():
            self.started.set()
            assert self.release.wait(60)
        return super().forward(x)


def test_a_second_run_on_the_same_output_is_refused_while_the_first_runs(tmp_path, src):
    out = tmp_path / "out.mp4"
    first, errors = Gate(), []

    def run_first() -> None:
        try:
            upscale_parts(src, out, resume=True, model=first, handle_signals=False, **OPTS)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    thread = threading.Thread(target=run_first)
    thread.start()
    try:
        assert first.started.wait(60)  # the first run is inside its first part
        parts_before = sorted(p.name for p in parts_dir_for(out).iterdir())
        second = media.BicubicX4()
        with pytest.raises(OutputError) as caught:
            upscale_parts(src, out, resume=True, model=second, handle_signals=False, **OPTS)
        message = str(caught.value)
        assert "being written by another streamsr run" in message
        assert f"pid {os.getpid()} on {socket.gethostname()}" in message and "\n" not in message
        assert sorted(p.name for p in parts_dir_for(out).iterdir()) == parts_before
    finally:
        first.release.set()
        thread.join(120)
    assert not errors, errors
    assert indices(out) == list(range(18))
    assert not lock_path_for(out).exists()  # removed when the run ends


def test_a_lock_left_by_a_killed_run_does_not_block(tmp_path, src):
    out = tmp_path / "out.mp4"
    lock_path_for(out).write_text(f"{MARK}: pid 999999 on elsewhere\n")  # nobody holds it
    assert upscale_parts(src, out, resume=True, model=media.BicubicX4(), **OPTS).frames == 18
    assert not lock_path_for(out).exists()


def test_a_file_that_is_not_a_lock_is_never_overwritten(tmp_path, src):
    out = tmp_path / "out.mp4"
    lock_path_for(out).write_text("my notes\n")
    with pytest.raises(OutputError, match="is not a streamsr lock file"):
        upscale_parts(src, out, resume=True, model=media.BicubicX4(), **OPTS)
    assert lock_path_for(out).read_text() == "my notes\n" and not out.exists()


def test_a_frame_size_change_inside_a_resumed_job_joins(tmp_path):
    src = media.make_size_change_ts(tmp_path / "spliced.ts", 10, 10)
    out = tmp_path / "out.mkv"
    stats = upscale_parts(src, out, resume=True, model=media.BicubicX4(), **OPTS)
    frames, _, _ = media.decode_all(out)
    assert stats.frames == len(frames) == 20
    assert {f.shape for f in frames} == {(96, 128, 3)}  # every part at the first frame's size x4
    assert [media.read_index(f) for f in frames] == list(range(20))


def _other_video(path: Path, n: int, size: tuple[int, int], fps: int = 25) -> bytes:
    media.write_clip(path, [media.smooth_frame(i, *size) for i in range(n)], fps=fps)
    return path.read_bytes()


@pytest.mark.parametrize("n, size, fps, words", [
    (18, (64, 48), 25, "it is 64x48, this run writes 256x192"),
    (30, (256, 192), 25, "it has 30 frames, the input 18"),
    (18, (256, 192), 5, "it lasts 3.400 s from its first frame to its last, the input 0.680 s"),
])
def test_resume_refuses_an_unrelated_video_at_the_output_path(tmp_path, src, n, size, fps, words):
    out = tmp_path / "out.mp4"
    before = _other_video(out, n, size, fps)
    model = media.BicubicX4()
    with pytest.raises(OutputError, match=f"not an upscale of .*{words}.*--overwrite"):
        upscale_parts(src, out, resume=True, model=model, **OPTS)
    assert out.read_bytes() == before and not parts_dir_for(out).exists()
    assert upscale_parts(src, out, resume=True, overwrite=True, model=model, **OPTS).frames == 18
    assert indices(out) == list(range(18))


def test_resume_keeps_its_own_finished_output(tmp_path, src):
    out = tmp_path / "out.mp4"
    upscale_parts(src, out, resume=True, model=media.BicubicX4(), **OPTS)
    before = out.read_bytes()
    assert upscale_parts(src, out, resume=True, model=media.BicubicX4(), **OPTS).frames == 18
    assert out.read_bytes() == before


def test_the_parts_of_an_unfinished_run_are_replaced_only_with_overwrite(tmp_path, src):
    out = tmp_path / "out.mp4"
    parts = parts_dir_for(out)
    upscale_parts(src, out, resume=True, keep_parts=True, model=media.BicubicX4(), **OPTS)
    out.unlink()
    kept = {p.name: p.read_bytes() for p in parts.iterdir()}
    # a torchrun job without --resume on the same output
    with pytest.raises(OutputError, match="holds the parts of an unfinished run.*--resume.*--overwrite"):
        upscale_parts(src, out, model=media.BicubicX4(), **OPTS)
    with pytest.raises(ConfigError, match="another settings; pass --overwrite"):
        upscale_parts(src, out, resume=True, crf=30, model=media.BicubicX4(), **OPTS)
    assert {p.name: p.read_bytes() for p in parts.iterdir()} == kept and not out.exists()
    stats = upscale_parts(src, out, overwrite=True, crf=30, model=media.BicubicX4(), **OPTS)
    assert stats.frames == 18 and indices(out) == list(range(18))


def test_joined_hevc_parts_are_tagged_hvc1(tmp_path, src):
    out = tmp_path / "out.mp4"
    upscale_parts(src, out, resume=True, model=media.BicubicX4(), codec="libx265",
                  encoder_options={"x265-params": "log-level=error"}, **OPTS)
    with av.open(str(out)) as c:
        assert c.streams.video[0].codec_context.codec_tag == "hvc1"
    assert indices(out) == list(range(18))


def test_a_file_url_output_of_a_resumed_job_is_the_local_file(tmp_path, src, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = src.read_bytes()
    with pytest.raises(ConfigError, match="same file"):
        upscale(src, f"file://{src}", resume=True, overwrite=True, model=media.BicubicX4(),
                    device="cpu")
    assert src.read_bytes() == before
    stats = upscale(src, "file:out.mp4", resume=True, model=media.BicubicX4(), device="cpu",
                        part_frames=6, encoder_preset="ultrafast")
    assert stats.frames == 18 and indices(tmp_path / "out.mp4") == list(range(18))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4", "out.mp4"]


def test_segment_outputs_are_not_split_into_parts(tmp_path, src):
    with pytest.raises(ConfigError, match="HLS output"):
        upscale_parts(src, tmp_path / "out.m3u8", resume=True, model=media.BicubicX4(), **OPTS)
    stats = upscale(src, tmp_path / "out.m3u8", resume=True, model=media.BicubicX4(),
                        device="cpu", encoder_preset="ultrafast")  # the plain pipeline instead
    assert stats.frames == 18 and (tmp_path / "out0.ts").exists()


def test_an_output_name_with_no_room_for_its_parts_folder_is_one_line(tmp_path, src):
    out = tmp_path / ("x" * 250 + ".mp4")  # fits; "<name>.parts" does not
    with pytest.raises(OutputError, match=r"\.mp4\.parts \(where --resume .*file name too long "
                                          r"\(260 bytes.*use a shorter output name"):
        upscale_parts(src, out, resume=True, model=media.BicubicX4(), **OPTS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4"]


@pytest.mark.parametrize("make", [media.make_cover_first_mp4, media.make_thumbnail_first_mkv])
def test_a_resumed_job_upscales_the_main_video_stream_not_a_cover_picture(tmp_path, make):
    from streamsr.video.finished import decodable_frames, video_geometry

    src = make(tmp_path / f"cover{'.mp4' if 'mp4' in make.__name__ else '.mkv'}")
    assert video_geometry(src) == (64, 48, 0) and decodable_frames(src) == 10
    out = tmp_path / "out.mkv"
    assert upscale_parts(src, out, resume=True, model=media.BicubicX4(), **OPTS).frames == 10
    frames, _, _ = media.decode_all(out)
    assert [media.read_index(f) for f in frames] == list(range(10))
    assert {f.shape for f in frames} == {(192, 256, 3)}
    before = out.read_bytes()  # taken as finished: the same size, count and length
    assert upscale_parts(src, out, resume=True, model=media.BicubicX4(), **OPTS).frames == 10
    assert out.read_bytes() == before


@pytest.mark.parametrize("option, words", [(dict(frames=0), "--frames must be a whole number"),
                                           (dict(duration=0.0), "--duration must be more than 0"),
                                           (dict(start=-1.0), "--start must be 0 or more")])
def test_a_resumed_job_refuses_a_window_no_input_can_have(tmp_path, src, option, words):
    # 0 is falsy: it must not pass for "not given" and quietly upscale the whole input
    out = tmp_path / "out.mp4"
    with pytest.raises(ConfigError, match=words):
        upscale(src, out, resume=True, model=media.BicubicX4(), part_frames=6, device="cpu",
                    encoder_preset="ultrafast", **option)
    assert not out.exists() and not parts_dir_for(out).exists()


def test_a_resumed_job_takes_the_geometry_from_its_manifest(tmp_path, monkeypatch):
    """The input is probed for its frame size once per job, not again by every resumed run."""
    import json

    import streamsr.jobs.parts as parts

    src = media.make_index_clip(tmp_path / "in.mp4", n=12, options=GOP6)
    out = tmp_path / "out.mp4"
    upscale_parts(src, out, resume=True, keep_parts=True, model=media.BicubicX4(), **OPTS)
    manifest = json.loads((parts_dir_for(out) / "manifest.json").read_text())
    assert manifest["geometry"] == [64, 48, 0]
    calls = []
    real = parts.video_geometry
    monkeypatch.setattr(parts, "video_geometry", lambda path: calls.append(path) or real(path))
    assert upscale_parts(src, out, resume=True, model=media.BicubicX4(), **OPTS).frames == 12
    assert calls == []
    # another output: a new plan, which probes the input
    upscale_parts(src, tmp_path / "other.mp4", resume=True, model=media.BicubicX4(), **OPTS)
    assert calls == [src]


# ---------------------------------------------------------------------------------------------
# One file over two torchrun processes

def test_two_processes_match_a_single_process_run(tmp_path):
    # Lossless encoding (--crf 0): each part starts with its own IDR frame, so only a lossless
    # encoder makes the pixels comparable exactly; the decoded frames must then be identical.
    src = media.make_av_clip(tmp_path / "in.mp4", n=24, options=GOP6_BFRAMES)  # audio, subtitles, chapters
    single = tmp_path / "single.mp4"
    upscale(src, single, model=media.BicubicX4(), device="cpu", crf=0, encoder_preset="ultrafast",
            handle_signals=False)
    dist = tmp_path / "dist.mp4"
    run = torchrun(tmp_path, "-v", "upscale", src, dist, "--model", "bicubic", "--device", "cpu",
                   "--crf", "0", "--encoder-preset", "ultrafast", "-q")
    assert run.returncode == 0, run.stderr[-3000:]
    assert "rank 0: part 0 done (12 frames)" in run.stderr
    assert "rank 1: part 1 done (12 frames)" in run.stderr  # each rank decoded only its half
    assert not parts_dir_for(dist).exists()

    a, pts_a, tb_a = media.decode_all(single)
    b, pts_b, tb_b = media.decode_all(dist)
    assert len(b) == len(a) == 24
    assert pts_b == pts_a and tb_b == tb_a  # same timestamps
    assert [media.read_index(f) for f in b] == list(range(24))  # each frame once, in order
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))  # identical pixels
    assert media.packets(dist, "audio") == media.packets(single, "audio") == media.packets(src, "audio")
    assert media.packets(dist, "subtitle") == media.packets(single, "subtitle")
    import av

    with av.open(str(dist)) as c, av.open(str(single)) as r:
        assert c.metadata.get("title") == r.metadata.get("title") == "streamsr test"
        assert [ch["metadata"] for ch in c.chapters()] == [ch["metadata"] for ch in r.chapters()]
        assert c.streams.video[0].codec_context.width == 256


@pytest.mark.parametrize("crf", [0, 18])
def test_parts_decode_to_the_same_frames_as_one_run(tmp_path, crf):
    # Four parts in one process: lossless parts are identical to one run frame for frame; at the
    # default CRF the encoder places keyframes differently, so the pixels match within its noise.
    src = media.make_av_clip(tmp_path / "in.mp4", n=24, options=GOP6_BFRAMES)
    single, parts = tmp_path / "single.mp4", tmp_path / "parts.mp4"
    opts = dict(model=media.BicubicX4(), device="cpu", crf=crf, encoder_preset="ultrafast",
                handle_signals=False)
    upscale(src, single, **opts)
    upscale_parts(src, parts, part_frames=6, env=DistEnv(), **opts)
    a, pts_a, _ = media.decode_all(single)
    b, pts_b, _ = media.decode_all(parts)
    assert len(a) == len(b) == 24 and pts_a == pts_b
    same = [np.array_equal(x, y) for x, y in zip(a, b, strict=True)]
    if crf == 0:
        assert all(same)
    else:
        assert not all(same)  # keyframes differ: lossy pixels are not bit-identical ...
        assert min(psnr(x, y) for x, y in zip(a, b, strict=True)) > 40  # ... but close


# ---------------------------------------------------------------------------------------------
# Resuming one file after an interruption

def test_resume_after_an_interruption_redoes_only_missing_parts(tmp_path):
    src = media.make_index_clip(tmp_path / "in.mp4", n=24, options=GOP6)
    out = tmp_path / "out.mp4"
    parts = parts_dir_for(out)
    opts = dict(part_frames=6, device="cpu", batch=2, encoder_preset="ultrafast", keep_parts=True,
                env=DistEnv())

    first = CountingX4(stop_after=8)  # SIGINT in the middle of the second part (frames 6-11)
    with pytest.raises(Interrupted):
        upscale_parts(src, out, resume=True, model=first, **opts)
    assert not out.exists()
    assert sorted(p.name for p in parts.iterdir()) == ["manifest.json", "part_00000.mp4"]
    done_at = (parts / "part_00000.mp4").stat().st_mtime_ns

    again = CountingX4()
    stats = upscale_parts(src, out, resume=True, model=again, **opts)
    assert again.seen == 18  # parts 1-3 only
    assert stats.frames == 24 and indices(out) == list(range(24))
    assert (parts / "part_00000.mp4").stat().st_mtime_ns == done_at

    # A lost part (and a lost output): only that part is made again.
    out.unlink()
    (parts / "part_00002.mp4").unlink()
    third = CountingX4()
    upscale_parts(src, out, resume=True, model=third, **opts)
    assert third.seen == 6 and indices(out) == list(range(24))

    # A finished output is left alone; other settings do not mix with the old parts.
    assert upscale_parts(src, out, resume=True, model=CountingX4(), **opts).frames == 24
    out.unlink()
    with pytest.raises(ConfigError, match="settings"):
        upscale_parts(src, out, resume=True, model=CountingX4(), crf=30, **opts)


def test_resume_refuses_an_output_cut_off_by_a_run_without_resume(tmp_path):
    # A plain run writes straight to OUT and finalises what it has on Ctrl-C: OUT exists but is
    # short. --resume must not take it for finished.
    src = media.make_index_clip(tmp_path / "in.mp4", n=24, options=GOP6)
    out = tmp_path / "out.mp4"
    with pytest.raises(Interrupted):
        upscale(src, out, model=CountingX4(stop_after=8), device="cpu", batch=2,
                encoder_preset="ultrafast")
    cut = len(indices(out))
    assert 8 <= cut < 24
    before = out.read_bytes()
    opts = dict(part_frames=6, device="cpu", batch=2, encoder_preset="ultrafast", env=DistEnv())
    with pytest.raises(OutputError, match=rf"incomplete \({cut} of 24 frames\).*--overwrite"):
        upscale_parts(src, out, resume=True, model=CountingX4(), **opts)
    assert out.read_bytes() == before and not parts_dir_for(out).exists()  # nothing touched

    redo = CountingX4()
    stats = upscale_parts(src, out, resume=True, overwrite=True, model=redo, **opts)
    assert redo.seen == 24 and stats.frames == 24 and indices(out) == list(range(24))
    again = CountingX4()  # now complete: a second --resume has nothing to do
    assert upscale_parts(src, out, resume=True, model=again, **opts).frames == 24 and again.seen == 0

    (tmp_path / "junk.mp4").write_bytes(b"not a video" * 10)
    with pytest.raises(OutputError, match="not a finished video"):
        upscale_parts(src, tmp_path / "junk.mp4", resume=True, model=CountingX4(), **opts)


def test_resume_accepts_a_plain_runs_complete_output_of_a_damaged_input(tmp_path):
    # A plain run (no --resume) of an input with a packet that never decodes finishes with one
    # frame fewer than the packet index: --resume must count decodable frames, not refuse it.
    src = media.make_corrupt_packets(tmp_path / "in.mkv", n=12, bad=(5,))
    out = tmp_path / "out.mkv"
    assert upscale(src, out, model=media.BicubicX4(), device="cpu",
                   encoder_preset="ultrafast").frames == 11
    before = out.read_bytes()
    again = CountingX4()
    opts = dict(part_frames=6, device="cpu", encoder_preset="ultrafast", env=DistEnv())
    assert upscale_parts(src, out, resume=True, model=again, **opts).frames == 11
    assert again.seen == 0 and out.read_bytes() == before  # finished: nothing redone


def test_resume_accepts_its_own_join_of_a_damaged_input(tmp_path):
    # Frames that do not decode are missing from every output; the join records its count so a
    # second --resume does not call its own output incomplete.
    src = media.make_corrupt_packets(tmp_path / "in.mkv", n=12, bad=(5,))
    out = tmp_path / "out.mkv"
    opts = dict(part_frames=6, device="cpu", encoder_preset="ultrafast", env=DistEnv())
    first = upscale_parts(src, out, resume=True, model=media.BicubicX4(), **opts)
    assert first.frames == 11 and indices(out) == [i for i in range(12) if i != 5]  # packet 5 is junk
    assert sorted(p.name for p in parts_dir_for(out).iterdir()) == ["manifest.json"]
    again = CountingX4()
    assert upscale_parts(src, out, resume=True, model=again, **opts).frames == first.frames
    assert again.seen == 0
