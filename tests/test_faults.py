"""The fault suite: whatever users feed streamsr and whatever goes wrong, they get a clear message,
a non-zero exit, every frame already processed in a playable file, nothing overwritten that they
did not ask for, and no weights file can run code.

Cases are numbered as in docs/faults.md. CLI cases whose exit code, traceback or signal handling
matters run `python -m streamsr` as a real subprocess with a timeout; the rest use click's runner
(same code path, in-process) or the Python API with the bicubic stand-in model, so the suite stays
fast. Partial outputs are read back with PyAV directly (`decodable`), not with streamsr's reader.
"""

from __future__ import annotations

import json
import os
import pickle
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import media
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from test_live import fast_options, gst, rtsp  # noqa: F401  (RTSP server fixtures)
from test_trainer import prepared  # noqa: F401  (a tiny prepared triplet folder)

from streamsr.api import upscale
from streamsr.cli import main
from streamsr.errors import InputError, OutputError, SourceError, WeightsError
from streamsr.models import TINY, DeblurSR
from streamsr.models.ops import bicubic_uint8

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{REPO}{os.pathsep}{HERE}"}
FAST = dict(encoder_preset="ultrafast", device="cpu", batch=2)
W, H = 32, 24  # input clips are tiny: 32x24 -> 128x96


# -- helpers -----------------------------------------------------------------------------------

def run_api(src, dst, **kw):
    """The Python API with the bicubic stand-in (fast, and its output is predictable)."""
    return upscale(src, dst, **{"model": media.BicubicX4(), **FAST, **kw})


def cli(*args, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    """`python -m streamsr ARGS` in a real subprocess."""
    return subprocess.run([sys.executable, "-m", "streamsr", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO, env=ENV, **kw)


def invoke(*args):
    """`streamsr ARGS` in-process; anything but a clean exit (a crash) fails the test here."""
    result = CliRunner().invoke(main, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"crashed: {result.exception!r}\n{result.stderr}") from result.exception
    return result


def assert_one_line(code: int, stderr: str, *words: str, expect: int = 2, alone: bool = False) -> str:
    """Exit `expect`, no traceback, exactly one 'streamsr: error:' line holding `words`.

    Other stderr lines may only be log lines (warnings said on the way); `alone`: none at all.
    """
    assert code == expect, (code, stderr[-2000:])
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("streamsr: error:")]
    assert len(errors) == 1, stderr[-2000:]
    others = [line for line in lines if line not in errors]
    if alone:
        assert not others, stderr[-2000:]
    assert all(line.split(" ", 1)[0] in ("WARNING", "ERROR", "INFO") for line in others), others
    for w in words:
        assert w in errors[0], (w, errors[0])
    return errors[0]


def decodable(path) -> list[np.ndarray]:
    """Every frame PyAV can decode from `path` (damaged packets skipped, decoder flushed)."""
    frames: list[np.ndarray] = []
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError):
        return frames
    with container:
        if not container.streams.video:
            return frames
        vs = container.streams.video[0]
        try:
            for packet in container.demux(vs):
                try:
                    frames += [f.to_ndarray(format="rgb24") for f in packet.decode()]
                except av.error.FFmpegError:
                    continue
        except av.error.FFmpegError:
            try:
                frames += [f.to_ndarray(format="rgb24") for f in vs.codec_context.decode(None)]
            except av.error.FFmpegError:
                pass
    return frames


def indices(frames) -> list[int]:
    return [media.read_index(f) for f in frames]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255 ** 2 / mse)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return media.make_index_clip(tmp_path_factory.mktemp("clip") / "in.mp4", n=4, size=(W, H))


def model_args(weights) -> list:
    return ["--model", weights, "--device", "cpu", "--encoder-preset", "ultrafast", "-q"]


# -- 1-5: inputs that are not videos -----------------------------------------------------------

def test_01_missing_input_one_line_and_debug_shows_the_traceback(tmp_path, tiny_weights):
    out = tmp_path / "o.mp4"
    r = cli("upscale", tmp_path / "missing.mp4", out, *model_args(tiny_weights), timeout=60)
    assert_one_line(r.returncode, r.stderr, "input not found", "missing.mp4", alone=True)
    assert r.stdout == "" and not out.exists()
    d = cli("--debug", "upscale", tmp_path / "missing.mp4", out, *model_args(tiny_weights), timeout=60)
    assert d.returncode not in (0, 2) and "Traceback" in d.stderr
    assert "InputError: input not found" in d.stderr and not out.exists()
    # bad options of a command are one line too, with a pointer to its help
    for args, words in ((["upscale", "a.mp4", "b.mp4", "--crf", "99"], ["--crf", "99"]),
                        (["upscale", "a.mp4"], ["Missing argument", "OUTPUT"]),
                        (["upscale", "a.mp4", "b.mp4", "--bogus"], ["--bogus"]),
                        (["nosuchcommand"], ["No such command"])):
        r = invoke(*args)
        assert_one_line(r.exit_code, r.stderr, *words, "--help'", alone=True)


def test_02_directory_where_a_file_is_expected(tmp_path, clip, tiny_weights):
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "notes.txt").write_text("no images here")
    base = model_args(tiny_weights)
    r = invoke("upscale", tmp_path / "folder", tmp_path / "o.mp4", *base)
    assert_one_line(r.exit_code, r.stderr, "folder with no images")
    r = invoke("upscale", clip, tmp_path / "o.mp4", "--model", tmp_path / "folder", "--device", "cpu")
    assert_one_line(r.exit_code, r.stderr, "is a directory, not a weights file")
    r = invoke("upscale", clip, clip / "o.mp4", *base)  # the output's "folder" is a file
    assert_one_line(r.exit_code, r.stderr, "cannot")
    r = invoke("import-mprnet", tmp_path / "folder", tmp_path / "x.safetensors")
    assert r.exit_code == 2 and "Traceback" not in r.stderr  # click's usage error
    assert not (tmp_path / "o.mp4").exists() and not (tmp_path / "x.safetensors").exists()


def test_03_zero_length_files(tmp_path, clip, tiny_weights):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    r = invoke("upscale", empty, tmp_path / "o.mp4", *model_args(tiny_weights))
    assert_one_line(r.exit_code, r.stderr, "empty (0 bytes)")
    (tmp_path / "empty.safetensors").write_bytes(b"")
    r = invoke("upscale", clip, tmp_path / "o.mp4", *model_args(tmp_path / "empty.safetensors"))
    assert_one_line(r.exit_code, r.stderr, "not a safetensors weights file")
    (tmp_path / "empty.pth").write_bytes(b"")
    r = invoke("import-mprnet", tmp_path / "empty.pth", tmp_path / "x.safetensors")
    assert_one_line(r.exit_code, r.stderr, "refusing to load")
    assert not (tmp_path / "o.mp4").exists() and not (tmp_path / "x.safetensors").exists()


def test_04_text_files_named_like_media(tmp_path, tiny_weights):
    for name in ("notes.mp4", "notes.mkv", "notes.png"):
        (tmp_path / name).write_text("hello, I am not a video\n" * 40)
    base = model_args(tiny_weights)
    for name, words in (("notes.mp4", "not a video"), ("notes.mkv", "not a video"),
                        ("notes.png", "not an image")):
        r = invoke("upscale", tmp_path / name, tmp_path / "o.mp4", *base)
        assert_one_line(r.exit_code, r.stderr, words)
    assert not (tmp_path / "o.mp4").exists()


def test_05_audio_only_files(tmp_path, tiny_weights):
    m4a = media.make_audio_only(tmp_path / "a.m4a")
    mp4 = tmp_path / "a.mp4"
    mp4.write_bytes(m4a.read_bytes())  # an "mp4" with only sound in it
    for src in (m4a, mp4):
        r = invoke("upscale", src, tmp_path / "o.mkv", *model_args(tiny_weights))
        assert_one_line(r.exit_code, r.stderr, "no video stream", "only audio")
    assert not (tmp_path / "o.mkv").exists()


# -- 6-8: damaged and hostile video files ------------------------------------------------------

def _faststart_copy(src: Path, dst: Path) -> Path:
    """Remux `src` with the index (moov) first, as streamsr and most web MP4s write it."""
    with av.open(str(src)) as i, av.open(str(dst), "w", options={"movflags": "+faststart"}) as o:
        s = o.add_stream_from_template(i.streams.video[0])
        for p in i.demux(i.streams.video[0]):
            if p.dts is not None:
                p.stream = s
                o.mux(p)
    return dst


def test_06_truncated_video_cut_at_several_offsets(tmp_path, tiny_weights):
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


def test_07_fuzz_flipped_bytes_never_crash_or_hang(tmp_path, tiny_weights):
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


def test_08_absurd_resolution_is_refused_before_allocating(tmp_path, clip, tiny_weights):
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


# -- 9-13: unusual but valid video -------------------------------------------------------------

@pytest.mark.parametrize("size", [(1, 1), (2, 2)])
def test_09_one_and_two_pixel_frames_through_the_real_model(tmp_path, size):
    w, h = size
    src = media.write_clip(tmp_path / "tiny.mkv", (media.smooth_frame(i, w, h) for i in range(2)),
                           codec="ffv1", pix_fmt="yuv444p", options={})
    torch.manual_seed(0)
    stats = upscale(src, tmp_path / "out.mkv", model=DeblurSR(TINY).eval(), **FAST)
    got = media.decode_all(tmp_path / "out.mkv")[0]
    assert stats.frames == len(got) == 2 and got[0].shape == (4 * h, 4 * w, 3)
    bic = run_api(src, tmp_path / "pngs")  # a PNG folder: the pixels as computed
    assert bic.frames == 2
    import cv2

    pngs = sorted((tmp_path / "pngs").glob("*.png"))
    first = cv2.cvtColor(cv2.imread(str(pngs[0])), cv2.COLOR_BGR2RGB)
    assert psnr(first, bicubic_uint8(media.smooth_frame(0, w, h), (4 * h, 4 * w))) > 40


@pytest.mark.parametrize("size,codec,pix_fmt", [((33, 17), "ffv1", "yuv420p"),
                                                 ((31, 23), "libx264", "yuv444p"),
                                                 ((45, 2), "ffv1", "yuv444p")])
def test_10_odd_sizes(tmp_path, size, codec, pix_fmt):
    w, h = size
    originals = [media.smooth_frame(i, w, h) for i in range(3)]
    src = media.write_clip(tmp_path / "odd.mkv", originals, codec=codec, pix_fmt=pix_fmt,
                           options={} if codec == "ffv1" else {"crf": "8", "preset": "ultrafast"})
    stats = run_api(src, tmp_path / "out.mp4", crf=8)  # yuv420p output of an odd-sized input x4
    got = media.decode_all(tmp_path / "out.mp4")[0]
    assert stats.frames == len(got) == 3 and got[0].shape == (4 * h, 4 * w, 3)
    for orig, out in zip(originals, got, strict=True):
        assert psnr(out, bicubic_uint8(orig, (4 * h, 4 * w))) > 36  # a wrong matrix: < 30


def _gray(rgb: np.ndarray) -> np.ndarray:
    y = rgb.mean(axis=2, keepdims=True).round().astype(np.uint8)
    return np.ascontiguousarray(np.repeat(y, 3, axis=2))


@pytest.mark.parametrize("codec,pix_fmt,gray,threshold", [
    ("libx264", "yuv420p10le", False, 36),  # 10 bit
    ("libx264", "yuv444p", False, 38),  # 4:4:4
    ("ffv1", "gray", True, 46),  # grey (exact up to bicubic/encode rounding)
    ("ffv1", "gray10le", True, 46),
    ("libx264rgb", "rgb24", False, 40),  # RGB, no Y'CbCr at all
    ("ffv1", "yuv444p16le", False, 40),
])
def test_11_pixel_formats(tmp_path, codec, pix_fmt, gray, threshold):
    originals = [media.smooth_frame(i, W, H) for i in range(3)]
    if gray:
        originals = [_gray(f) for f in originals]
    opts = {} if codec == "ffv1" else {"crf": "4" if codec == "libx264" else "0", "preset": "ultrafast"}
    src = media.write_clip(tmp_path / "in.mkv", originals, codec=codec, pix_fmt=pix_fmt, options=opts)
    stats = run_api(src, tmp_path / "out.mkv", crf=4)
    got = media.decode_all(tmp_path / "out.mkv")[0]
    assert stats.frames == len(got) == 3 and got[0].shape == (4 * H, 4 * W, 3)
    scores = [psnr(out, bicubic_uint8(orig, (4 * H, 4 * W))) for orig, out in zip(originals, got, strict=True)]
    assert min(scores) > threshold, scores
    if gray:  # grey in, grey out: no colour cast from a wrong matrix
        assert max(np.abs(f.astype(int) - _gray(f).astype(int)).max() for f in got) <= 3


def test_12_rotated_clip_keeps_its_display_matrix(tmp_path):
    src = media.make_rotated_clip(tmp_path / "r.mp4", rotation=90, n=5, size=(W, H))
    stats = run_api(src, tmp_path / "out.mp4")
    got = media.decode_all(tmp_path / "out.mp4")[0]
    assert stats.frames == 5 and indices(got) == list(range(5))
    assert got[0].shape == (4 * H, 4 * W, 3), "pixels stay as stored; the player rotates them"
    with av.open(str(tmp_path / "out.mp4")) as c:
        assert next(c.decode(video=0)).rotation == 90


def test_13_variable_frame_rate_through_the_cli(tmp_path, tiny_weights):
    src = media.make_vfr_clip(tmp_path / "vfr.mkv", size=(W, H))
    r = invoke("upscale", src, tmp_path / "out.mp4", *model_args(tiny_weights))
    assert r.exit_code == 0, r.stderr
    expected = np.concatenate([[0], np.cumsum(media.VFR_DURATIONS_MS)[:-1]]) / 1000
    assert np.allclose(media.frame_times(tmp_path / "out.mp4"), expected, atol=1e-3)


# -- 14-17: output problems --------------------------------------------------------------------

def test_14_output_folder_not_writable(tmp_path, clip, tiny_weights):
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


_DISK_FULL_CHILD = r"""
import resource, signal, sys
import media
from streamsr.errors import OutputError
from streamsr.api import upscale
written = []
try:
    upscale(sys.argv[1], sys.argv[2], model=media.BicubicX4(), device="cpu", batch=2,
            encoder_preset="ultrafast", crf=0, progress=lambda done, total: written.append(done))
except OutputError as exc:
    print(max(written, default=0), flush=True)
    print(exc, file=sys.stderr)
    sys.exit(3)
"""


def _file_size_limit(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


@pytest.fixture(scope="module")
def noisy_clip(tmp_path_factory):
    """300 lossless frames of index patterns under noise (12 s: output sizes grow steadily)."""
    n = 300
    rng = np.random.default_rng(0)
    noisy = [np.clip(media.index_frame(i, W, H).astype(int) + rng.integers(-40, 41, (H, W, 3)), 0, 255)
             .astype(np.uint8) for i in range(n)]
    return media.write_clip(tmp_path_factory.mktemp("noisy") / "in.mkv", noisy,
                            options={"crf": "0", "preset": "ultrafast"}), n


def strictly_decoded(path) -> int:
    """Frames of `path`, decoded with errors raised (the file must be whole, index included)."""
    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


@pytest.mark.parametrize("ext", ["mkv", "mp4"])
def test_15_disk_full_keeps_a_playable_partial_output(tmp_path, noisy_clip, ext):
    src, n = noisy_clip
    full = run_api(src, tmp_path / f"full.{ext}", crf=0).output_bytes
    limit = full // 2  # the file-size limit is reached halfway through
    out = tmp_path / f"out.{ext}"
    proc = subprocess.run([sys.executable, "-c", _DISK_FULL_CHILD, str(src), str(out)],
                          capture_output=True, text=True, timeout=180, cwd=REPO, env=ENV,
                          preexec_fn=_file_size_limit(limit))
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "cannot write" in proc.stderr and "disk nearly full" in proc.stderr, proc.stderr[-2000:]
    assert out.stat().st_size <= limit
    reported = int(proc.stdout.split()[-1])
    assert 0 < reported < n
    # stopped while the file could still be finished: every frame handed to the encoder is in
    # it, in order, and the file decodes without an error (an MP4 needs its index for that)
    got = decodable(out)
    assert len(got) == reported == strictly_decoded(out), (len(got), reported)
    assert indices(got) == list(range(reported))


def test_15_full_file_system_stops_in_time(tmp_path, noisy_clip, monkeypatch):
    """A file system with a fixed budget (statvfs reports what is left of it) is never overrun."""
    import streamsr.video.disk_guard as space

    src, n = noisy_clip
    budget = run_api(src, tmp_path / "full.mp4", crf=0).output_bytes // 2
    disk = tmp_path / "disk"
    disk.mkdir()
    real = os.statvfs

    class Left:
        f_frsize = 1
        f_blocks = budget

        def __init__(self) -> None:
            used = sum(p.stat().st_size for p in disk.iterdir())
            self.f_bavail = self.f_bfree = max(0, budget - used)

    monkeypatch.setattr(space.os, "statvfs", lambda path: Left() if Path(path) == disk else real(path))
    written: list[int] = []
    with pytest.raises(OutputError, match="disk nearly full") as err:
        run_api(src, disk / "out.mp4", crf=0, progress=lambda done, total: written.append(done))
    assert "finalised" in str(err.value)
    out = disk / "out.mp4"
    assert out.stat().st_size <= budget
    assert 0 < max(written) < n
    assert strictly_decoded(out) == max(written)
    assert indices(decodable(out)) == list(range(max(written)))


def test_15_cli_disk_full_is_one_line(tmp_path, clip, tiny_weights):
    r = cli("upscale", clip, tmp_path / "cli.mp4", *model_args(tiny_weights), "--crf", "0",
            timeout=180, preexec_fn=_file_size_limit(8000))
    assert_one_line(r.returncode, r.stderr, "cannot write", "disk nearly full", "finalised")


def test_16_existing_output_is_never_overwritten_without_overwrite(tmp_path, clip, tiny_weights):
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


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130)])  # SIGTERM: test_cli_upscale.py
def test_17_signals_mid_run_finalise_a_playable_mp4(tmp_path, tiny_weights, sig, code):
    n = 1500  # a minute of video: far more than the run gets through before the signal
    src = media.make_av_clip(tmp_path / "in.mp4", n=n, size=(W, H), subtitles=False)
    out = tmp_path / "out.mp4"
    proc = subprocess.Popen([sys.executable, "-m", "streamsr", "upscale", str(src), str(out),
                             *map(str, model_args(tiny_weights)), "--batch", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            env=ENV)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if out.exists() and out.stat().st_size > 1000:  # frames are being written
                break
            time.sleep(0.1)
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    line = assert_one_line(proc.returncode, err, f"interrupted by {signal.Signals(sig).name}",
                           "(finalised)", expect=code)
    written = int(line.split("interrupted by")[1].split()[1])
    frames = media.decode_all(out)[0]  # strict: an MP4 with its index, i.e. finalised
    assert 0 < written < n and len(frames) == written
    assert frames[0].shape == (4 * H, 4 * W, 3)
    with av.open(str(out)) as c:  # the audio was trimmed to the video, not left running on
        end = max(float((p.pts + p.duration) * p.time_base) for p in c.demux(audio=0) if p.size)
    assert end <= written / 25 + 0.1


# -- 18-20: weights, configs and presets that try to do harm --------------------------------

class _Payload:
    """Unpickling this creates `marker`: proof that the pickle ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_18_pickle_with_a_code_payload_never_runs(tmp_path, prepared):  # noqa: F811
    marker = tmp_path / "PWNED"
    raw = tmp_path / "raw.pth"
    raw.write_bytes(pickle.dumps({"state_dict": {"w": _Payload(marker)}}, protocol=2))
    zipped = tmp_path / "zipped.pth"
    torch.save({"state_dict": {"w": _Payload(marker)}}, zipped)
    as_safetensors = tmp_path / "evil.safetensors"
    as_safetensors.write_bytes(zipped.read_bytes())
    assert not marker.exists()
    clip = media.make_index_clip(tmp_path / "in.mp4", n=2, size=(W, H))
    recipe = tmp_path / "r.toml"
    recipe.write_text('model = "paper"\nbatch = 1\nmax_steps = 1\nnum_workers = 0\n')
    for evil in (raw, zipped, as_safetensors):
        r = invoke("upscale", clip, tmp_path / "o.mp4", "--model", evil, "--device", "cpu")
        assert_one_line(r.exit_code, r.stderr, "not a safetensors weights file")
        r = invoke("info", "--model", evil)
        assert_one_line(r.exit_code, r.stderr)
        r = invoke("import-mprnet", evil, tmp_path / "x.safetensors")
        assert_one_line(r.exit_code, r.stderr, "refusing to load")
        r = invoke("train", "--recipe", recipe, "--data", prepared, "--out", tmp_path / "run",
                   "--init-mprnet", evil, "--no-progress")
        assert_one_line(r.exit_code, r.stderr, "refusing to load")
        r = invoke("train", "--recipe", recipe, "--data", prepared, "--out", tmp_path / "run2",
                   "--set", "model=tiny", "--init", evil, "--no-progress")
        assert_one_line(r.exit_code, r.stderr, "not a safetensors weights file")
    ckpts = tmp_path / "run3" / "checkpoints"  # a planted "checkpoint" in a run folder
    ckpts.mkdir(parents=True)
    (ckpts / "step-00000001.pt").write_bytes(zipped.read_bytes())
    r = invoke("train", "--data", prepared, "--out", tmp_path / "run3", "--resume", "--no-progress")
    assert_one_line(r.exit_code, r.stderr, "unreadable")
    # and once in a fresh process, where nothing of ours was imported before the load
    p = cli("upscale", clip, tmp_path / "o.mp4", "--model", zipped, "--device", "cpu", timeout=60)
    assert_one_line(p.returncode, p.stderr, "not a safetensors weights file")
    assert not marker.exists(), "the pickle payload ran"
    assert not (tmp_path / "o.mp4").exists() and not (tmp_path / "x.safetensors").exists()


def _tensors(path: Path) -> tuple[dict, dict]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())


def test_19_safetensors_that_do_not_match(tmp_path, clip, tiny_weights):
    from safetensors.torch import save_file

    tensors, meta = _tensors(tiny_weights)
    key = next(k for k, v in tensors.items() if v.ndim == 4)
    cases = []
    reshaped = dict(tensors)
    reshaped[key] = torch.zeros(tuple(tensors[key].shape[:-1]) + (5,))
    save_file(reshaped, str(tmp_path / "shape.safetensors"), metadata=meta)
    cases.append(("shape.safetensors", [key, "mis-shaped"]))
    missing = {k: v for k, v in tensors.items() if k != key}
    save_file(missing, str(tmp_path / "missing.safetensors"), metadata=meta)
    cases.append(("missing.safetensors", [key, "missing"]))
    extra = {**tensors, "head.backdoor": torch.zeros(3)}
    save_file(extra, str(tmp_path / "extra.safetensors"), metadata=meta)
    cases.append(("extra.safetensors", ["head.backdoor", "unexpected"]))
    from streamsr.models import LITE

    save_file(tensors, str(tmp_path / "config.safetensors"), metadata={**meta, "config": LITE.to_json()})
    cases.append(("config.safetensors", ["mis-shaped", "'lite'"]))
    hostile = json.loads(TINY.to_json())
    hostile["trunk"]["num_cab"] = 10 ** 7  # would build ten million modules
    save_file(tensors, str(tmp_path / "hostile.safetensors"), metadata={**meta, "config": json.dumps(hostile)})
    cases.append(("hostile.safetensors", ["num_cab"]))
    greedy = json.loads(TINY.to_json())
    greedy["trunk"]["n_feat"] = 512  # a config far larger than the tensors in the file
    greedy["sr_feat"] = 512
    save_file({"x": torch.zeros(1)}, str(tmp_path / "greedy.safetensors"), metadata={**meta, "config": json.dumps(greedy)})
    cases.append(("greedy.safetensors", ["does not match"]))
    (tmp_path / "header.safetensors").write_bytes((1 << 62).to_bytes(8, "little") + b"{}")
    cases.append(("header.safetensors", ["not a safetensors weights file"]))
    nometa = tmp_path / "nometa.safetensors"
    save_file(tensors, str(nometa))
    cases.append(("nometa.safetensors", ["not a streamsr weights file"]))
    before = peak_rss_mb()
    for name, words in cases:
        r = invoke("upscale", clip, tmp_path / "o.mp4", "--model", tmp_path / name, "--device", "cpu")
        assert_one_line(r.exit_code, r.stderr, name, *words)
        with pytest.raises(WeightsError):
            run_api(clip, tmp_path / "o.mp4", model=tmp_path / name)
    assert peak_rss_mb() - before < 300
    assert not (tmp_path / "o.mp4").exists()


def test_20_preset_names_with_paths_are_refused(tmp_path, clip, tiny_weights, monkeypatch):
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


# -- 21: live sources --------------------------------------------------------------------------

def test_21a_rtsp_source_that_never_answers_gives_up_in_bounded_time(tmp_path, tiny_weights):
    with socket.socket() as mute:  # accepts the TCP connection, never says a word
        mute.bind(("127.0.0.1", 0))
        mute.listen(4)
        url = f"rtsp://127.0.0.1:{mute.getsockname()[1]}/cam"
        t0 = time.monotonic()
        r = cli("upscale", url, tmp_path / "cam.mkv", "--model", tiny_weights, "--device", "cpu",
                "--timeout", "0.5", "--reconnect-max", "1", "-q", timeout=60)
        took = time.monotonic() - t0
    assert_one_line(r.returncode, r.stderr, "after 2 attempt")
    assert took < 45 and not (tmp_path / "cam.mkv").exists()


def test_21b_rtsp_source_that_dies_for_good_keeps_the_frames_done(tmp_path, rtsp):  # noqa: F811
    """The reconnect itself is tested in test_live.py (server restart); here the server never
    comes back: after the retries the run fails, and the frames before the outage are kept."""
    rtsp.start()
    killers: list[threading.Thread] = []

    def kill_server_once(done: int, total) -> None:
        if done == 15:  # frames are flowing: the server goes away for good
            killers.append(threading.Thread(target=rtsp.stop))
            killers[-1].start()

    try:
        with pytest.raises(SourceError) as info:
            upscale(rtsp.url, tmp_path / "cam.mkv", model=media.BicubicX4(), frames=100_000,
                    live_options=fast_options(drop="none", reconnect_max=2, open_timeout=1.0),
                    device="cpu", encoder_preset="ultrafast", batch=1, progress=kill_server_once)
    finally:
        for k in killers:
            k.join(10)
    assert "\n" not in str(info.value) and killers
    got = media.decode_all(tmp_path / "cam.mkv")[0]  # strict: finalised and playable
    assert len(got) >= 15 and got[0].shape == (4 * 48, 4 * 64, 3)


# -- 24: the frame size changes mid-stream -----------------------------------------------------

def _size_change_ts(path: Path, first: int, then: int) -> Path:
    """MPEG-TS (as a broadcast splice makes): `first` 32x24 frames, then `then` 64x48 frames."""
    media.make_size_change_ts(path, first, then, (W, H))
    with av.open(str(path)) as c:  # the file really holds both sizes
        assert {(f.width, f.height) for f in c.decode(video=0)} == {(W, H), (2 * W, 2 * H)}
    return path


def test_24_frame_size_change_mid_stream_is_scaled_to_the_first_size(tmp_path, caplog):
    src = _size_change_ts(tmp_path / "spliced.ts", 10, 10)
    with caplog.at_level("WARNING", logger="streamsr"):
        stats = run_api(src, tmp_path / "out.mkv")
    got = decodable(tmp_path / "out.mkv")
    assert stats.frames == len(got) == 20  # the whole video, not the first part
    assert {f.shape for f in got} == {(4 * H, 4 * W, 3)}
    assert indices(got) == list(range(20))
    for k in (12, 19):  # a 64x48 frame scaled to 32x24, then x4: close to the 32x24 drawing
        assert psnr(got[k], bicubic_uint8(media.index_frame(k, W, H), (4 * H, 4 * W))) > 18
    warnings = [r.getMessage() for r in caplog.records if "frame size changes" in r.getMessage()]
    assert len(warnings) == 1, warnings  # once, not for each of the 10 frames
    assert "at frame 11: 32x24 -> 64x48" in warnings[0] and "to 32x24" in warnings[0]


def test_24_frame_size_change_past_max_pixels_is_refused_keeping_the_frames_done(tmp_path,
                                                                                tiny_weights):
    # --max-pixels is checked on every new size, so a stream cannot switch to a huge size later
    src = _size_change_ts(tmp_path / "spliced.ts", 24, 4)
    with pytest.raises(InputError, match="frame size changes at frame 25: 32x24 -> 64x48, larger "
                                         "than the limit of 768 pixels"):
        run_api(src, tmp_path / "api.mkv", max_pixels=W * H)
    got = decodable(tmp_path / "api.mkv")
    # every frame before the change is upscaled and finalised, in order (the frames still
    # queued when the input went bad are finished before the error is raised)
    assert indices(got) == list(range(24))
    assert {f.shape for f in got} == {(4 * H, 4 * W, 3)}
    # through the CLI: one line, exit 2, a playable partial output
    out = tmp_path / "cli.mkv"
    r = cli("upscale", src, out, "--max-pixels", W * H, "--batch", "2", *model_args(tiny_weights))
    assert_one_line(r.returncode, r.stderr, "frame size changes at frame 25: 32x24 -> 64x48",
                    "--max-pixels")
    got = decodable(out)
    assert len(got) == 24 and {f.shape for f in got} == {(4 * H, 4 * W, 3)}, len(got)
