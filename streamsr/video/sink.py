"""Encode x4 frames and mux them with everything else the input had.

The video is encoded with PyAV (libx264 CRF 18, preset medium, yuv420p, MP4 with faststart by
default; MKV when the name says so; any FFmpeg video encoder on request) at the input's own
timestamps, so variable frame rate survives. RGB -> Y'CbCr uses the same matrix and range the
source decoded with and the output is tagged with them; rotation is kept as a display matrix.
Audio and subtitle packets are copied from the input without re-encoding (audio is re-encoded
only when the output container cannot hold its codec), interleaved by time as the video is
written, so memory stays flat. Chapters and metadata tags are copied. `close()` always finalises
the container, also after an error, so a partial output is still playable.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from streamsr.errors import ConfigError, OutputError
from streamsr.inference.pack import Yuv420
from streamsr.video.color import (
    MATRICES,
    PRIMARIES,
    RANGES,
    TRANSFERS,
    effective_matrix,
    effective_range,
    sws_matrix,
    sws_range,
)
from streamsr.video.ffmpeg import FROM_RGB_FLAGS, ffmpeg_errors, ffmpeg_reason
from streamsr.video.output_paths import (
    check_output_name,
    check_overwrite,
    ffmpeg_name,
    local_file,
    output_file,
    short,
)
from streamsr.video.source import IMAGE_EXTS, VideoInfo
from streamsr.video.space import SpaceGuard

log = logging.getLogger(__name__)

_CRF_OPTION = {"libx264": "crf", "libx264rgb": "crf", "libx265": "crf", "libsvtav1": "crf",
               "libaom-av1": "crf", "libvpx-vp9": "crf", "libvpx": "crf", "librav1e": "qp",
               "h264_nvenc": "cq", "hevc_nvenc": "cq", "av1_nvenc": "cq",
               "h264_qsv": "global_quality", "hevc_qsv": "global_quality"}
_PRESET_ENCODERS = {"libx264", "libx264rgb", "libx265", "h264_nvenc", "hevc_nvenc", "av1_nvenc",
                    "libsvtav1", "h264_qsv", "hevc_qsv"}
_FASTSTART_FORMATS = {"mp4", "mov", "ipod", "ismv"}
_NOFILE = 0x0001  # AVFMT_NOFILE: the muxer opens its files itself
_HVC1_FORMATS = {"mp4", "mov"}  # HEVC tagged hvc1 (parameter sets in the header), as Apple wants
_DROP_META = {"major_brand", "minor_version", "compatible_brands", "encoder", "duration",
              "number_of_frames", "number_of_bytes", "bps", "_statistics_tags",
              "_statistics_writing_app", "_statistics_writing_date_utc"}
_DEFAULT_LAYOUTS = {1: "mono", 2: "stereo", 3: "2.1", 4: "quad", 5: "5.0", 6: "5.1", 7: "6.1", 8: "7.1"}
_TEXT_SUBS = {"subrip", "srt", "mov_text", "ass", "ssa", "webvtt", "text"}


@dataclass
class EncodeOptions:
    """How the x4 video is encoded (`options` are passed to the FFmpeg encoder as they are)."""

    codec: str = "libx264"
    crf: int | None = 18
    preset: str | None = "medium"
    pix_fmt: str = "yuv420p"
    bitrate: str | None = None  # "8M", "2500k", "4000000": constant-bitrate-ish mode, no CRF
    options: dict[str, str] = field(default_factory=dict)


MAX_BITRATE = 10**12  # bits/s: x264's limit is near 2^31 kbit/s; svt-av1's is 100 Mbit/s


def parse_bitrate(text: str) -> int:
    """'8M' / '2500k' / '4000000' -> bits per second."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgG]?)\s*(?:bps|b)?\s*", str(text))
    if not m:
        raise ConfigError(f"bad bitrate {text!r}: use e.g. 8M, 2500k or 4000000")
    scale = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}[m.group(2).lower()]
    value = float(m.group(1)) * scale
    if not value >= 1:
        raise ConfigError(f"bitrate must be positive, got {text!r}")
    if value > MAX_BITRATE:
        raise ConfigError(f"bitrate {text!r} is more than any encoder takes (at most "
                          f"{MAX_BITRATE // 10**9}G)")
    return int(value)


def check_encoder(encode: EncodeOptions) -> av.codec.Codec:
    """The FFmpeg video encoder named by `encode.codec`, or a ConfigError that says why not."""
    try:
        codec = av.codec.Codec(encode.codec, "w")
    except av.codec.codec.UnknownCodecError:
        raise ConfigError(f"unknown encoder {encode.codec!r} (try libx264, libx265, libsvtav1, "
                          f"h264_nvenc, ...)") from None
    if codec.type != "video":
        raise ConfigError(f"{encode.codec!r} is a {codec.type} encoder, not a video encoder")
    try:
        av.VideoFormat(encode.pix_fmt)
    except (ValueError, TypeError):
        raise ConfigError(f"unknown pixel format {encode.pix_fmt!r} (e.g. yuv420p, "
                          f"yuv420p10le, yuv444p)") from None
    formats = [f.name for f in (codec.video_formats or [])]
    if formats and encode.pix_fmt not in formats:
        raise ConfigError(f"encoder {encode.codec} cannot write pixel format {encode.pix_fmt!r} "
                          f"(it can: {', '.join(formats[:12])})")
    if encode.crf is not None and not 0 <= encode.crf <= 63:
        raise ConfigError(f"crf must be between 0 and 63, got {encode.crf}")
    if encode.bitrate is not None:
        parse_bitrate(encode.bitrate)
    _check_opens(encode)
    return codec


# Encoder settings that opened in this process: the pipeline checks its encoder, then the sink
# does again (and every part or file of a job), and each trial open of NVENC costs a CUDA
# context. Failures are not kept.
_OPENED: set[tuple] = set()


def _check_opens(encode: EncodeOptions) -> None:
    """Open the encoder once on a small frame (CIF, a size nearly every encoder takes; 1080p for
    those that take only broadcast sizes, such as DNxHD) with every setting, before any work: a
    bitrate or pixel format it refuses, a bad preset or option value, and NVENC without an
    NVIDIA GPU fail here in one line. An `--encoder-opt` key the encoder does not know is left
    unused by FFmpeg, which would otherwise ignore it silently: that is refused too."""
    opts = encoder_options(encode)
    key = (encode.codec, encode.pix_fmt, encode.bitrate, tuple(sorted(opts.items())))
    if key in _OPENED:
        return
    nvenc = encode.codec.endswith("_nvenc")
    try:
        with ffmpeg_errors() as logs:
            try:
                unused = _trial_open(encode, opts, 352, 288)
            except av.error.FFmpegError:
                if nvenc:
                    raise
                unused = _trial_open(encode, opts, 1920, 1080)
    except av.error.FFmpegError as exc:
        if nvenc:
            raise ConfigError(f"encoder {encode.codec} cannot be opened here: "
                              f"{ffmpeg_reason(exc, logs)} (NVENC needs an NVIDIA GPU and its "
                              f"driver; --codec libx264 encodes on the CPU)") from None
        raise ConfigError(f"encoder {encode.codec} refuses these settings: "
                          f"{ffmpeg_reason(exc, logs)} (check --bitrate, --pix-fmt, "
                          f"--encoder-preset and --encoder-opt)") from None
    unknown = sorted(unused & set(encode.options))
    if unknown:
        raise ConfigError(f"encoder {encode.codec} has no option {unknown[0]!r} (from "
                          f"--encoder-opt; `ffmpeg -h encoder={encode.codec}` lists its options)")
    try:  # the sink hands the encoder RGB converted to its pixel format: that must work too
        av.VideoFrame(16, 16, "rgb24").reformat(format=encode.pix_fmt)
    except (ValueError, av.error.FFmpegError) as exc:
        raise ConfigError(f"cannot convert frames to pixel format {encode.pix_fmt!r} for "
                          f"{encode.codec}: {str(exc).splitlines()[0][:200]}") from None
    _OPENED.add(key)


def _trial_open(encode: EncodeOptions, options: dict[str, str], width: int,
                height: int) -> set[str]:
    """Open the encoder on `width` x `height` frames; the names of the options it left unused.
    The encoder is freed on return (GPUs allow only a few sessions at once)."""
    cc = av.codec.CodecContext.create(encode.codec, "w")
    cc.width, cc.height, cc.pix_fmt = width, height, encode.pix_fmt
    cc.time_base = Fraction(1, 25)
    if encode.bitrate:
        cc.bit_rate = parse_bitrate(encode.bitrate)
    cc.options = dict(options)
    cc.open()
    return set(cc.options or {})


def encoder_options(encode: EncodeOptions) -> dict[str, str]:
    """FFmpeg options for the encoder: CRF/preset mapped to its own option names, then user options."""
    opts: dict[str, str] = {}
    name = encode.codec
    if encode.crf is not None and encode.bitrate is None:
        key = _CRF_OPTION.get(name)
        if key:
            opts[key] = str(encode.crf)
            if name.startswith("libvpx"):
                opts["b"] = "0"  # constant quality mode
        else:
            log.info("encoder %s has no CRF option; using its default rate control", name)
    if encode.preset and name in _PRESET_ENCODERS:
        if name == "libsvtav1" and not encode.preset.isdigit():
            log.info("libsvtav1 presets are numbers (0-13); keeping its default")
        else:
            opts["preset"] = encode.preset
    opts.update({str(k): str(v) for k, v in encode.options.items()})
    return opts


def _clean_meta(meta: dict) -> dict[str, str]:
    return {k: v for k, v in meta.items() if k.lower() not in _DROP_META and not k.startswith("_STAT")}


def _read_meta(obj) -> dict[str, str]:
    """Metadata tags worth copying; undecodable (non-UTF-8) tags are skipped, not fatal."""
    try:
        return _clean_meta(dict(obj.metadata))
    except (UnicodeDecodeError, ValueError) as exc:
        log.warning("not copying metadata tags that cannot be decoded: %s", exc)
        return {}


def _output_error(path: Path, exc: BaseException) -> OutputError:
    code = getattr(exc, "errno", None)
    why = {errno.ENOSPC: "disk full", errno.EFBIG: "file too large / disk quota",
           errno.EACCES: "permission denied", errno.EROFS: "read-only file system",
           errno.EDQUOT: "disk quota exceeded"}.get(code)
    text = why or (getattr(exc, "strerror", None) or str(exc)).splitlines()[0][:200]
    if code in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT) and path.suffix.lower() in (".mp4", ".mov", ".m4v"):
        # the MP4 index (moov) is written last: without room for it the partial file cannot play
        text += " (an MP4/MOV cut short has no index and will not play; write .mkv to keep " \
                "the frames done so far when space may run out)"
    return OutputError(f"cannot write {path}: {text}")


def check_output_path(path: Path, overwrite: bool) -> None:
    """Refuse, without overwrite, an existing output and any existing file its container would
    write beside it (HLS segments, DASH chunks: `output_paths.written_files`); refuse names the
    file system cannot hold and paths that cannot be created."""
    check_output_name(path)
    check_overwrite(path, overwrite)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.exists():
        raise OutputError(f"cannot write {path}: folder {parent} does not exist")
    if not parent.is_dir():
        raise OutputError(f"cannot write {path}: {parent} is not a folder")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"cannot write {path}: folder {parent} is not writable")


def tag_hevc(stream, container: str) -> None:
    """Tag an HEVC stream in MP4/MOV `hvc1` (FFmpeg's default is `hev1`, which Apple's players
    refuse to play); the encoder keeps its parameter sets in the header there, as hvc1 wants."""
    if container in _HVC1_FORMATS and stream.codec_context.codec.id == _HEVC_ID:
        stream.codec_context.codec_tag = "hvc1"


_HEVC_ID = av.codec.Codec("hevc", "r").id


def repair_timestamps(pts: int | None, dts: int, last_dts: int | None) -> tuple[int | None, int]:
    """A packet's (pts, dts) made acceptable to the muxer, which refuses the whole write otherwise.

    Encoders are trusted to give pts >= dts with dts strictly increasing, but libx265 was seen
    (about once in a hundred short encodes on a loaded machine) handing out a first packet with
    dts after pts, even an uninitialised one: MKV and MP4 muxers answer EINVAL and the output
    would be lost. The repair is the one FFmpeg's command line applies: a packet with dts > pts
    gets the middle value of pts, dts and last dts + 1 as both; a dts that does not increase is
    moved to last dts + 1 (pts no earlier). `TimestampRepair` handles a broken first packet.
    """
    if pts is not None and dts > pts:
        if last_dts is None:
            dts = pts
        else:
            dts = pts = sorted((pts, dts, last_dts + 1))[1]
    if last_dts is not None and dts <= last_dts:
        dts = last_dts + 1
        if pts is not None and pts < dts:
            pts = dts
    return pts, dts


class TimestampRepair:
    """`repair_timestamps` over a stream of packets, holding back a broken first packet.

    A first packet with dts > pts has no earlier dts to repair against; setting its dts to its
    pts would push every later dts of a B-frame stream (whose real dts start below 0) forward and
    raise B-frames' pts onto their neighbours'. So it waits for the next packet and takes a dts
    just before that one's (never after its own pts). `push` and `flush` return the
    (item, pts, dts) triples to mux now, in order.
    """

    def __init__(self) -> None:
        self.last: int | None = None
        self.held: tuple | None = None
        self.repaired = 0

    def push(self, item, pts: int | None, dts: int | None) -> list[tuple]:
        out = []
        if self.held is not None:
            held, hpts, hdts = self.held
            self.held = None
            if dts is not None and dts - 1 < hdts:
                hdts = min(hpts, dts - 1)
            out += self._emit(held, hpts, hdts)
        if self.last is None and dts is not None and pts is not None and dts > pts:
            self.held = (item, pts, dts)
            self.repaired += 1
            return out
        return out + self._emit(item, pts, dts)

    def flush(self) -> list[tuple]:
        if self.held is None:
            return []
        held, self.held = self.held, None
        return self._emit(*held)

    def _emit(self, item, pts: int | None, dts: int | None) -> list[tuple]:
        if dts is None:
            return [(item, pts, dts)]
        fixed = repair_timestamps(pts, dts, self.last)
        if fixed != (pts, dts):
            self.repaired += 1
        self.last = fixed[1]
        return [(item, *fixed)]


class Sink:
    """Where x4 frames go; a context manager whose close() finalises the output."""

    frames_written: int = 0
    path: Path

    def write(self, rgb: np.ndarray, pts: int | None, time_base: Fraction, name: str | None = None,
              duration: int | None = None) -> None:
        """One frame at `pts`, shown for `duration` (both in `time_base` units; None: unknown)."""
        raise NotImplementedError

    def close(self, trim: bool = False) -> None:
        pass

    @property
    def bytes_written(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0

    def discard(self) -> None:
        """Remove the output of a run that failed before its first frame: it holds nothing
        (an MP4 without a video track does not even open). Call after `close`."""

    def __enter__(self) -> Sink:
        return self

    def __exit__(self, *exc) -> None:
        self.close(trim=exc[0] is not None)


class _CopiedStreams:
    """Audio/subtitle packets of the input, muxed into the output in time order with the video."""

    def __init__(self, out: av.container.OutputContainer, uri: str,
                 start: float | None, end: float | None) -> None:
        self.out = out
        self.start = start
        self.end = end
        self.map: dict[int, tuple] = {}  # input stream index -> (output stream, how)
        self.container = None
        self.pending: av.Packet | None = None
        self.last_video_time = -math.inf
        self.audio_end: float | None = None  # end of the last audio packet muxed (input time)
        self.chapters: list = []
        self.metadata: dict[str, str] = {}
        self.packets: Iterator[av.Packet] = iter(())
        self.guard: SpaceGuard | None = None  # counts what is muxed (set by the sink)
        try:
            self.container = av.open(uri)
        except (av.error.FFmpegError, UnicodeDecodeError) as exc:  # damaged input: video only
            log.warning("not copying audio/subtitles from %s: %s", uri, exc)
            return
        try:
            self.chapters = self.container.chapters()
        except (av.error.FFmpegError, AttributeError):
            pass
        self.metadata = _read_meta(self.container)
        supported = out.supported_codecs
        for s in self.container.streams:
            if s.type not in ("audio", "subtitle"):
                continue
            name = s.codec_context.name if s.codec_context else None
            if name is None:
                continue
            if s.type == "audio":
                self._add_audio(s, name, supported)
            else:
                self._add_subtitle(s, name, supported)
        self.packets = self._demux() if self.map else iter(())

    def _add_audio(self, s, name: str, supported: set[str]) -> None:
        if name in supported and not _refused(self.out.format.name, name):
            o = self.out.add_stream_from_template(s)
            self.map[s.index] = (o, "copy", None)
            log.info("copying audio stream #%d (%s)", s.index, name)
            return
        target = self.out.default_audio_codec
        if not target or target == "none":
            log.warning("dropping audio stream #%d: %s cannot hold %s", s.index, self.out.format.name, name)
            return
        o = self.out.add_stream(target, rate=s.codec_context.sample_rate or 48000)
        channels = getattr(s.codec_context.layout, "nb_channels", 2) or 2
        o.layout = _DEFAULT_LAYOUTS.get(channels, "stereo")  # "2 channels" (unordered) -> stereo
        formats = av.codec.Codec(target, "w").audio_formats or []
        if formats:
            o.format = formats[0].name
        o.time_base = Fraction(1, o.codec_context.sample_rate)
        log.warning("re-encoding audio stream #%d from %s to %s: the %s container cannot hold %s",
                    s.index, name, target, self.out.format.name, name)
        self.map[s.index] = (o, "encode", None)
        o.metadata.update(_read_meta(s))

    def _add_subtitle(self, s, name: str, supported: set[str]) -> None:
        if name in supported:
            o = self.out.add_stream_from_template(s)
            self.map[s.index] = (o, "copy", None)
            log.info("copying subtitle stream #%d (%s)", s.index, name)
            return
        if name in _TEXT_SUBS:
            for target in ("mov_text", "subrip", "ass", "webvtt"):
                if target in supported:
                    o = self.out.add_mux_stream(target)
                    o.time_base = s.time_base
                    o.metadata.update(_read_meta(s))
                    self.map[s.index] = (o, "text", (name, target))
                    log.warning("converting subtitle stream #%d from %s to %s for %s (text only)",
                                s.index, name, target, self.out.format.name)
                    return
        log.warning("dropping subtitle stream #%d: %s cannot hold %s", s.index, self.out.format.name, name)

    def _demux(self) -> Iterator[av.Packet]:
        streams = [self.container.streams[i] for i in self.map]
        if self.start is not None:
            try:
                self.container.seek(int(max(0.0, self.start - 1.0) * 1_000_000), backward=True)
            except av.error.FFmpegError:
                pass
        try:
            for packet in self.container.demux(*streams):
                if packet.size == 0 or packet.pts is None and packet.dts is None:
                    continue
                yield packet
        except av.error.FFmpegError as exc:
            log.warning("stopped copying audio/subtitles early: %s", exc)

    @staticmethod
    def _time(packet: av.Packet) -> float:
        ts = packet.pts if packet.pts is not None else packet.dts
        return float(ts * packet.time_base)

    def pump(self, until: float) -> None:
        """Mux every copied packet that starts before `until` seconds (input time)."""
        if not self.map:
            return
        while True:
            if self.pending is None:
                self.pending = next(self.packets, None)
                if self.pending is None:
                    return
            t = self._time(self.pending)
            if t > until:
                return
            packet, self.pending = self.pending, None
            if self.start is not None and t < self.start:
                continue
            if self.end is not None and t >= self.end:
                continue
            self._mux(packet)

    def _mux(self, packet: av.Packet) -> None:
        out_stream, how, extra = self.map[packet.stream.index]
        if packet.stream.type == "audio":
            end = self._time(packet) + float((packet.duration or 0) * packet.time_base)
            self.audio_end = end if self.audio_end is None else max(self.audio_end, end)
        shift = round(self.start / packet.time_base) if self.start else 0
        if how == "encode":
            for frame in packet.decode():
                if frame.pts is not None:
                    frame.pts -= shift
                for p in out_stream.encode(frame):
                    self._out(p)
            return
        if how == "text":
            text = _subtitle_text(bytes(packet), extra[0])
            payload = (len(text).to_bytes(2, "big") + text) if extra[1] == "mov_text" else text
            new = av.Packet(payload)
            new.pts, new.dts, new.duration = packet.pts, packet.dts, packet.duration
            new.time_base = packet.time_base
            packet = new
        if shift:
            if packet.pts is not None:
                packet.pts -= shift
            if packet.dts is not None:
                packet.dts -= shift
        packet.stream = out_stream
        self._out(packet)

    def _out(self, packet: av.Packet) -> None:
        if self.guard is not None:
            self.guard.muxed(packet.size, video=False)
        self.out.mux(packet)

    def finish(self, until: float, video_end: float | None = None) -> None:
        """Mux what is left (up to `until`) and flush re-encoders. Audio that goes on well past
        `video_end` (input time) is kept whole, and said once: players hold the last picture."""
        self.pump(until)
        if (video_end is not None and self.audio_end is not None
                and self.audio_end > video_end + 0.5):
            log.info("the audio runs %.2f s past the last video frame (%.2f s): kept whole; "
                     "players show the last picture until it ends", self.audio_end - video_end,
                     video_end - (self.start or 0.0))
        for out_stream, how, _ in self.map.values():
            if how == "encode":
                for p in out_stream.encode(None):
                    self._out(p)

    def close(self) -> None:
        if self.container is not None:
            self.container.close()


def _refused(container: str, codec: str) -> bool:
    """Codecs FFmpeg lists for a muxer that its trailer then rejects (PCM in MP4)."""
    return codec.startswith("pcm_") and container in ("mp4", "ipod", "ismv", "3gp", "3g2")


def _subtitle_text(data: bytes, codec: str) -> bytes:
    """Plain text of one text-subtitle packet (styling dropped)."""
    if codec == "mov_text":
        n = int.from_bytes(data[:2], "big") if len(data) >= 2 else 0
        return data[2:2 + n]
    text = data.decode("utf-8", "replace")
    if codec in ("ass", "ssa"):
        text = text.split(",", 8)[-1].replace("\\N", "\n").replace("\\n", "\n")
        text = re.sub(r"\{[^}]*\}", "", text)
    return text.encode("utf-8")


class VideoSink(Sink):
    """An encoded video file (MP4, MKV, MOV, ...) with the input's other streams copied in."""

    def __init__(self, path: Path, info: VideoInfo, *, scale: int, encode: EncodeOptions,
                 copy_from: str | None, overwrite: bool, start: float | None, end: float | None) -> None:
        self.path = path
        self.info = info
        self.frames_written = 0
        self.encode_opts = encode
        self.width, self.height = info.width * scale, info.height * scale
        self.start, self.end = start, end
        self._closed = False
        self._last_pts: int | None = None
        self._timestamps = TimestampRepair()  # encoder packets the muxer would refuse
        self._last_time = -math.inf
        # pts -> duration of the frames in the encoder: muxers give a packet without one the
        # stream's average frame time, which for a sparse input (frames an hour apart) makes
        # the last frame last an hour instead of the input's own duration
        self._durations: dict[int, int] = {}
        self._last_duration: float | None = None  # seconds the last written frame shows
        self._copies: _CopiedStreams | None = None
        codec = check_encoder(encode)
        check_output_path(path, overwrite)
        fmt = None
        try:
            fmt = av.format.ContainerFormat(path.suffix.lstrip(".").lower() or "?", "w").name
        except (ValueError, av.error.FFmpegError):
            fmt = None
        opts = {"movflags": "+faststart"} if (fmt or path.suffix.lower().lstrip(".")) in _FASTSTART_FORMATS else {}
        if info.is_live:  # live: flush each packet (and fragment MP4) so a killed run stays playable
            frag = {"movflags": "+frag_keyframe+empty_moov+default_base_moof"} if opts else {}
            opts = {"flush_packets": "1", **frag}
        # stop while closing still fits: a cut-short MP4 has no index, an MKV loses the encoder's frames
        self._guard: SpaceGuard | None = SpaceGuard(path)
        try:
            self.out = av.open(ffmpeg_name(path), "w", container_options=opts)
        except ValueError:
            raise OutputError(f"cannot tell the container format from {short(path.name)!r}; "
                              f"use .mp4, .mkv, .mov, ...") from None
        except (OSError, av.error.FFmpegError) as exc:
            raise _output_error(path, exc) from None
        if self.out.format.flags & _NOFILE and self.out.format.name not in ("hls", "dash"):
            # a muxer that names and opens files itself (image2, webm_chunk, ...): nothing could
            # check what it writes over (it has opened nothing yet)
            name = self.out.format.name
            self.out.close()
            self._closed = True
            raise OutputError(f"cannot write {short(path)}: the {name} container writes files of "
                              f"its own naming; use .mp4, .mkv, .mov (or .png images)")
        try:
            self._setup(codec, copy_from)
        except BaseException:
            self._abort()
            raise

    def _setup(self, codec, copy_from: str | None) -> None:
        info, encode = self.info, self.encode_opts
        if encode.codec not in self.out.supported_codecs and codec.name not in self.out.supported_codecs:
            raise ConfigError(f"the {self.out.format.name} container cannot hold {encode.codec} "
                              f"video; pick another output extension (e.g. .mkv)")
        rate = info.fps if info.fps else Fraction(1) / info.time_base
        vs = self.out.add_stream(encode.codec, rate=rate)
        vs.width, vs.height, vs.pix_fmt = self.width, self.height, encode.pix_fmt
        tag_hevc(vs, self.out.format.name)
        self.tb = info.time_base
        vs.time_base = self.tb
        cc = vs.codec_context
        cc.time_base = self.tb
        cc.thread_count = 0
        fmt = av.VideoFormat(encode.pix_fmt)
        self.rgb_out = fmt.is_rgb
        self.matrix = effective_matrix(info)
        self.range = effective_range(info)
        self._yuv420 = (None if self.rgb_out or encode.pix_fmt != "yuv420p"
                        else Yuv420.for_matrix(self.matrix, self.range))
        inv = {v: k for k, v in PRIMARIES.items()}
        if info.color.primaries in inv:
            cc.color_primaries = inv[info.color.primaries]
        inv = {v: k for k, v in TRANSFERS.items()}
        if info.color.transfer in inv:
            cc.color_trc = inv[info.color.transfer]
        if not self.rgb_out:
            cc.colorspace = {v: k for k, v in MATRICES.items()}[self.matrix]
            cc.color_range = {v: k for k, v in RANGES.items()}[self.range]
        if encode.bitrate:
            cc.bit_rate = parse_bitrate(encode.bitrate)
        cc.options = encoder_options(encode)
        if info.rotation:
            vs.set_display_rotation(info.rotation)
        self.vstream = vs
        if copy_from:
            self._copies = _CopiedStreams(self.out, copy_from, self.start, self.end)
            self._copies.guard = self._guard
            self.out.metadata.update(self._copies.metadata)
            self._copy_chapters(self._copies.chapters)
        try:
            self.out.start_encoding()
        except OSError as exc:  # the file is opened here: permission denied, read-only, ...
            raise _output_error(self.path, exc) from None
        except av.error.FFmpegError as exc:
            raise ConfigError(f"cannot start encoding {self.path.name} with {encode.codec} "
                              f"({str(exc).splitlines()[0][:200]}); check --encoder-opt/--preset/"
                              f"--pix-fmt") from None
        self._shift = round(self.start / self.tb) if self.start else 0
        self._rgb_frame: av.VideoFrame | None = None
        log.info("output %s: %s %dx%d %s, colour %s/%s", self.path, encode.codec, self.width,
                 self.height, encode.pix_fmt, self.matrix, self.range)

    def _copy_chapters(self, chapters: list[dict]) -> None:
        if not chapters:
            return
        kept = []
        for ch in chapters:
            tb = ch["time_base"]
            lo, hi = float(ch["start"] * tb), float(ch["end"] * tb)
            if self.end is not None and lo >= self.end:
                continue
            if self.start is not None:
                if hi <= self.start:
                    continue
                lo, hi = max(lo, self.start) - self.start, hi - self.start
            kept.append({**ch, "id": len(kept) + 1, "start": round(lo / tb), "end": round(hi / tb)})
        try:
            self.out.set_chapters(kept)
        except (av.error.FFmpegError, ValueError, TypeError) as exc:
            log.warning("could not copy chapters: %s", exc)

    @property
    def yuv420(self) -> Yuv420 | None:
        """The yuv420p target `write` also accepts planes for (8-bit 4:2:0 output, known matrix)."""
        return self._yuv420

    def write(self, rgb: np.ndarray, pts: int | None, time_base: Fraction, name: str | None = None,
              duration: int | None = None) -> None:
        """Encode one x4 frame at input timestamp `pts` (units of `time_base`), shown for the
        input frame's `duration` (same units; None: the muxer's default).

        `rgb` is uint8 (H, W, 3) RGB, uint16 (H, W, 3) RGB (rgb48, for high-bit-depth outputs),
        or uint8 (3H/2, W) yuv420p planes already in this output's `yuv420` matrix and range
        (the engine makes them on the device).
        """
        yuv = rgb.ndim == 2 and self.yuv420 is not None
        want = (self.height * 3 // 2, self.width) if yuv else (self.height, self.width, 3)
        dtypes = (np.uint8,) if yuv else (np.uint8, np.uint16)
        if rgb.shape != want or rgb.dtype not in dtypes:
            raise ValueError(f"expected {'/'.join(np.dtype(d).name for d in dtypes)} {want}, "
                             f"got {rgb.dtype} {rgb.shape}")
        layout = "yuv420p" if yuv else "rgb48le" if rgb.dtype == np.uint16 else "rgb24"
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format=layout)
        if yuv:  # already in the output's format, matrix and range
            pass
        elif not self.rgb_out:
            frame = frame.reformat(format=self.encode_opts.pix_fmt, dst_colorspace=sws_matrix(self.matrix),
                                   dst_color_range=sws_range(self.range), interpolation=FROM_RGB_FLAGS)
        elif frame.format.name != self.encode_opts.pix_fmt:
            frame = frame.reformat(format=self.encode_opts.pix_fmt)
        if pts is None:
            pts = 0 if self._last_pts is None else self._last_pts + max(1, round(1 / (self.vstream.average_rate or 25) / self.tb))
        elif time_base != self.tb:
            pts = round(pts * time_base / self.tb)
        else:
            pts = int(pts)
        if self._guard is not None:  # before the frame enters the encoder (raises when full)
            self._guard.check(self.frames_written - self._guard.video_packets, self.frames_written)
        out_pts = pts - self._shift
        if self._last_pts is not None and out_pts <= self._last_pts:
            out_pts = self._last_pts + 1
        frame.pts = out_pts
        frame.time_base = self.tb
        self._last_pts = out_pts
        self._last_time = float(pts * self.tb)
        self._last_duration = None
        if duration is not None and duration > 0:
            self._durations[out_pts] = max(1, round(duration * time_base / self.tb))
            self._last_duration = float(duration * time_base)
            if len(self._durations) > 1024:  # an encoder that renumbers pts: stay bounded
                del self._durations[next(iter(self._durations))]
        try:
            for packet in self.vstream.encode(frame):
                self._mux_video(packet)
        except (OSError, av.error.FFmpegError) as exc:
            raise _output_error(self.path, exc) from None
        self.frames_written += 1

    def _mux_video(self, packet: av.Packet | None) -> None:
        """Mux one encoded video packet (None: the end, release a held one), copies in time order."""
        if packet is not None and packet.pts is not None:
            duration = self._durations.pop(packet.pts, None)
            if duration is not None and not packet.duration:
                packet.duration = duration
        repair = self._timestamps
        before = repair.repaired
        ready = repair.flush() if packet is None else repair.push(packet, packet.pts, packet.dts)
        if repair.repaired and not before:
            log.warning("the encoder gave a packet with pts %s, dts %s: muxing it with repaired "
                        "timestamps (see repair_timestamps)", packet.pts if packet else "?",
                        packet.dts if packet else "?")
        for pkt, pts, dts in ready:
            if (pkt.pts, pkt.dts) != (pts, dts):
                pkt.pts, pkt.dts = pts, dts
            self._mux_one(pkt)

    def _mux_one(self, packet: av.Packet) -> None:
        if self._copies is not None and packet.dts is not None:
            self._copies.pump(float(packet.dts * packet.time_base) + (self.start or 0.0))
        if self._guard is not None:
            self._guard.muxed(packet.size, video=True)
        self.out.mux(packet)

    def close(self, trim: bool = False) -> None:
        """Flush the encoder, mux the rest of the copied streams, write the trailer.

        `trim` (after an interruption or a truncated input) stops copied audio/subtitles at the
        end of the last video frame written instead of copying them to their end.
        """
        if self._closed:
            return
        self._closed = True
        error: BaseException | None = None
        try:
            for packet in self.vstream.encode(None):
                self._mux_video(packet)
            self._mux_video(None)
            if self._copies is not None:
                frame = (self._last_duration if self._last_duration is not None
                         else float(1 / self.info.fps) if self.info.fps else 0.04)
                until = self._last_time + frame if trim else math.inf
                self._copies.finish(until, video_end=self._last_time + frame)
        except (OSError, av.error.FFmpegError) as exc:
            error = exc
        finally:
            try:
                self.out.close()
            except (OSError, av.error.FFmpegError) as exc:
                error = error or exc
            if self._copies is not None:
                self._copies.close()
        if error is not None:
            raise _output_error(self.path, error)

    def discard(self) -> None:
        if self._closed and self.frames_written == 0:
            self.path.unlink(missing_ok=True)

    def _abort(self) -> None:
        """Setup failed before anything was written: remove the empty file."""
        self._closed = True
        try:
            self.out.close()
        except Exception:  # noqa: BLE001 - the original error matters more
            pass
        if self._copies is not None:
            self._copies.close()
        try:
            self.path.unlink()
        except OSError:
            pass


def check_image_ext(ext: str) -> str:
    """'jpg', '.JPG' -> '.jpg': an image format the image outputs can write, or ConfigError."""
    norm = "." + str(ext).strip().lstrip(".").lower()
    if norm not in IMAGE_EXTS:
        raise ConfigError(f"unknown image format {ext!r}; use one of "
                          f"{', '.join(sorted(e.lstrip('.') for e in IMAGE_EXTS))}")
    return norm


class ImageSink(Sink):
    """A folder of images (one per frame; PNG unless `ext` says otherwise), or a single image
    file (its extension picks the format) for a single image or one frame of a video.

    JPEG is written at quality 95, WebP lossless (OpenCV's defaults), PNG and TIFF losslessly.
    """

    def __init__(self, path: Path, info: VideoInfo, *, scale: int, overwrite: bool, folder: bool,
                 ext: str = ".png") -> None:
        self.path = path
        self.folder = folder
        self.ext = check_image_ext(ext)
        self.frames_written = 0
        self._bytes = 0
        self.size = (info.height * scale, info.width * scale)
        if folder:
            if path.exists() and not path.is_dir():
                raise OutputError(f"{path} exists and is not a folder")
            if path.is_dir() and any(path.iterdir()) and not overwrite:
                raise OutputError(f"{path} is a folder that is not empty; pass --overwrite to write into it")
            try:
                path.mkdir(parents=False, exist_ok=True)
            except FileNotFoundError:
                raise OutputError(f"cannot create {path}: folder {path.parent} does not exist") from None
            except OSError as exc:
                raise _output_error(path, exc) from None
            if not os.access(path, os.W_OK):
                raise OutputError(f"cannot write into {path}: permission denied")
        else:
            check_output_path(path, overwrite)

    def write(self, rgb: np.ndarray, pts: int | None, time_base: Fraction, name: str | None = None,
              duration: int | None = None) -> None:
        """Write one frame as an image (named after the input image when there is one)."""
        import cv2

        if self.folder:
            target = self.path / f"{name or f'frame_{self.frames_written:06d}'}{self.ext}"
        else:
            if self.frames_written:
                raise OutputError(f"{self.path} is a single image but the input has more than one "
                                  f"frame; give a folder as output")
            target = self.path
        try:
            ok = cv2.imwrite(str(target), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        except cv2.error as exc:
            raise OutputError(f"cannot write {target}: {str(exc).splitlines()[0][:200]}") from None
        if not ok:
            raise OutputError(f"cannot write {target} (disk full or unsupported image type?)")
        self._bytes += target.stat().st_size
        self.frames_written += 1

    @property
    def bytes_written(self) -> int:
        return self._bytes


def is_image_output(path: str | os.PathLike) -> bool:
    """True when `path` names a folder of images or one image file rather than a video."""
    p = local_file(path) or Path(path)
    try:
        is_dir = p.is_dir()
    except OSError:  # a name too long to exist: refused where it is opened
        is_dir = False
    return str(path).endswith(("/", os.sep)) or is_dir or not p.suffix or p.suffix.lower() in IMAGE_EXTS


def open_sink(path: str | os.PathLike, info: VideoInfo, *, scale: int = 4,
              encode: EncodeOptions | None = None, copy_from: str | None = None,
              overwrite: bool = False, start: float | None = None, end: float | None = None,
              image_ext: str | None = None) -> Sink:
    """Open the output: a video file (by extension), one image, or a folder of images
    (`image_ext`, default png).

    `start`/`end` (input-time seconds) limit the copied audio/subtitles/chapters to the part of
    the input that was processed, and shift them like the video.
    """
    encode = encode or EncodeOptions()
    p = output_file(path)  # file:NAME -> NAME; other protocols refused
    check_output_name(p)
    if is_image_output(path):
        single = p.suffix.lower() in IMAGE_EXTS and not p.is_dir()
        if single and (info.frames or 1) > 1:
            raise OutputError(f"{p.name} is a single image but the input has {info.frames} frames; "
                              f"give a folder (no extension) for images, a video file name, or "
                              f"--frames 1 for one frame")
        if single and image_ext is not None and check_image_ext(image_ext) != p.suffix.lower():
            raise ConfigError(f"--ext {image_ext} does not match the output file {p.name}; "
                              f"--ext is for folders of images")
        return ImageSink(p, info, scale=scale, overwrite=overwrite, folder=not single,
                         ext=image_ext or ".png")
    return VideoSink(p, info, scale=scale, encode=encode, copy_from=copy_from, overwrite=overwrite,
                     start=start, end=end)
