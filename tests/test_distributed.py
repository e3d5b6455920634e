"""Scale-out: torchrun ranks, keyframe-aligned parts, stream-copy join, folders, resume.

Two real torchrun launches (2 gloo processes on CPU): one file split over the ranks, and a
folder of files shared out between them. Everything else runs in this process (one rank).
Expectations come from the inputs: frames carry their index as a pattern, so every index must
appear exactly once; a single-process run of the same command is the reference for timestamps,
audio/subtitle packets and pixels (identical with lossless --crf 0, within encoder noise otherwise).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import media
import numpy as np
import pytest
import torch

from streamsr.api import upscale
from streamsr.errors import ConfigError, InputError, Interrupted, OutputError
from streamsr.jobs.folder import output_for, temp_for, upscale_folder
from streamsr.jobs.parts import assign_contiguous, parts_dir_for, upscale_parts
from streamsr.runtime import DistEnv
from streamsr.video.split import KeyframeIndex, Segment, plan_segments, read_keyframe_index

REPO = Path(__file__).resolve().parents[1]
GOP6 = {"crf": "12", "preset": "fast", "g": "6", "x264-params": "scenecut=0"}  # B-frames, IDR every 6
GOP6_FAST = {"crf": "12", "preset": "ultrafast", "g": "6", "x264-params": "scenecut=0"}
# Open GOPs: the B-frames after each I-frame (in decode order) show earlier frames and refer back.
OPEN_GOP6 = {"crf": "12", "preset": "fast", "g": "6", "x264-params": "scenecut=0:open-gop=1:bframes=3"}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


# `python -m streamsr` plus one more model name, "bicubic": the stand-in x4 of tests/media.py,
# whose output still shows each frame's index (a random tiny model's output does not).
ENTRY = f"""
import sys
sys.path.insert(0, {str(REPO / "tests")!r})
import media
import streamsr.models.weights as weights
real = weights.load_model
weights.load_model = lambda name, device="cpu": media.BicubicX4() if str(name) == "bicubic" else real(name, device)
from streamsr.cli import main
main(prog_name="streamsr")
"""


def torchrun(tmp_path: Path, *args: str | os.PathLike, timeout: float = 120) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node 2 <streamsr> ARGS` on CPU (gloo)."""
    entry = tmp_path / "streamsr_entry.py"
    entry.write_text(ENTRY)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO)}
    env.pop("OMP_NUM_THREADS", None)  # torchrun sets 1 per process, as it does for users
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(entry), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)


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


def indices(path: Path) -> list[int]:
    frames, _, _ = media.decode_all(path)
    return [media.read_index(f) for f in frames]


# ---------------------------------------------------------------------------------------------
# Pure parts: index, plan (the torchrun environment: tests/test_runtime.py)

def test_keyframe_index_from_packets(tmp_path):
    src = media.make_index_clip(tmp_path / "in.mp4", n=24, options=GOP6)
    index = read_keyframe_index(src)
    assert index.frames == 24
    assert index.keyframes == (0, 6, 12, 18)
    _, pts, tb = media.decode_all(src)
    assert list(index.pts) == pts and index.time_base == tb and index.start_time == pts[0]


@pytest.mark.parametrize("ext", [".ts", ".mkv"])
def test_parts_of_other_containers_keep_every_frame_and_timestamp(tmp_path, ext):
    # MPEG-TS starts at 0.08 s and seeks by decode time (past the keyframe); MKV counts in ms.
    src = media.make_index_clip(tmp_path / f"in{ext}", n=24, options=OPEN_GOP6)
    single, parts = tmp_path / "single.mp4", tmp_path / "parts.mp4"
    upscale(src, single, model=media.BicubicX4(), encoder_preset="ultrafast", handle_signals=False)
    stats = upscale_parts(src, parts, model=media.BicubicX4(), part_frames=6, env=DistEnv(),
                          encoder_preset="ultrafast", handle_signals=False)
    assert stats.frames == 24 and indices(parts) == list(range(24))
    assert media.frame_times(parts) == media.frame_times(single) == media.frame_times(src)


def test_plan_cuts_at_keyframes_into_contiguous_parts():
    index = KeyframeIndex(Fraction(1, 25), 0, tuple(range(0, 240, 10)), (0, 6, 12, 18))
    two = plan_segments(index, 2)
    assert [(s.first, s.frames, s.start_pts, s.end_pts) for s in two] == [(0, 12, 0, 120), (12, 12, 120, None)]
    three = plan_segments(index, 3)  # targets 8 and 16 -> nearest keyframes 6 and 18
    assert [s.first for s in three] == [0, 6, 18] and sum(s.frames for s in three) == 24
    assert len(plan_segments(index, 10)) == 4  # never more parts than keyframes
    single = plan_segments(KeyframeIndex(Fraction(1, 25), 0, tuple(range(24)), (0,)), 4)
    assert [(s.first, s.frames, s.end_pts) for s in single] == [(0, 24, None)]
    segs = [Segment(i, 6 * i, 6, 60 * i, None) for i in range(5)]
    assert assign_contiguous(segs, 2) == [[0, 1], [2, 3, 4]]  # contiguous, 12 vs 18 frames
    assert assign_contiguous(segs, 5) == [[0], [1], [2], [3], [4]]
    assert sorted(sum(assign_contiguous(segs[:1], 3), [])) == [0]  # one part: one rank works


# ---------------------------------------------------------------------------------------------
# One file over two torchrun processes

def test_two_processes_match_a_single_process_run(tmp_path):
    # Lossless encoding (--crf 0): each part starts with its own IDR frame, so only a lossless
    # encoder makes the pixels comparable exactly; the decoded frames must then be identical.
    src = media.make_av_clip(tmp_path / "in.mp4", n=24, options=GOP6)  # audio, subtitles, chapters
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
    src = media.make_av_clip(tmp_path / "in.mp4", n=24, options=GOP6)
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


def test_folder_is_shared_between_two_processes_and_resume_skips_finished(tmp_path, tiny_weights):
    src_dir, out_dir = tmp_path / "in", tmp_path / "out"
    (src_dir / "sub").mkdir(parents=True)
    sizes = {"a.mp4": 5, "b.mkv": 7, "sub/c.avi": 4}
    for name, n in sizes.items():
        media.make_index_clip(src_dir / name, n=n, options={"crf": "12", "preset": "ultrafast"})
    run = torchrun(tmp_path, "-v", "upscale", src_dir, out_dir, "--model", tiny_weights, "--device",
                   "cpu", "--encoder-preset", "ultrafast", "-q")
    assert run.returncode == 0, run.stderr[-3000:]
    assert "rank 0: " in run.stderr and "rank 1: " in run.stderr  # both ranks took files
    outs = {name: output_for(src_dir, out_dir, src_dir / name) for name in sizes}
    assert outs["sub/c.avi"] == out_dir / "sub" / "c.mkv"
    for name, n in sizes.items():  # every file, each frame at its own time
        assert media.frame_times(outs[name]) == pytest.approx(media.frame_times(src_dir / name))
        assert len(media.frame_times(outs[name])) == n
    assert not list(out_dir.rglob(".*"))  # no temporary files left

    # An interrupted batch: one output missing, a stale temporary file of it left behind.
    outs["b.mkv"].unlink()
    temp_for(outs["b.mkv"]).write_bytes(b"half a file")
    kept = {name: outs[name].stat().st_mtime_ns for name in ("a.mp4", "sub/c.avi")}
    with pytest.raises(OutputError, match="--resume"):
        upscale_folder(src_dir, out_dir, model=media.BicubicX4(), device="cpu", env=DistEnv())
    time.sleep(0.01)
    stats = upscale_folder(src_dir, out_dir, resume=True, model=media.BicubicX4(), device="cpu",
                           env=DistEnv(), encoder_preset="ultrafast", handle_signals=False)
    assert (stats.files, stats.written, stats.skipped, stats.frames) == (3, 1, 2, 7)
    assert indices(outs["b.mkv"]) == list(range(7))
    assert {name: outs[name].stat().st_mtime_ns for name in kept} == kept  # untouched
    assert not temp_for(outs["b.mkv"]).exists()


def test_folder_resume_refuses_an_unrelated_video_at_an_output_path(tmp_path):
    src_dir, out_dir = tmp_path / "in", tmp_path / "out"
    src_dir.mkdir()
    media.make_index_clip(src_dir / "a.mp4", n=5)
    media.make_index_clip(src_dir / "b.mp4", n=6)
    out_dir.mkdir()
    media.write_clip(out_dir / "a.mp4", [media.smooth_frame(i) for i in range(5)])  # 64x48: not x4
    before = (out_dir / "a.mp4").read_bytes()
    with pytest.raises(InputError, match=r"1 of 2 files failed .*a.mp4 exists but is not an upscale "
                                         r"of .*it is 64x48, this run writes 256x192"):
        upscale_folder(src_dir, out_dir, resume=True, model=media.BicubicX4(), device="cpu",
                       env=DistEnv(), encoder_preset="ultrafast", handle_signals=False)
    assert (out_dir / "a.mp4").read_bytes() == before  # not taken for finished, not replaced
    assert indices(out_dir / "b.mp4") == list(range(6))  # the other file was done
    again = upscale_folder(src_dir, out_dir, resume=True, overwrite=True, model=media.BicubicX4(),
                           device="cpu", env=DistEnv(), encoder_preset="ultrafast")
    assert again.written == 2 and indices(out_dir / "a.mp4") == list(range(5))


def test_folder_outputs_never_land_on_an_input(tmp_path):
    # OUT is the parent of IN: the output of IN/b/x.mp4 would be OUT/b/x.mp4 = the input IN/x.mp4
    src_dir = tmp_path / "b"
    (src_dir / "b").mkdir(parents=True)
    media.make_index_clip(src_dir / "x.mp4", n=3)
    media.make_index_clip(src_dir / "b" / "x.mp4", n=4)
    before = (src_dir / "x.mp4").read_bytes()
    with pytest.raises(OutputError, match="would be written over an input"):
        upscale_folder(src_dir, tmp_path, overwrite=True, model=media.BicubicX4(), device="cpu",
                       env=DistEnv())
    assert (src_dir / "x.mp4").read_bytes() == before


def test_a_temporary_file_of_a_folder_run_gets_the_overwrite_check(tmp_path):
    src_dir, out_dir = tmp_path / "in", tmp_path / "out"
    src_dir.mkdir()
    media.make_index_clip(src_dir / "a.mp4", n=3)
    out_dir.mkdir()
    temp_for(out_dir / "a.mp4").write_bytes(b"left by a killed run")
    with pytest.raises(OutputError, match=r"\.a\.partial\.mp4, \.\.\.\): pass --resume"):
        upscale_folder(src_dir, out_dir, model=media.BicubicX4(), device="cpu", env=DistEnv())
    assert temp_for(out_dir / "a.mp4").read_bytes() == b"left by a killed run"
    upscale_folder(src_dir, out_dir, resume=True, model=media.BicubicX4(), device="cpu",
                   env=DistEnv(), encoder_preset="ultrafast")
    assert indices(out_dir / "a.mp4") == [0, 1, 2] and not temp_for(out_dir / "a.mp4").exists()


def test_a_folder_run_holds_a_lock_on_its_output_folder(tmp_path):
    from streamsr.lock import OutputLock, lock_path_for

    src_dir, out_dir = tmp_path / "in", tmp_path / "out"
    src_dir.mkdir()
    media.make_index_clip(src_dir / "a.mp4", n=3)
    out_dir.mkdir()
    with OutputLock(lock_path_for(out_dir, folder=True), out_dir):  # another run holds it
        with pytest.raises(OutputError, match=rf"being written by another streamsr run \(pid "
                                              rf"{os.getpid()} on "):
            upscale_folder(src_dir, out_dir, resume=True, model=media.BicubicX4(), device="cpu",
                           env=DistEnv())
        assert sorted(p.name for p in out_dir.iterdir()) == [".streamsr.lock"]
    stats = upscale_folder(src_dir, out_dir, resume=True, model=media.BicubicX4(), device="cpu",
                           env=DistEnv(), encoder_preset="ultrafast")
    assert stats.written == 1 and sorted(p.name for p in out_dir.iterdir()) == ["a.mp4"]


# ---------------------------------------------------------------------------------------------
# Resuming one file

def test_resume_after_an_interruption_redoes_only_missing_parts(tmp_path):
    src = media.make_index_clip(tmp_path / "in.mp4", n=24, options=GOP6_FAST)
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
    src = media.make_index_clip(tmp_path / "in.mp4", n=24, options=GOP6_FAST)
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
