"""`streamsr.upscale` (streamsr/api.py): the one dispatcher picks the job for an input/output."""

from __future__ import annotations

import logging

import media
import numpy as np
import pytest
from PIL import Image

import streamsr
import streamsr.api as api
from streamsr.errors import ConfigError
from streamsr.options import UpscaleOptions
from streamsr.runtime import DistEnv


@pytest.fixture
def jobs(monkeypatch):
    """Records which job `upscale` hands the work to, with the options it passes."""
    seen: list[tuple[str, object, dict]] = []

    def spy(name):
        def job(src, dst, options, **kw):
            seen.append((name, options, kw))
            return name

        monkeypatch.setattr(api, name, job)

    for name in ("upscale_stream", "upscale_parts", "upscale_folder"):
        spy(name)
    return seen


def test_the_public_upscale_is_the_dispatcher():
    assert streamsr.upscale is api.upscale and streamsr.UpscaleOptions is UpscaleOptions


def test_a_file_runs_one_stream_and_keywords_apply_over_options(tmp_path, jobs):
    src = media.make_index_clip(tmp_path / "in.mp4", n=2, size=(16, 16))
    opts = UpscaleOptions.from_keywords(crf=20)
    assert api.upscale(src, tmp_path / "o.mp4", opts, tile=8, handle_signals=False) == "upscale_stream"
    (name, got, kw), = jobs
    assert (got.encode.crf, got.engine.tile) == (20, 8) and kw["handle_signals"] is False
    assert opts.engine.tile is None  # the caller's options are not changed


def test_resume_splits_a_video_file_into_parts(tmp_path, jobs):
    src = media.make_index_clip(tmp_path / "in.mp4", n=2, size=(16, 16))
    assert api.upscale(src, f"file:{tmp_path / 'o.mp4'}", resume=True, part_frames=6) == "upscale_parts"
    (name, got, kw), = jobs
    assert got.output.part_frames == 6 and kw["env"] == DistEnv()


@pytest.mark.parametrize("keywords, why", [
    ({"frames": 1}, "--frames"), ({"start": 0.1, "duration": 0.1}, "--start, --duration"),
    ({"segment_time": 5.0}, "--segment-time"), ({"live": True}, "--live")])
def test_resume_with_a_window_or_live_runs_the_plain_pipeline_with_a_warning(tmp_path, jobs, caplog,
                                                                          keywords, why):
    src = media.make_index_clip(tmp_path / "in.mp4", n=2, size=(16, 16))
    with caplog.at_level(logging.WARNING, logger="streamsr"):
        assert api.upscale(src, tmp_path / "o.mkv", resume=True, **keywords) == "upscale_stream"
    assert f"not with {why}: running the plain pipeline" in caplog.text


def test_images_and_hls_outputs_are_not_split(tmp_path, jobs, caplog):
    src = media.make_index_clip(tmp_path / "in.mp4", n=2, size=(16, 16))
    folder = tmp_path / "frames"
    folder.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "a.png")
    with caplog.at_level(logging.WARNING, logger="streamsr"):
        api.upscale(src, tmp_path / "one.png", resume=True, frames=None)
        api.upscale(folder, tmp_path / "out.mp4", resume=True)
        api.upscale(src, tmp_path / "out.m3u8", resume=True)
    assert [name for name, _, _ in jobs] == ["upscale_stream"] * 3
    assert caplog.text.count("not with images") == 2 and "not with --hls-output" in caplog.text


def test_a_folder_of_videos_runs_the_folder_job(tmp_path, jobs):
    folder = tmp_path / "videos"
    folder.mkdir()
    media.make_index_clip(folder / "a.mp4", n=2, size=(16, 16))
    status = []
    assert api.upscale(folder, tmp_path / "out", status=status.append) == "upscale_folder"
    (name, got, kw), = jobs
    assert kw["status"] == status.append and isinstance(got, UpscaleOptions)


def test_other_torchrun_ranks_leave_a_plain_job_to_rank_0(tmp_path, jobs):
    src = media.make_index_clip(tmp_path / "in.mp4", n=2, size=(16, 16))
    assert api.upscale(src, tmp_path / "o.mp4", frames=1, env=DistEnv(rank=1, world_size=2)) is None
    assert jobs == []
    assert api.upscale(src, tmp_path / "o.mp4", env=DistEnv(rank=1, world_size=2)) is None
    assert [name for name, _, _ in jobs] == ["upscale_parts"]  # every rank takes its parts


def test_a_zero_window_is_refused_before_the_choice(tmp_path, jobs):
    src = media.make_index_clip(tmp_path / "in.mp4", n=2, size=(16, 16))
    for bad in ({"frames": 0}, {"duration": 0.0}):
        with pytest.raises(ConfigError):
            api.upscale(src, tmp_path / "o.mp4", resume=True, **bad)
    with pytest.raises(TypeError, match="unexpected options"):
        api.upscale(src, tmp_path / "o.mp4", resum=True)
    assert jobs == []
