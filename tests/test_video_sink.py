"""sink.py: video files (order, timestamps, defaults, rotation, 10-bit, odd sizes, disk full),
image outputs, and nothing left behind by a run that fails before its first frame."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import av
import media
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from media import H, W, indices, run_api
from video_io import FAST, copy_through_sink

from streamsr.api import upscale
from streamsr.cli import main
from streamsr.errors import ConfigError, OutputError
from streamsr.models.ops import bicubic_uint8
from streamsr.video.encoder import EncodeOptions
from streamsr.video.sink import open_sink
from streamsr.video.source import open_source


@pytest.mark.parametrize("ext", [".mp4", ".mkv"])
def test_sink_round_trip_keeps_order_and_timestamps(tmp_path, ext):
    src = media.make_index_clip(tmp_path / f"in{ext}", n=10)
    sink = copy_through_sink(src, tmp_path / f"out{ext}", encode=FAST)
    assert sink.frames_written == 10
    frames, _, _ = media.decode_all(tmp_path / f"out{ext}")
    assert [media.read_index(f) for f in frames] == list(range(10))
    assert frames[0].shape == (192, 256, 3)
    assert np.allclose(media.frame_times(tmp_path / f"out{ext}"), media.frame_times(src), atol=1e-3)


def test_sink_defaults_h264_crf18_medium_yuv420p_mp4_faststart_mkv_by_name(tmp_path):
    src = media.make_index_clip(tmp_path / "in.mp4", n=3)
    copy_through_sink(src, tmp_path / "out.mp4")
    data = (tmp_path / "out.mp4").read_bytes()
    assert data.find(b"moov") < data.find(b"mdat")  # faststart: index before the media data
    with av.open(str(tmp_path / "out.mp4")) as c:
        cc = c.streams.video[0].codec_context
        assert (cc.name, cc.pix_fmt) == ("h264", "yuv420p")
        assert c.format.name.startswith("mov,mp4")
    opts = media.x264_options(tmp_path / "out.mp4")
    assert (opts["rc"], opts["crf"]) == ("crf", "18.0")
    # x264's "medium" preset (ultrafast would say subme=0 ref=1 rc_lookahead=0 bframes=0)
    medium = {"subme": "7", "ref": "3", "rc_lookahead": "40", "me": "hex", "trellis": "1", "bframes": "3"}
    assert {k: opts[k] for k in medium} == medium
    copy_through_sink(src, tmp_path / "out.mkv")
    with av.open(str(tmp_path / "out.mkv")) as c:
        assert c.format.name == "matroska,webm"
        assert c.streams.video[0].codec_context.name == "h264"
    assert media.matroska_doctype(tmp_path / "out.mkv")
    assert not media.matroska_doctype(tmp_path / "out.mp4")


def test_sink_refuses_existing_output_and_bad_paths(tmp_path):
    src = media.make_index_clip(tmp_path / "in.mp4", n=2)
    out = tmp_path / "out.mp4"
    out.write_bytes(b"precious")
    with pytest.raises(OutputError, match="--overwrite"):
        copy_through_sink(src, out)
    assert out.read_bytes() == b"precious"
    copy_through_sink(src, out, overwrite=True, encode=FAST)
    assert len(media.decode_all(out)[0]) == 2
    (tmp_path / "afile").write_text("x")
    with pytest.raises(OutputError):
        copy_through_sink(src, tmp_path / "afile" / "out.mp4")
    with pytest.raises(OutputError, match="does not exist"):
        copy_through_sink(src, tmp_path / "no" / "such" / "out.mp4")
    with pytest.raises(OutputError, match="container format"):
        copy_through_sink(src, tmp_path / "out.notaformat")


def test_rotation_is_kept(tmp_path):
    src = media.make_rotated_clip(tmp_path / "r.mp4", rotation=90)
    for ext in (".mp4", ".mkv"):
        copy_through_sink(src, tmp_path / f"out{ext}", encode=FAST)
        with av.open(str(tmp_path / f"out{ext}")) as c:
            assert next(c.decode(video=0)).rotation == 90


def test_10bit_output_with_libx265(tmp_path):
    src = media.make_10bit_clip(tmp_path / "ten.mp4", n=2)
    copy_through_sink(src, tmp_path / "out.mkv",
          encode=EncodeOptions(codec="libx265", pix_fmt="yuv420p10le", preset="ultrafast",
                               options={"x265-params": "log-level=error:frame-threads=1:pools=none"}))
    with av.open(str(tmp_path / "out.mkv")) as c:
        assert c.streams.video[0].codec_context.pix_fmt == "yuv420p10le"
        assert len(list(c.decode(video=0))) == 2


def test_png_folder_and_single_image_outputs(tmp_path):
    paths = media.write_images(tmp_path / "imgs", n=2)
    copy_through_sink(tmp_path / "imgs", tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["img_000.png", "img_001.png"]
    import cv2
    img = cv2.imread(str(tmp_path / "out" / "img_001.png"))[:, :, ::-1]
    assert np.array_equal(img, bicubic_uint8(media.index_frame(1), (192, 256)))
    with pytest.raises(OutputError, match="not empty"):
        copy_through_sink(tmp_path / "imgs", tmp_path / "out")
    copy_through_sink(paths[0], tmp_path / "single.png")
    with pytest.raises(OutputError, match="single image"):  # refused before anything is written
        copy_through_sink(media.make_index_clip(tmp_path / "v.mp4", n=3), tmp_path / "three.png")
    assert not (tmp_path / "three.png").exists()
    assert cv2.imread(str(tmp_path / "single.png")).shape == (192, 256, 3)


@pytest.mark.parametrize("size", [(1, 1), (101, 57)])
def test_odd_sizes(tmp_path, size):
    src = media.write_clip(tmp_path / "odd.mkv", (media.smooth_frame(i, *size) for i in range(3)),
                           codec="ffv1", pix_fmt="yuv444p", options={})
    sink = copy_through_sink(src, tmp_path / "out.mp4", encode=FAST)
    frames, _, _ = media.decode_all(tmp_path / "out.mp4")
    assert sink.frames_written == 3 and len(frames) == 3
    assert frames[0].shape == (size[1] * 4, size[0] * 4, 3)


def test_disk_full_is_an_output_error_and_the_partial_file_plays(tmp_path):
    script = textwrap.dedent(f"""
        import resource, signal, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import numpy as np, media
        from fractions import Fraction
        from streamsr.errors import OutputError
        from streamsr.video.sink import EncodeOptions, open_sink
        from streamsr.video.source import open_source
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG
        with open_source(media.make_smooth_clip({str(tmp_path / 's.mkv')!r}, n=1)) as s:
            info = s.info
        resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000))
        try:
            with open_sink({str(tmp_path / 'full.mkv')!r}, info, encode=EncodeOptions(preset="ultrafast")) as k:
                for i in range(400):
                    k.write(np.ascontiguousarray(np.repeat(np.repeat(media.smooth_frame(i), 4, 0), 4, 1)),
                            i * 40, Fraction(1, 1000))
        except OutputError as exc:
            print("OutputError:", exc)
            sys.exit(3)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "cannot write" in proc.stdout
    frames, _, _ = media.decode_all(tmp_path / "full.mkv")
    assert len(frames) > 10


def test_sparse_frames_keep_their_times_and_the_last_frame_its_duration(tmp_path):
    """Frames an hour apart: the output's timestamps and its length are the input's (the
    muxer's default for the last frame, one average frame time, would add 40 minutes)."""
    from fractions import Fraction

    tb = Fraction(1, 1000)
    src = media.write_clip(tmp_path / "sparse.mp4", [media.index_frame(i) for i in range(3)],
                           pts=[0, 3_600_000, 7_200_000], time_base=tb)
    with av.open(str(src)) as c:
        length = c.duration / 1e6  # 7200.04: the last frame shows for 1/25 s
    with open_source(src) as s, open_sink(tmp_path / "out.mp4", s.info, encode=FAST) as sink:
        for f in s:
            sink.write(np.repeat(np.repeat(f.rgb, 4, 0), 4, 1), f.pts, f.time_base,
                       duration=f.duration)
    assert media.frame_times(tmp_path / "out.mp4") == pytest.approx([0, 3600, 7200], abs=1e-3)
    with av.open(str(tmp_path / "out.mp4")) as c:
        assert c.duration / 1e6 == pytest.approx(length, abs=0.01)


class OutOfMemory(media.BicubicX4):
    """Runs out of memory on every call after the first `works` frames of the clip."""

    def __init__(self, works: int, exc: type[Exception]) -> None:
        super().__init__()
        self.works, self.exc, self.seen = works, exc, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] == (24, 32):  # the clip's frames (the engine also tries other sizes)
            self.seen += x.shape[0]
            if self.seen > self.works:
                raise self.exc("CUDA out of memory. Tried to allocate 20.00 GiB")
        return super().forward(x)


@pytest.mark.parametrize("exc", [torch.OutOfMemoryError, RuntimeError])
def test_out_of_memory_at_the_smallest_tile_leaves_no_unplayable_file(tmp_path, exc):
    src = media.make_index_clip(tmp_path / "in.mp4", n=12, size=(32, 24))
    out = tmp_path / "out.mp4"
    with pytest.raises(ConfigError, match="out of memory even with"):
        upscale(src, out, model=OutOfMemory(0, exc), device="cpu", batch=2,
                encoder_preset="ultrafast")
    assert not out.exists()  # no frame was done: nothing (an MP4 without frames does not open)

    with pytest.raises(ConfigError, match="out of memory even with"):
        upscale(src, out, model=OutOfMemory(5, exc), device="cpu", batch=2,
                encoder_preset="ultrafast")
    frames, _, _ = media.decode_all(out)  # the frames done before: a playable file, in order
    assert [media.read_index(f) for f in frames] == [0, 1, 2, 3]


def test_out_of_memory_through_the_cli_is_one_line(tmp_path, monkeypatch):
    import streamsr.models.weights as weights

    src = media.make_index_clip(tmp_path / "in.mp4", n=6, size=(32, 24))
    monkeypatch.setattr(weights, "load_model",
                        lambda name, device="cpu": OutOfMemory(0, torch.OutOfMemoryError))
    out = tmp_path / "out.mkv"
    result = CliRunner().invoke(main, ["upscale", str(src), str(out), "--model", "x", "--device",
                                       "cpu", "--encoder-preset", "ultrafast"])
    lines = [x for x in result.stderr.splitlines() if x.startswith("streamsr: error")]
    assert result.exit_code == 2 and len(lines) == 1 and "out of memory" in lines[0], result.stderr
    assert "Traceback" not in result.stderr and not out.exists()


# -- fault cases (docs/faults.md; `pytest -k fault_` runs them all) ---------------------------

def test_fault_12_rotated_clip_keeps_its_display_matrix(tmp_path):
    src = media.make_rotated_clip(tmp_path / "r.mp4", rotation=90, n=5, size=(W, H))
    stats = run_api(src, tmp_path / "out.mp4")
    got = media.decode_all(tmp_path / "out.mp4")[0]
    assert stats.frames == 5 and indices(got) == list(range(5))
    assert got[0].shape == (4 * H, 4 * W, 3), "pixels stay as stored; the player rotates them"
    with av.open(str(tmp_path / "out.mp4")) as c:
        assert next(c.decode(video=0)).rotation == 90
