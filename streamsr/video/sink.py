"""Outputs: the `Sink` interface, `open_sink` (a video file, one image or a folder of images),
`VideoSink` and `ImageSink`.

The video is encoded with PyAV (libx264 CRF 18, preset medium, yuv420p, MP4 with faststart by
default; MKV when the name says so; any FFmpeg video encoder on request, see `encoder`) at the
input's own timestamps, so variable frame rate survives. RGB -> Y'CbCr uses the same matrix and
range the source decoded with and the output is tagged with them; rotation is kept as a display
matrix. The input's audio, subtitles, chapters and tags are copied in (`remux`). `close()`
always finalises the container, also after an error, so a partial output is still playable.
"""

from __future__ import annotations

import errno
import logging
import math
import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from streamsr.errors import ConfigError, OutputError
from streamsr.inference.pack import Yuv420
from streamsr.video.color import ColorInfo, effective_matrix, effective_range, tag_color
from streamsr.video.disk_guard import SpaceGuard
from streamsr.video.encoder import (
    EncodeOptions,
    TimestampRepair,
    check_encoder,
    encoder_options,
    mux_repaired,
    parse_bitrate,
    tag_hevc,
)
from streamsr.video.frame import rgb_to_yuv
from streamsr.video.output_paths import (
    check_output_name,
    check_overwrite,
    ffmpeg_name,
    local_file,
    output_file,
    short,
)
from streamsr.video.remux import CopiedStreams, trimmed_chapters
from streamsr.video.source import IMAGE_EXTS, VideoInfo

log = logging.getLogger(__name__)

_FASTSTART_FORMATS = {"mp4", "mov", "ipod", "ismv"}
_NOFILE = 0x0001  # AVFMT_NOFILE: the muxer opens its files itself


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
        self._copies: CopiedStreams | None = None
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
        tag_color(cc, ColorInfo(info.color.primaries, info.color.transfer,
                                None if self.rgb_out else self.matrix,
                                None if self.rgb_out else self.range))
        if encode.bitrate:
            cc.bit_rate = parse_bitrate(encode.bitrate)
        cc.options = encoder_options(encode)
        if info.rotation:
            vs.set_display_rotation(info.rotation)
        self.vstream = vs
        if copy_from:
            self._copies = CopiedStreams(self.out, copy_from, self.start, self.end)
            self._copies.guard = self._guard
            self.out.metadata.update(self._copies.metadata)
            if self._copies.chapters:
                self._copy_chapters(trimmed_chapters(self._copies.chapters, self.start, self.end))
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
        try:
            self.out.set_chapters(chapters)
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
            frame = rgb_to_yuv(frame, self.encode_opts.pix_fmt, self.matrix, self.range)
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
        given = (packet.pts, packet.dts) if packet is not None else ("?", "?")
        mux_repaired(repair, packet, self._mux_one)
        if repair.repaired and not before:
            log.warning("the encoder gave a packet with pts %s, dts %s: muxing it with repaired "
                        "timestamps (see repair_timestamps)", *given)

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
