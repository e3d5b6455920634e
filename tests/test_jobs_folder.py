"""A folder of videos (`streamsr.jobs.folder`): progress over all the files, options it refuses,
files shared out over two torchrun ranks, resume, temporary files and the output folder's lock."""

from __future__ import annotations

import os
import time

import media
import pytest
from click.testing import CliRunner
from media import file_indices as indices
from media import torchrun

from streamsr.cli import main
from streamsr.errors import ConfigError, InputError, OutputError
from streamsr.jobs.folder import estimate_frames, output_for, temp_for, upscale_folder
from streamsr.runtime import DistEnv

FAST = dict(encoder_preset="ultrafast", device="cpu")


@pytest.fixture
def videos(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    media.make_index_clip(folder / "a.mp4", n=4, size=(32, 24))
    media.make_index_clip(folder / "b.mkv", n=7, size=(32, 24))
    (folder / "sub").mkdir()
    media.make_index_clip(folder / "sub" / "c.mov", n=3, size=(32, 24))
    return folder


def test_estimate_frames_reads_the_headers(videos, tmp_path):
    assert estimate_frames(videos / "a.mp4") == 4
    assert estimate_frames(videos / "b.mkv") == 7  # MKV: no count in the header, duration x rate
    # the main video stream's, not a cover picture's that comes first (one frame)
    assert estimate_frames(media.make_cover_first_mp4(tmp_path / "cover.mp4")) == 10
    (tmp_path / "junk.mp4").write_bytes(b"not a video")
    assert estimate_frames(tmp_path / "junk.mp4") is None
    assert estimate_frames(tmp_path) is None


def test_progress_counts_frames_of_all_files_for_an_eta(videos, tmp_path):
    """progress(done, total): total is the frames of every file to do (4 + 7 + 3), so a bar has
    an ETA over the whole folder; status names each file as it starts, [k/n]."""
    calls, lines = [], []
    stats = upscale_folder(videos, tmp_path / "out", model=media.BicubicX4(),
                           progress=lambda done, total: calls.append((done, total)),
                           status=lines.append, **FAST)
    assert stats.written == 3 and stats.frames == 14
    assert {total for _, total in calls} == {14}
    assert [done for done, _ in calls] == list(range(1, 15))
    assert [line.split(" ")[0] for line in lines] == ["[1/3]", "[2/3]", "[3/3]"]
    assert "a.mp4" in lines[0] and "c.mov" in lines[2]
    # resuming: finished files are not counted
    (tmp_path / "out" / "b.mkv").unlink()
    calls.clear()
    upscale_folder(videos, tmp_path / "out", model=media.BicubicX4(), resume=True,
                   progress=lambda done, total: calls.append((done, total)), **FAST)
    assert calls[-1] == (7, 7)


def test_image_format_is_refused_for_a_folder_of_videos(videos, tmp_path):
    with pytest.raises(ConfigError, match="--ext"):
        upscale_folder(videos, tmp_path / "out", model=media.BicubicX4(), image_ext="jpg", **FAST)
    assert not (tmp_path / "out").exists()


def test_cli_folder_run_shows_an_eta_bar_and_file_lines(videos, tmp_path, tiny_weights):
    res = CliRunner().invoke(main, ["upscale", str(videos), str(tmp_path / "out"), "--model",
                                    str(tiny_weights), "--device", "cpu",
                                    "--encoder-preset", "ultrafast"])
    assert res.exit_code == 0, res.output
    assert "[1/3]" in res.stderr and "[3/3]" in res.stderr
    assert "14/14" in res.stderr  # tqdm's n/total: the bar knows the total, hence an ETA
    assert "3 files: 3 written" in res.stderr


# ---------------------------------------------------------------------------------------------
# Folders over torchrun ranks, resume, temporary files, locks

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
