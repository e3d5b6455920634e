"""Small synthetic test media, written with PyAV in milliseconds.

Every helper writes one file and returns its path, so tests can say exactly what the input was:
frames that carry their index as a pattern (`index_frame` / `read_index`), smooth frames for
PSNR checks, variable frame rate, audio + subtitle tracks, colour-tagged clips whose YUV values
are computed here with the textbook formulas (not by FFmpeg), 10-bit, rotated, broken files. At the end: the runs and checks the fault cases
(`test_fault_NN_*`) and the torchrun tests share (`cli`, `invoke`, `assert_one_line`, `decodable`,
`torchrun`, ...). Other test modules import these; keep them simple.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from collections.abc import Iterable, Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
from torch import nn

from streamsr.models.ops import resize_bicubic

# ---------------------------------------------------------------------------------------------
# Frame content

INDEX_GRID = (4, 4)  # 16 cells -> indices 0..65535


def index_frame(i: int, width: int = 64, height: int = 48) -> np.ndarray:
    """RGB uint8 frame whose 4x4 grid of black/white cells spells `i` in binary (row-major, MSB first)."""
    rows, cols = INDEX_GRID
    bits = [(i >> (rows * cols - 1 - k)) & 1 for k in range(rows * cols)]
    cells = np.array(bits, dtype=np.uint8).reshape(rows, cols) * 255
    ys = (np.arange(height) * rows // height).clip(0, rows - 1)
    xs = (np.arange(width) * cols // width).clip(0, cols - 1)
    img = cells[ys][:, xs]
    return np.ascontiguousarray(np.repeat(img[:, :, None], 3, axis=2))


def read_index(rgb: np.ndarray) -> int:
    """Inverse of `index_frame` at any resolution: sample each cell's centre, threshold at 128."""
    rows, cols = INDEX_GRID
    h, w = rgb.shape[:2]
    value = 0
    for r in range(rows):
        for c in range(cols):
            y0, y1 = r * h // rows, (r + 1) * h // rows
            x0, x1 = c * w // cols, (c + 1) * w // cols
            cy, cx = (y0 + y1) // 2, (x0 + x1) // 2
            ry, rx = max(1, (y1 - y0) // 4), max(1, (x1 - x0) // 4)
            patch = rgb[max(0, cy - ry):cy + ry, max(0, cx - rx):cx + rx]
            value = value * 2 + int(patch.mean() > 128)
    return value


def smooth_frame(i: int, width: int = 64, height: int = 48) -> np.ndarray:
    """RGB uint8 frame of slowly varying colour gradients that move with `i` (codec-friendly)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    t = 0.3 * i
    r = 128 + 90 * np.sin(x / 9.0 + t)
    g = 128 + 90 * np.cos(y / 7.0 - t)
    b = 128 + 60 * np.sin((x + y) / 11.0 + 2 * t)
    return np.ascontiguousarray(np.stack([r, g, b], axis=2).round().clip(0, 255).astype(np.uint8))


# ---------------------------------------------------------------------------------------------
# Writers

def write_clip(path: str | os.PathLike, frames: Iterable[np.ndarray], *, fps: int = 25,
               pts: Sequence[int] | None = None, time_base: Fraction | None = None,
               codec: str = "libx264", pix_fmt: str = "yuv420p", rotation: int = 0,
               options: dict[str, str] | None = None, audio: str | None = None,
               subtitles: bool = False, metadata: dict[str, str] | None = None,
               chapters: bool = False) -> Path:
    """Encode RGB uint8 `frames` (optionally with explicit `pts` in `time_base`) into `path`.

    `audio` names an audio encoder ("aac", "pcm_s16le", ...) for a 440 Hz tone as long as the
    video; `subtitles` adds a text track (subrip in MKV, mov_text in MP4) with one cue a second.
    """
    path = Path(path)
    frames = list(frames)
    h, w = frames[0].shape[:2]
    tb = time_base or Fraction(1, fps)
    pts = list(pts) if pts is not None else [round(k / fps / tb) for k in range(len(frames))]
    out = av.open(str(path), "w")
    vs = out.add_stream(codec, rate=fps)
    vs.width, vs.height, vs.pix_fmt = w, h, pix_fmt
    vs.time_base = tb
    vs.codec_context.time_base = tb
    vs.codec_context.options = dict(options or ({"crf": "12", "preset": "ultrafast"} if codec == "libx264" else {}))
    if rotation:
        vs.set_display_rotation(rotation)
    astream = None
    if audio:
        astream = out.add_stream(audio, rate=48000)
        astream.layout = "stereo"
        if audio.startswith("pcm_"):
            astream.format = "s16"
    sstream = None
    if subtitles:
        sstream = out.add_mux_stream("mov_text" if path.suffix.lower() in (".mp4", ".mov") else "subrip")
        sstream.time_base = Fraction(1, 1000)
        sstream.metadata["language"] = "eng"
    out.metadata.update(metadata or {})
    if chapters:
        duration = float((pts[-1] + 1) * tb) if pts else 1.0
        out.set_chapters([
            {"id": 1, "start": 0, "end": int(duration * 500), "time_base": Fraction(1, 1000),
             "metadata": {"title": "first half"}},
            {"id": 2, "start": int(duration * 500), "end": int(duration * 1000),
             "time_base": Fraction(1, 1000), "metadata": {"title": "second half"}},
        ])
    for rgb, p in zip(frames, pts, strict=True):
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        frame.pts = p
        frame.time_base = tb
        for packet in vs.encode(frame):
            out.mux(packet)
    for packet in vs.encode(None):
        out.mux(packet)
    seconds = float((pts[-1] + (pts[-1] - pts[-2] if len(pts) > 1 else 1)) * tb)
    if astream is not None:
        _write_tone(out, astream, seconds)
    if sstream is not None:
        _write_cues(out, sstream, seconds, mov_text=path.suffix.lower() in (".mp4", ".mov"))
    out.close()
    return path


def _write_tone(out, stream, seconds: float, rate: int = 48000) -> None:
    n = int(seconds * rate)
    t = np.arange(n) / rate
    tone = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    fmt = stream.codec_context.format.name
    chunk = stream.codec_context.frame_size or 1024
    for s in range(0, n, chunk):
        piece = tone[s:s + chunk]
        if fmt == "s16":
            data = (np.stack([piece, piece], 1).reshape(1, -1) * 32767).astype(np.int16)
        else:
            data = np.stack([piece, piece])
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data), format=fmt, layout="stereo")
        frame.sample_rate = rate
        frame.pts = s
        for packet in stream.encode(frame):
            out.mux(packet)
    for packet in stream.encode(None):
        out.mux(packet)


def _write_cues(out, stream, seconds: float, mov_text: bool) -> None:
    for k in range(max(1, int(seconds))):
        text = f"cue {k}".encode()
        if mov_text:  # tx3g samples start with a 16-bit length
            text = len(text).to_bytes(2, "big") + text
        packet = av.Packet(text)
        packet.stream = stream
        packet.time_base = Fraction(1, 1000)
        packet.pts = packet.dts = k * 1000
        packet.duration = 800
        out.mux(packet)


def make_index_clip(path, n: int = 12, size: tuple[int, int] = (64, 48), **kw) -> Path:
    """`n` frames of `index_frame(i)` at `size` = (width, height)."""
    return write_clip(path, (index_frame(i, *size) for i in range(n)), **kw)


def make_smooth_clip(path, n: int = 6, size: tuple[int, int] = (64, 48), **kw) -> Path:
    """`n` frames of `smooth_frame(i)` (for PSNR checks)."""
    return write_clip(path, (smooth_frame(i, *size) for i in range(n)), **kw)


VFR_DURATIONS_MS = (40, 40, 80, 20, 120, 40, 33, 67, 100, 40)


def make_vfr_clip(path, durations_ms: Sequence[int] = VFR_DURATIONS_MS, size=(64, 48)) -> Path:
    """Variable frame rate: frame k lasts `durations_ms[k]` (time base 1/1000); frames show their index."""
    pts = np.concatenate([[0], np.cumsum(durations_ms)[:-1]]).astype(int).tolist()
    return write_clip(path, (index_frame(i, *size) for i in range(len(pts))), pts=pts,
                      time_base=Fraction(1, 1000))


def make_av_clip(path, n: int = 25, size=(64, 48), audio: str = "aac", subtitles: bool = True,
                 **kw) -> Path:
    """Index frames + an `audio` tone track + a text subtitle track, with a title and chapters."""
    return write_clip(path, (index_frame(i, *size) for i in range(n)), audio=audio,
                      subtitles=subtitles, metadata={"title": "streamsr test", "comment": "keep me"},
                      chapters=True, **kw)


MATRIX_COEFFS = {"bt709": (0.2126, 0.0722), "bt470bg": (0.299, 0.114), "smpte170m": (0.299, 0.114)}
_SPC = {"bt709": 1, "bt470bg": 5, "smpte170m": 6}


def rgb_to_yuv(rgb: Sequence[int], matrix: str = "bt709", full_range: bool = False) -> tuple[int, int, int]:
    """Textbook R'G'B' -> Y'CbCr (8 bit) for `matrix`, limited (16-235/240) or full range."""
    kr, kb = MATRIX_COEFFS[matrix]
    r, g, b = (np.asarray(rgb, dtype=np.float64) / 255.0)
    y = kr * r + (1 - kr - kb) * g + kb * b
    cb = (b - y) / (2 * (1 - kb))
    cr = (r - y) / (2 * (1 - kr))
    if full_range:
        return round(255 * y), round(128 + 255 * cb), round(128 + 255 * cr)
    return round(16 + 219 * y), round(128 + 224 * cb), round(128 + 224 * cr)


def _write_lossless(path, size: tuple[int, int], pix_fmt: str, frames: Iterable[av.VideoFrame],
                    tags: dict[str, int] | None = None) -> Path:
    """Encode ready-made Y'CbCr `frames` losslessly (libx264, qp 0), codec tags set as given."""
    w, h = size
    out = av.open(str(path), "w")
    vs = out.add_stream("libx264", rate=25)
    vs.width, vs.height, vs.pix_fmt = w, h, pix_fmt
    vs.codec_context.options = {"qp": "0", "preset": "ultrafast"}
    for key, value in (tags or {}).items():
        setattr(vs.codec_context, key, value)
    for i, frame in enumerate(frames):
        frame.pts = i
        for packet in vs.encode(frame):
            out.mux(packet)
    for packet in vs.encode(None):
        out.mux(packet)
    out.close()
    return Path(path)


def make_color_clip(path, rgb=(200, 100, 50), matrix: str = "bt709", full_range: bool = False,
                    n: int = 4, size=(64, 48), tag: bool = True) -> Path:
    """A flat `rgb` colour stored as Y'CbCr computed here for `matrix`/range, tagged (or not)."""
    w, h = size
    yv, uv, vv = rgb_to_yuv(rgb, matrix, full_range)
    tags = {"colorspace": _SPC[matrix], "color_primaries": 1 if matrix == "bt709" else 6,
            "color_trc": 1 if matrix == "bt709" else 6, "color_range": 2 if full_range else 1}

    def frames():
        for _ in range(n):
            frame = av.VideoFrame(w, h, "yuv420p")
            for plane, value in zip(frame.planes, (yv, uv, vv), strict=True):
                plane.update(bytes([value]) * plane.buffer_size)
            if tag:
                frame.colorspace = _SPC[matrix]
                frame.color_range = 2 if full_range else 1
            yield frame

    return _write_lossless(path, size, "yuv420p", frames(), tags if tag else None)


def make_10bit_clip(path, n: int = 6, size=(64, 48), codec: str = "libx264") -> Path:
    """Smooth frames encoded as yuv420p10le (High 10 with libx264)."""
    return write_clip(path, (smooth_frame(i, *size) for i in range(n)), codec=codec,
                      pix_fmt="yuv420p10le",
                      options={"crf": "12", "preset": "ultrafast"} if codec == "libx264" else {})


def gradient_luma10(i: int, width: int = 64, height: int = 48) -> np.ndarray:
    """10-bit luma codes of a smooth diagonal ramp (steps of 3-5 codes: under one 8-bit step)."""
    y, x = np.mgrid[0:height, 0:width]
    return (200 + 5 * x + 3 * y + 2 * i).astype(np.uint16)


def make_10bit_gradient_clip(path, n: int = 2, size=(64, 48)) -> Path:
    """Grey frames (neutral chroma) whose yuv420p10le luma is `gradient_luma10(i)`, stored
    losslessly (libx264, qp 0): values an 8-bit file cannot hold."""
    w, h = size
    chroma = np.full((h // 2, w), 512, np.uint16)  # Cb then Cr rows, each h/2 x w/2
    frames = (av.VideoFrame.from_ndarray(np.concatenate([gradient_luma10(i, w, h), chroma]),
                                         format="yuv420p10le") for i in range(n))
    return _write_lossless(path, size, "yuv420p10le", frames)


def make_rotated_clip(path, rotation: int = 90, n: int = 5, size=(64, 48)) -> Path:
    """Index frames with a display matrix that rotates them by `rotation` degrees (counter-clockwise)."""
    return write_clip(path, (index_frame(i, *size) for i in range(n)), rotation=rotation)


def make_audio_only(path, seconds: float = 1.0) -> Path:
    """An audio file with no video stream (AAC in .m4a)."""
    out = av.open(str(path), "w")
    stream = out.add_stream("aac", rate=48000)
    stream.layout = "stereo"
    _write_tone(out, stream, seconds)
    out.close()
    return Path(path)


def make_truncated(path, n: int = 30, keep: float = 0.6, size=(64, 48)) -> Path:
    """An MKV of `n` index frames cut after `keep` of its bytes (a download that stopped)."""
    path = Path(path)
    write_clip(path, (index_frame(i, *size) for i in range(n)), options={"crf": "12", "preset": "ultrafast", "g": "5"})
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])
    return path


def make_corrupt_packets(path, n: int = 12, bad: Sequence[int] = (5,), size=(64, 48)) -> Path:
    """An MKV of `n` intra-only index frames whose packets at indices `bad` are replaced by garbage."""
    path = Path(path)
    out = av.open(str(path), "w")
    vs = out.add_stream("mjpeg", rate=25)
    vs.width, vs.height, vs.pix_fmt = size[0], size[1], "yuvj420p"
    rng = np.random.default_rng(0)
    k = 0
    for i in range(n):
        frame = av.VideoFrame.from_ndarray(index_frame(i, *size), format="rgb24")
        frame.pts = i
        for packet in vs.encode(frame):
            if k in bad:
                junk = av.Packet(rng.integers(0, 256, packet.size, dtype=np.uint8).tobytes())
                junk.stream, junk.pts, junk.dts, junk.time_base = vs, packet.pts, packet.dts, packet.time_base
                packet = junk
            out.mux(packet)
            k += 1
    for packet in vs.encode(None):
        out.mux(packet)
    out.close()
    return path


def write_images(folder, n: int = 3, size=(64, 48), ext: str = ".png") -> list[Path]:
    """`n` index-frame images named img_000.png ... in `folder` (created)."""
    import cv2

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"img_{i:03d}{ext}"
        cv2.imwrite(str(p), cv2.cvtColor(index_frame(i, *size), cv2.COLOR_RGB2BGR))
        paths.append(p)
    return paths


# Several video streams: a cover picture or thumbnail before the video (issue 16)

def _mp4_atoms(data: bytes, start: int, end: int) -> list[tuple[bytes, int, int]]:
    out = []
    while start < end:
        size, kind = int.from_bytes(data[start:start + 4], "big"), data[start + 4:start + 8]
        out.append((kind, start, size))
        start += size
    return out


def cover_picture(out: av.container.OutputContainer, size: tuple[int, int] = (32, 32)):
    """An attached picture (cover art) stream holding one grey JPEG."""
    cover = out.add_stream("mjpeg", rate=1)
    cover.width, cover.height, cover.pix_fmt = *size, "yuvj420p"
    cover.disposition = av.stream.Disposition.attached_pic
    pic = np.full((size[1], size[0], 3), 128, np.uint8)
    frame = av.VideoFrame.from_ndarray(pic, format="rgb24").reformat(format="yuvj420p")
    frame.pts = 0
    return cover, [*cover.encode(frame), *cover.encode(None)]


def make_cover_first_mp4(path: Path, n: int = 10) -> Path:
    """An MP4 whose stream #0 is a 32x32 cover picture and #1 the 64x48 video, as files from
    taggers that put the tags (moov/udta, which holds the cover) before the tracks."""
    out = av.open(str(path), "w")
    cover, packets = cover_picture(out)
    vs = out.add_stream("libx264", rate=25, options={"preset": "ultrafast"})
    vs.width, vs.height, vs.pix_fmt = 64, 48, "yuv420p"
    for p in packets:
        out.mux(p)
    for i in range(n):
        f = av.VideoFrame.from_ndarray(index_frame(i), format="rgb24")
        f.pts = i
        for p in vs.encode(f):
            out.mux(p)
    for p in vs.encode(None):
        out.mux(p)
    out.close()
    # FFmpeg writes the tags after the tracks; move them first (moov sits after mdat, so no
    # chunk offset changes)
    data = path.read_bytes()
    (_, mo, ms), = [a for a in _mp4_atoms(data, 0, len(data)) if a[0] == b"moov"]
    kids = sorted(_mp4_atoms(data, mo + 8, mo + ms), key=lambda a: a[0] != b"udta")
    path.write_bytes(data[:mo + 8] + b"".join(data[o:o + s] for _, o, s in kids) + data[mo + ms:])
    with av.open(str(path)) as c:  # the fixture is what it claims to be
        s0, s1 = c.streams.video[0], c.streams.video[1]
        assert s0.disposition & av.stream.Disposition.attached_pic and s0.codec_context.width == 32
        assert s1.codec_context.width == 64 and s1.frames == n
    return path


def make_size_change_ts(path, first: int, then: int, size: tuple[int, int] = (32, 24)) -> Path:
    """MPEG-TS as a broadcast splice makes: `first` frames of `size`, then `then` frames of twice
    that, each showing its index; the second part comes from a second encoder, as from another
    source."""
    w, h = size
    with av.open(str(path), "w", format="mpegts") as out:
        vs = out.add_stream("libx264", rate=25)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        vs.codec_context.options = {"preset": "ultrafast", "crf": "0"}
        second = av.CodecContext.create("libx264", "w")
        second.width, second.height, second.pix_fmt = 2 * w, 2 * h, "yuv420p"
        second.time_base = Fraction(1, 25)
        second.options = {"preset": "ultrafast", "crf": "0"}
        pts = 0
        for ctx, (fw, fh), n in ((vs.codec_context, (w, h), first), (second, (2 * w, 2 * h), then)):
            for i in range(pts, pts + n):
                frame = av.VideoFrame.from_ndarray(index_frame(i, fw, fh), format="rgb24")
                frame.pts = i
                for packet in ctx.encode(frame):
                    packet.stream = vs
                    out.mux(packet)
            pts += n
            for packet in ctx.encode(None):
                packet.stream = vs
                out.mux(packet)
    return Path(path)


def make_thumbnail_first_mkv(path: Path, n: int = 10) -> Path:
    """An MKV whose first video track is a one-frame 32x32 thumbnail (no dispositions at all)
    and whose second is the 64x48 video."""
    out = av.open(str(path), "w")
    thumb = out.add_stream("libx264", rate=25, options={"preset": "ultrafast"})
    thumb.width, thumb.height, thumb.pix_fmt = 32, 32, "yuv420p"
    vs = out.add_stream("libx264", rate=25, options={"preset": "ultrafast"})
    vs.width, vs.height, vs.pix_fmt = 64, 48, "yuv420p"
    f = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 128, np.uint8), format="rgb24")
    f.pts = 0
    for p in [*thumb.encode(f), *thumb.encode(None)]:
        out.mux(p)
    for i in range(n):
        f = av.VideoFrame.from_ndarray(index_frame(i), format="rgb24")
        f.pts = i
        for p in vs.encode(f):
            out.mux(p)
    for p in vs.encode(None):
        out.mux(p)
    out.close()
    return path


# ---------------------------------------------------------------------------------------------
# Reading back

def decode_all(path) -> tuple[list[np.ndarray], list[int], Fraction]:
    """Every frame of the first video stream as RGB uint8 (tags honoured), its pts and time base."""
    with av.open(str(path)) as c:
        vs = c.streams.video[0]
        frames, pts = [], []
        for f in c.decode(vs):
            frames.append(f.to_ndarray(format="rgb24"))
            pts.append(f.pts)
        return frames, pts, vs.time_base


def luma_planes(path) -> list[np.ndarray]:
    """The Y plane of every frame as stored (uint16 codes for 10-bit formats, uint8 for 8-bit)."""
    planes = []
    with av.open(str(path)) as c:
        for f in c.decode(video=0):
            p = f.planes[0]
            dtype = np.uint16 if f.format.components[0].bits > 8 else np.uint8
            rows = np.frombuffer(bytes(p), dtype).reshape(p.height, -1)
            planes.append(rows[:, :p.width].copy())
    return planes


def frame_times(path) -> list[float]:
    """Presentation times in seconds of every frame of the first video stream."""
    _, pts, tb = decode_all(path)
    return [float(p * tb) for p in pts]


def x264_options(path) -> dict[str, str]:
    """The settings libx264 wrote into its SEI ("x264 - core ... options: crf=18.0 ..."), parsed."""
    data = Path(path).read_bytes()
    start = data.find(b"options: ", data.find(b"x264 - core"))
    assert start >= 0, f"{path}: no x264 settings SEI"
    text = data[start + len(b"options: "):data.index(b"\0", start)].decode("ascii")
    return dict(item.split("=", 1) for item in text.split() if "=" in item)


def matroska_doctype(path) -> bool:
    """True when the EBML header names the "matroska" doctype (a WebM file says "webm")."""
    head = Path(path).read_bytes()[:64]
    return head.startswith(b"\x1a\x45\xdf\xa3") and b"\x42\x82\x88matroska" in head


def packets(path, kind: str = "audio") -> list[bytes]:
    """Payloads of every packet of the first stream of `kind` ("audio", "subtitle")."""
    with av.open(str(path)) as c:
        streams = c.streams.audio if kind == "audio" else c.streams.subtitles
        return [bytes(p) for p in c.demux(streams[0]) if p.size]


# ---------------------------------------------------------------------------------------------
# A stand-in model

class BicubicX4(nn.Module):
    """x4 bicubic upscaler with the model's interface (float NCHW in [0,1] -> 4x), for pipeline tests."""

    scale = 4

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1), requires_grad=False)  # lets engines find a device/dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        return resize_bicubic(x, (4 * h, 4 * w)).clamp(0, 1) + self.anchor * 0


# ---------------------------------------------------------------------------------------------
# Runs and checks shared by the fault cases (test_fault_NN_*, docs/faults.md) and the torchrun tests

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{REPO}{os.pathsep}{TESTS}"}
CPU_FAST = dict(encoder_preset="ultrafast", device="cpu", batch=2)
W, H = 32, 24  # the fault cases' clips are tiny: 32x24 -> 128x96


def run_api(src, dst, **kw):
    """The Python API with the bicubic stand-in (fast, and its output is predictable)."""
    from streamsr.api import upscale

    return upscale(src, dst, **{"model": BicubicX4(), **CPU_FAST, **kw})


def cli(*args, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    """`python -m streamsr ARGS` in a real subprocess (exit codes, tracebacks, signals)."""
    return subprocess.run([sys.executable, "-m", "streamsr", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO, env=ENV, **kw)


def invoke(*args):
    """`streamsr ARGS` in-process; anything but a clean exit (a crash) fails the test here."""
    from click.testing import CliRunner

    from streamsr.cli import main

    result = CliRunner().invoke(main, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"crashed: {result.exception!r}\n{result.stderr}") from result.exception
    return result


def model_args(weights) -> list:
    return ["--model", weights, "--device", "cpu", "--encoder-preset", "ultrafast", "-q"]


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
    return [read_index(f) for f in frames]


def file_indices(path) -> list[int]:
    """The index of every frame of `path`, in order (a strict decode)."""
    return indices(decode_all(path)[0])


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255 ** 2 / mse)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# `python -m streamsr` plus one more model name, "bicubic": the stand-in x4 above, whose output
# still shows each frame's index (a random tiny model's output does not).
TORCHRUN_ENTRY = f"""
import sys
sys.path.insert(0, {str(TESTS)!r})
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
    entry.write_text(TORCHRUN_ENTRY)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO)}
    env.pop("OMP_NUM_THREADS", None)  # torchrun sets 1 per process, as it does for users
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(entry), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)
