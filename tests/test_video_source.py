"""source.py: decoding files (order, timestamps, frame threads, variable frame rate, rotation,
10-bit, --start/--duration), which stream is the video, and broken inputs."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import av
import media
import numpy as np
import pytest
from media import (
    ENV,
    REPO,
    H,
    W,
    assert_one_line,
    decodable,
    indices,
    invoke,
    model_args,
    peak_rss_mb,
    run_api,
)
from video_io import decode_with_source, stream_pts

from streamsr.errors import ConfigError, InputError
from streamsr.video.source import open_source


def test_source_yields_every_frame_in_order_with_decoded_timestamps(tmp_path):
    path = media.make_index_clip(tmp_path / "idx.mp4", n=12)
    frames = decode_with_source(path)
    assert [media.read_index(f.rgb) for f in frames] == list(range(12))
    assert [f.index for f in frames] == list(range(12))
    assert [f.pts for f in frames] == stream_pts(path)
    f = frames[0]
    assert f.rgb.shape == (48, 64, 3) and f.rgb.dtype == np.uint8 and f.rgb.flags.c_contiguous
    with open_source(path) as src:
        assert (src.info.width, src.info.height, src.info.frames) == (64, 48, 12)
        assert src.info.fps == 25 and not src.info.is_live


def test_source_decodes_a_file_with_frame_threads(tmp_path):
    # PyAV opens decoders with slice threads only; the source asks for frame + slice threads
    # (FFmpeg's thread count 0: one per available core) and still flushes every frame out.
    from av.codec.context import ThreadType

    path = media.make_index_clip(tmp_path / "idx.mp4", n=12)
    with av.open(str(path)) as c:
        assert c.streams.video[0].codec_context.thread_type == ThreadType.SLICE  # the default
    with open_source(path) as src:
        cc = src.stream.codec_context
        assert cc.thread_type == ThreadType.AUTO == ThreadType.FRAME | ThreadType.SLICE
        if len(os.sched_getaffinity(0)) > 1:
            assert cc.thread_count > 1  # FFmpeg resolved "auto" to several threads
        assert [media.read_index(f.rgb) for f in src] == list(range(12))


def test_source_keeps_variable_frame_rate(tmp_path):
    path = media.make_vfr_clip(tmp_path / "vfr.mkv")
    frames = decode_with_source(path)
    times = [float(f.pts * f.time_base) for f in frames]
    expected = np.concatenate([[0], np.cumsum(media.VFR_DURATIONS_MS)[:-1]]) / 1000
    assert np.allclose(times, expected, atol=1e-6)
    assert [media.read_index(f.rgb) for f in frames] == list(range(len(expected)))


def test_source_reads_rotation_and_10bit(tmp_path):
    with open_source(media.make_rotated_clip(tmp_path / "r.mp4", rotation=90)) as src:
        assert src.info.rotation == 90
    path = media.make_10bit_clip(tmp_path / "ten.mp4", n=3)
    with open_source(path) as src:
        assert src.info.pix_fmt == "yuv420p10le"
        frames = list(src)
    assert len(frames) == 3
    for i, f in enumerate(frames):
        err = np.abs(f.rgb.astype(int) - media.smooth_frame(i)).mean()
        assert err < 4, err


def test_deep_source_gives_16_bit_rgb_for_high_bit_depth_inputs_only(tmp_path):
    ten = media.make_10bit_gradient_clip(tmp_path / "grad.mkv", n=2)
    with open_source(ten, deep=True) as src:
        assert src.deep
        frames = list(src)
    with open_source(ten) as src:  # not asked for: 8-bit RGB as before
        assert not src.deep
        shallow = list(src)
    assert len(frames) == len(shallow) == 2
    for i, (f, f8) in enumerate(zip(frames, shallow, strict=True)):
        assert f.rgb.dtype == np.uint16 and f.rgb.shape == (48, 64, 3) and f.rgb.flags.c_contiguous
        assert f8.rgb.dtype == np.uint8
        codes = media.gradient_luma10(i)
        assert (f.rgb == f.rgb[..., :1]).all()  # grey stays grey
        # every 10-bit level keeps its own 16-bit value, in order; 8 bits merge neighbours
        levels = {int(c): int(v) for c, v in zip(codes.ravel(), f.rgb[..., 0].ravel(), strict=True)}
        values = [levels[c] for c in sorted(levels)]
        assert len(set(values)) == len(levels) > 400 and values == sorted(values)
        assert len(np.unique(f8.rgb)) < 256 < len(levels)
        # limited range: (Y - 64) / 876 of full scale, less swscale's gain for deep RGB (limited
        # white becomes 65283, not 65535; its encoder maps 65283 back to 940, so it cancels)
        ideal = (codes.astype(np.float64) - 64) / 876 * 65535
        assert np.abs(f.rgb[..., 0] - ideal * 65283 / 65535).max() <= 2
    eight = media.make_index_clip(tmp_path / "idx.mp4", n=2)
    with open_source(eight, deep=True) as src:  # an 8-bit input stays on the 8-bit path
        assert not src.deep and next(iter(src)).rgb.dtype == np.uint8


def test_source_start_and_duration(tmp_path):
    path = media.make_index_clip(tmp_path / "idx.mp4", n=15)
    with open_source(path, start=0.2, duration=0.2) as src:
        got = [media.read_index(f.rgb) for f in src]
        assert src.info.frames == 5
    assert got == [5, 6, 7, 8, 9]
    with open_source(path, start=0.4) as src:
        assert [media.read_index(f.rgb) for f in src] == list(range(10, 15))


def test_bad_inputs_fail_with_one_clear_input_error(tmp_path):
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "text.mp4").write_text("hello, I am not a video\n" * 20)
    (tmp_path / "nothing").mkdir()
    audio = media.make_audio_only(tmp_path / "audio.m4a")
    cases = {
        tmp_path / "missing.mp4": "not found",
        tmp_path / "empty.mp4": "empty",
        tmp_path / "text.mp4": "not a video",
        audio: "no video stream",
        tmp_path / "nothing": "no images",
    }
    for path, words in cases.items():
        with pytest.raises(InputError, match=words):
            open_source(path)


def test_absurd_resolution_is_refused_before_decoding(tmp_path):
    path = media.make_index_clip(tmp_path / "idx.mp4", n=2)
    with pytest.raises(InputError, match="larger than the limit"):
        open_source(path, max_pixels=64 * 48 - 1)
    with open_source(path, max_pixels=64 * 48) as src:
        assert len(list(src)) == 2


def test_truncated_file_keeps_decodable_frames_and_warns_once(tmp_path, caplog):
    path = media.make_truncated(tmp_path / "cut.mkv", n=30, keep=0.6)
    with caplog.at_level(logging.WARNING, logger="streamsr"):
        with open_source(path) as src:
            got = [media.read_index(f.rgb) for f in src]
            assert src.truncated
    assert 0 < len(got) < 30
    assert got == list(range(len(got)))
    assert len([r for r in caplog.records if "truncated" in r.getMessage()]) == 1


def test_corrupt_packet_in_the_middle_is_skipped_with_one_warning(tmp_path, caplog):
    path = media.make_corrupt_packets(tmp_path / "bad.mkv", n=12, bad=(5, 8))
    with caplog.at_level(logging.WARNING, logger="streamsr"):
        with open_source(path) as src:
            got = [media.read_index(f.rgb) for f in src]
            assert src.skipped_packets == 2
    assert got == [i for i in range(12) if i not in (5, 8)]
    assert len([r for r in caplog.records if "undecodable" in r.getMessage()]) == 1


@pytest.fixture
def cover_first(tmp_path) -> list[Path]:
    return [media.make_cover_first_mp4(tmp_path / "cover.mp4"),
            media.make_thumbnail_first_mkv(tmp_path / "thumb.mkv")]


def test_the_main_video_stream_is_taken_not_a_cover_picture(cover_first, caplog):
    from streamsr.video.split import read_keyframe_index

    for path in cover_first:
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="streamsr"):
            with open_source(path) as src:
                got = [media.read_index(f.rgb) for f in src]
                assert (src.info.width, src.info.height) == (64, 48)
        assert got == list(range(10))
        said = [r.getMessage() for r in caplog.records if "video stream #1" in r.getMessage()]
        assert len(said) == 1 and "64x48" in said[0] and "#0" in said[0], said
        assert read_keyframe_index(path).frames == 10  # the parts of --resume index it too


def test_a_file_with_only_a_cover_picture_has_no_video(tmp_path):
    path = tmp_path / "song.m4a"
    out = av.open(str(path), "w", format="mp4")
    cover, packets = media.cover_picture(out)
    audio = out.add_stream("aac", rate=48000)
    audio.layout = "stereo"
    for p in packets:
        out.mux(p)
    media._write_tone(out, audio, 0.5)
    out.close()
    with pytest.raises(InputError, match=r"no video stream \(only audio streams and an attached pic"):
        open_source(path)


@pytest.mark.parametrize("start, duration", [
    (float("nan"), None), (float("inf"), None), (1e308, None), (-1.0, None), ("5", None),
    (None, float("nan")), (None, float("inf")), (None, 0.0), (None, -2.0), (None, 1e308)])
def test_start_and_duration_no_input_can_have_are_refused_in_one_line(tmp_path, start, duration):
    clip = media.make_index_clip(tmp_path / "idx.mp4", n=3)
    images = media.write_images(tmp_path / "imgs", n=2)
    for path in (clip, images[0].parent):
        with pytest.raises(ConfigError, match=r"^--(start|duration) must be") as err:
            open_source(path, start=start, duration=duration)
        assert "\n" not in str(err.value)


def test_start_past_the_end_is_an_input_error(tmp_path):
    path = media.make_index_clip(tmp_path / "idx.mp4", n=12)  # 0.48 s
    for start in (5.0, 0.48):
        with pytest.raises(InputError, match=rf"no video frames at or after --start {start:g} s "
                                             r"\(its video lasts 0.48 s\)"):
            open_source(path, start=start)
    with open_source(path, start=0.44) as src:  # the last frame is still there
        assert [media.read_index(f.rgb) for f in src] == [11]


def test_a_truncated_file_with_audio_is_still_called_truncated(tmp_path):
    src = media.make_av_clip(tmp_path / "av.mkv", n=50, subtitles=False)
    data = src.read_bytes()
    src.write_bytes(data[:int(len(data) * 0.6)])
    with open_source(src) as s:
        got = len(list(s))
        assert s.truncated and 0 < got < 50


# -- fault cases (docs/faults.md; `pytest -k fault_` runs them all) ---------------------------

def test_fault_04_text_files_named_like_media(tmp_path, tiny_weights):
    for name in ("notes.mp4", "notes.mkv", "notes.png"):
        (tmp_path / name).write_text("hello, I am not a video\n" * 40)
    base = model_args(tiny_weights)
    for name, words in (("notes.mp4", "not a video"), ("notes.mkv", "not a video"),
                        ("notes.png", "not an image")):
        r = invoke("upscale", tmp_path / name, tmp_path / "o.mp4", *base)
        assert_one_line(r.exit_code, r.stderr, words)
    assert not (tmp_path / "o.mp4").exists()


def test_fault_05_audio_only_files(tmp_path, tiny_weights):
    m4a = media.make_audio_only(tmp_path / "a.m4a")
    mp4 = tmp_path / "a.mp4"
    mp4.write_bytes(m4a.read_bytes())  # an "mp4" with only sound in it
    for src in (m4a, mp4):
        r = invoke("upscale", src, tmp_path / "o.mkv", *model_args(tiny_weights))
        assert_one_line(r.exit_code, r.stderr, "no video stream", "only audio")
    assert not (tmp_path / "o.mkv").exists()


def _faststart_copy(src: Path, dst: Path) -> Path:
    """Remux `src` with the index (moov) first, as streamsr and most web MP4s write it."""
    with av.open(str(src)) as i, av.open(str(dst), "w", options={"movflags": "+faststart"}) as o:
        s = o.add_stream_from_template(i.streams.video[0])
        for p in i.demux(i.streams.video[0]):
            if p.dts is not None:
                p.stream = s
                o.mux(p)
    return dst


def test_fault_06_truncated_video_cut_at_several_offsets(tmp_path, tiny_weights):
    n = 40
    frames = [media.index_frame(i, W, H) for i in range(n)]
    opts = {"crf": "12", "preset": "ultrafast", "g": "5"}
    mkv = media.write_clip(tmp_path / "full.mkv", frames, options=opts)
    mp4 = _faststart_copy(media.write_clip(tmp_path / "plain.mp4", frames, options=opts),
                          tmp_path / "full.mp4")
    seen = {"ok": 0, "refused": 0}
    for src in (mkv, mp4):
        data = src.read_bytes()
        for frac in (0.1, 0.5, 0.65, 0.8, 0.95):
            cut = tmp_path / f"cut{int(frac * 100)}{src.suffix}"
            cut.write_bytes(data[:int(len(data) * frac)])
            good = len(decodable(cut))
            out = tmp_path / f"out_{cut.stem}_{src.suffix[1:]}.mkv"
            if good == 0:
                with pytest.raises(InputError):
                    run_api(cut, out)
                assert not out.exists()
                seen["refused"] += 1
                continue
            stats = run_api(cut, out)
            got = media.decode_all(out)[0]  # strict decode: the output is whole and playable
            assert stats.frames == len(got) == good, (cut.name, good, stats)
            assert indices(got) == list(range(good)), cut.name
            # MP4 headers count frames exactly; MKV ones give a duration, and a shortfall of
            # under half a second is not called truncation (streams may end at different times)
            if src.suffix == ".mp4" or (n - good) / 25 > 0.6:
                assert stats.truncated and "truncated" in stats.summary(), (cut.name, good)
            seen["ok"] += 1
    assert seen["ok"] >= 4 and seen["refused"] >= 2, seen
    # the CLI: exit 0, the warning and the frame count on stderr
    cut = tmp_path / "cut80.mp4"
    good = len(decodable(cut))
    r = invoke("upscale", cut, tmp_path / "cli.mkv", *model_args(tiny_weights)[:-1])
    assert r.exit_code == 0 and "Traceback" not in r.stderr, r.stderr
    assert f"{good} frames in" in r.stderr and "truncated" in r.stderr
    assert len(media.decode_all(tmp_path / "cli.mkv")[0]) == good


_FUZZ_WORKER = r"""
import json, sys, time, traceback
import media
from streamsr.errors import StreamsrError
from streamsr.api import upscale
for line in sys.stdin:
    src, dst = line.split()
    print(json.dumps({"start": src}), flush=True)
    t = time.monotonic()
    try:
        stats = upscale(src, dst, model=media.BicubicX4(), device="cpu", encoder_preset="ultrafast",
                        batch=2, handle_signals=False)
        res = {"ok": stats.frames}
    except StreamsrError as exc:
        res = {"error": str(exc), "kind": type(exc).__name__}
    except BaseException:
        res = {"crash": traceback.format_exc()}
    res.update(src=src, dst=dst, seconds=time.monotonic() - t)
    print(json.dumps(res), flush=True)
"""


def _mutants(tmp_path: Path, n: int, seed: int) -> list[Path]:
    base = media.write_clip(tmp_path / "base.mp4", (media.index_frame(i, W, H) for i in range(10)),
                            options={"crf": "20", "preset": "ultrafast", "g": "4"})
    data = base.read_bytes()
    rng = np.random.default_rng(seed)
    paths = []
    for k in range(n):
        b = bytearray(data)
        lo, hi = len(b) // 8, len(b) * 7 // 8  # the middle: stream data and index, not the very start
        for _ in range(int(rng.integers(1, 24))):
            b[int(rng.integers(lo, hi))] = int(rng.integers(0, 256))
        p = tmp_path / f"mutant{k:02d}.mp4"
        p.write_bytes(bytes(b))
        paths.append(p)
    return paths


def test_fault_07_fuzz_flipped_bytes_never_crash_or_hang(tmp_path, tiny_weights):
    mutants = _mutants(tmp_path, 60, seed=20261126)
    jobs = "".join(f"{p} {p.with_suffix('.out.mkv')}\n" for p in mutants)
    proc = subprocess.Popen([sys.executable, "-c", _FUZZ_WORKER], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            env=ENV)
    try:
        out, err = proc.communicate(jobs, timeout=240)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        started = [json.loads(x)["start"] for x in out.splitlines() if '"start"' in x]
        pytest.fail(f"hung on {started[-1] if started else '?'}")
    assert proc.returncode == 0, err[-3000:]
    results = [json.loads(x) for x in out.splitlines() if '"start"' not in x]
    assert len(results) == len(mutants)
    crashes = [r for r in results if "crash" in r]
    assert not crashes, crashes[0]["crash"]
    outcomes = {"ok": 0, "error": 0}
    for r in results:
        assert r["seconds"] < 20, r  # a per-file bound: damage must not make decoding crawl
        if "ok" in r:
            got = decodable(r["dst"])
            assert len(got) == r["ok"] and got[0].shape == (4 * H, 4 * W, 3), r
            assert media.decode_all(r["dst"])[0], r  # the output opens and plays
            outcomes["ok"] += 1
        else:
            assert "\n" not in r["error"] and r["kind"] in ("InputError",), r
            assert not Path(r["dst"]).exists(), r
            outcomes["error"] += 1
    assert outcomes["ok"] >= 10 and outcomes["error"] >= 3, outcomes  # both paths exercised
    # a handful through the real CLI: exit 0 with a playable file, or exit 2 with one line
    by_kind = {}
    for r in results:
        by_kind.setdefault("ok" if "ok" in r else r["error"].split(":")[-1][:30], r)
    picks = list(by_kind.values())[:2]
    procs = [subprocess.Popen([sys.executable, "-m", "streamsr", "upscale", r["src"],
                               str(tmp_path / f"cli{k}.mkv"), *map(str, model_args(tiny_weights))],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                              env=ENV) for k, r in enumerate(picks)]
    for k, (r, p) in enumerate(zip(picks, procs, strict=True)):
        try:
            _, err = p.communicate(timeout=180)
        finally:
            p.kill()
        if "ok" in r:
            assert p.returncode == 0 and "Traceback" not in err, err[-2000:]
            assert len(media.decode_all(tmp_path / f"cli{k}.mkv")[0]) == r["ok"]
        else:
            assert_one_line(p.returncode, err, r["error"][:40])


def _y4m(path: Path, w: int, h: int) -> Path:
    path.write_bytes(f"YUV4MPEG2 W{w} H{h} F25:1 Ip A1:1 C420jpeg\nFRAME\n".encode() + b"\x80" * 4096)
    return path


def _png_header(path: Path, w: int, h: int) -> Path:
    """A PNG whose header says w x h (the pixel data is a stub: only the header matters)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 999))
                     + chunk(b"IEND", b""))
    return path


def test_fault_08_absurd_resolution_is_refused_before_allocating(tmp_path, clip, tiny_weights):
    huge = _y4m(tmp_path / "huge.y4m", 60000, 60000)  # 3.6 Gpx: FFmpeg itself refuses the header
    big = _y4m(tmp_path / "big.y4m", 16000, 16000)  # 256 Mpx: FFmpeg accepts, our limit refuses
    before = peak_rss_mb()
    with pytest.raises(InputError, match="impossible frame size"):
        run_api(huge, tmp_path / "o.mkv")
    with pytest.raises(InputError, match="--max-pixels"):
        run_api(big, tmp_path / "o.mkv")
    for w, h, words in ((60000, 60000, "too large"), (40000, 20000, "too large"),
                        (10000, 5000, "--max-pixels")):  # images: alone and in a folder
        with pytest.raises(InputError, match=words):
            run_api(_png_header(tmp_path / f"p{w}.png", w, h), tmp_path / "o.png")
        with pytest.raises(InputError, match=words):
            run_api(_png_header(tmp_path / f"d{w}" / "a.png", w, h).parent, tmp_path / "o")
    assert peak_rss_mb() - before < 200, "refusing must not allocate the frame (5.4 GB / 384 MB)"
    assert not (tmp_path / "o.mkv").exists() and not (tmp_path / "o.png").exists()
    base = model_args(tiny_weights)
    r = invoke("upscale", big, tmp_path / "o.mkv", *base)
    assert_one_line(r.exit_code, r.stderr, "16000x16000", "--max-pixels")
    r = invoke("upscale", huge, tmp_path / "o.mkv", *base)
    assert_one_line(r.exit_code, r.stderr, "huge.y4m")
    r = invoke("upscale", clip, tmp_path / "o.mkv", *base, "--max-pixels", W * H - 1)
    assert_one_line(r.exit_code, r.stderr, f"{W}x{H}", "--max-pixels")
    r = invoke("upscale", clip, tmp_path / "o.mkv", *base, "--max-pixels", W * H)
    assert r.exit_code == 0, r.stderr
    assert len(media.decode_all(tmp_path / "o.mkv")[0]) == 4
