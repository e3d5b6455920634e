"""Copy the input's other streams into an output: audio and subtitle packets without
re-encoding (audio is re-encoded only when the output container cannot hold its codec; text
subtitles are converted to a kind it holds), interleaved by time with the video as it is
written, so memory stays flat; chapters and metadata tags too. Used by the file output
(`sink.VideoSink`) and by joining encoded parts (`split.join_parts`)."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterator
from fractions import Fraction

import av

from streamsr.video.disk_guard import SpaceGuard

log = logging.getLogger(__name__)

_DROP_META = {"major_brand", "minor_version", "compatible_brands", "encoder", "duration",
              "number_of_frames", "number_of_bytes", "bps", "_statistics_tags",
              "_statistics_writing_app", "_statistics_writing_date_utc"}
_DEFAULT_LAYOUTS = {1: "mono", 2: "stereo", 3: "2.1", 4: "quad", 5: "5.0", 6: "5.1", 7: "6.1", 8: "7.1"}
_TEXT_SUBS = {"subrip", "srt", "mov_text", "ass", "ssa", "webvtt", "text"}


def _clean_meta(meta: dict) -> dict[str, str]:
    return {k: v for k, v in meta.items() if k.lower() not in _DROP_META and not k.startswith("_STAT")}


def _read_meta(obj) -> dict[str, str]:
    """Metadata tags worth copying; undecodable (non-UTF-8) tags are skipped, not fatal."""
    try:
        return _clean_meta(dict(obj.metadata))
    except (UnicodeDecodeError, ValueError) as exc:
        log.warning("not copying metadata tags that cannot be decoded: %s", exc)
        return {}


class CopiedStreams:
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


def trimmed_chapters(chapters: list[dict], start: float | None, end: float | None) -> list[dict]:
    """The chapters that overlap [start, end) (input-time seconds; None: open), cut to it and
    shifted to start at 0 like the video, numbered from 1."""
    kept = []
    for ch in chapters:
        tb = ch["time_base"]
        lo, hi = float(ch["start"] * tb), float(ch["end"] * tb)
        if end is not None and lo >= end:
            continue
        if start is not None:
            if hi <= start:
                continue
            lo, hi = max(lo, start) - start, hi - start
        kept.append({**ch, "id": len(kept) + 1, "start": round(lo / tb), "end": round(hi / tb)})
    return kept
