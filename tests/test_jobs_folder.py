"""A folder of videos (`streamsr.jobs.folder`): progress over all the files, options it refuses."""

from __future__ import annotations

import media
import pytest
from click.testing import CliRunner

from streamsr.cli import main
from streamsr.errors import ConfigError
from streamsr.jobs.folder import estimate_frames, upscale_folder

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
