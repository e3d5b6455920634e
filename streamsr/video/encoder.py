"""How the x4 video is encoded: `EncodeOptions`, the encoder's own option names, a trial open
that refuses settings before any work, HEVC tagging for Apple players, and timestamp repair for
the packets encoders hand out, with the one muxing step the file and push outputs share."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction

import av

from streamsr.errors import ConfigError
from streamsr.video.ffmpeg import ffmpeg_errors, ffmpeg_reason

log = logging.getLogger(__name__)

_CRF_OPTION = {"libx264": "crf", "libx264rgb": "crf", "libx265": "crf", "libsvtav1": "crf",
               "libaom-av1": "crf", "libvpx-vp9": "crf", "libvpx": "crf", "librav1e": "qp",
               "h264_nvenc": "cq", "hevc_nvenc": "cq", "av1_nvenc": "cq",
               "h264_qsv": "global_quality", "hevc_qsv": "global_quality"}
_PRESET_ENCODERS = {"libx264", "libx264rgb", "libx265", "h264_nvenc", "hevc_nvenc", "av1_nvenc",
                    "libsvtav1", "h264_qsv", "hevc_qsv"}
_HVC1_FORMATS = {"mp4", "mov"}  # HEVC tagged hvc1 (parameter sets in the header), as Apple wants


@dataclass(frozen=True)
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


def mux_repaired(repair: TimestampRepair, packet: av.Packet | None,
                 mux: Callable[[av.Packet], None]) -> None:
    """Hand one encoded packet (None: the end, release a held one) through `repair` and `mux`
    what is ready, with the repaired timestamps: the one path from an encoder to a muxer."""
    ready = repair.flush() if packet is None else repair.push(packet, packet.pts, packet.dts)
    for pkt, pts, dts in ready:
        if (pkt.pts, pkt.dts) != (pts, dts):
            pkt.pts, pkt.dts = pts, dts
        mux(pkt)
