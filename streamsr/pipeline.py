"""The main job: decode -> batched inference -> encode, one output frame per input frame.

Three stages overlap: a decode thread fills a bounded queue with RGB frames, the calling thread
groups them into batches for `Engine.map` (pinned double buffering on CUDA), and an encode
thread writes the results. Bounded queues give back-pressure, so memory does not grow with the
length of the video. Frames are never dropped for files; they leave in the order they came, with
their own timestamps. SIGINT/SIGTERM stop reading, let the frames already in flight finish,
finalise the output and raise `Interrupted`; any other error also finalises what was written.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from streamsr.errors import ConfigError, Interrupted, StreamsrError
from streamsr.inference.stages import Stages
from streamsr.output_size import OutputSize
from streamsr.runtime import StopSignals
from streamsr.video.encoder import EncodeOptions, check_encoder
from streamsr.video.images import ImageSource
from streamsr.video.live import LiveOptions, is_network_uri, live_progress, open_live_source
from streamsr.video.output_paths import check_input_name, check_not_input, output_name
from streamsr.video.segments import (
    is_push_url,
    live_output_label,
    live_output_path,
    open_live_sink,
)
from streamsr.video.sink import check_image_ext, is_image_output, open_sink
from streamsr.video.source import (
    DECODERS,
    DEFAULT_MAX_PIXELS,
    VideoSource,
    check_frames,
    check_window,
    component_bits,
    open_source,
)

log = logging.getLogger(__name__)


@dataclass
class Stats:
    """What a run did: frames written, time taken, speed, output size, and what was lost."""

    frames: int  # output frames written (= input frames decoded, for files)
    seconds: float  # wall-clock time of the whole run
    fps: float  # frames / seconds
    output_bytes: int
    output: str
    input_size: tuple[int, int]  # (width, height)
    output_size: tuple[int, int]
    dropped: int = 0  # frames dropped (live sources only; never for files)
    skipped_packets: int = 0  # corrupt input packets skipped
    truncated: bool = False  # the input ended early; every decodable frame was kept
    interrupted: bool = False
    live: dict | None = None  # live runs: LiveStats.as_dict() (drops, reconnects, latency)

    def summary(self) -> str:
        """One line for people: frames, time, speed, size, and any losses."""
        size = self.output_bytes
        human = f"{size / 1e6:.1f} MB" if size >= 1e5 else f"{size / 1e3:.1f} kB"
        w, h = self.output_size
        line = (f"{self.frames} frames in {self.seconds:.1f} s ({self.fps:.2f} fps) -> {self.output} "
                f"({w}x{h}, {human})")
        extra = []
        if self.skipped_packets:
            extra.append(f"{self.skipped_packets} corrupt packets skipped")
        if self.truncated:
            extra.append("input truncated: kept every decodable frame")
        if self.dropped:
            extra.append(f"{self.dropped} frames dropped")
        if self.live and self.live.get("reconnects"):
            extra.append(f"{self.live['reconnects']} reconnects ({self.live['downtime_s']:.1f} s down)")
        return line + (f"; {'; '.join(extra)}" if extra else "")


def resolve_model(model: str | os.PathLike | nn.Module, device: str = "cpu") -> nn.Module:
    """An nn.Module as given, or a bundled name / weights path loaded with `load_model`."""
    if isinstance(model, nn.Module):
        return model
    from streamsr.models.weights import load_model

    return load_model(model, "cpu")


def upscale(src: str | os.PathLike, dst: str | os.PathLike, *,
            model: str | os.PathLike | nn.Module = "lite",
            device: str = "auto", precision: str = "auto", batch: int | None = None,
            tile: int | None = None, compile: bool = False, cuda_graphs: str = "auto",
            decoder: str = "software",
            codec: str = "libx264", crf: int | None = 18, encoder_preset: str | None = "medium",
            pix_fmt: str = "yuv420p", bitrate: str | None = None,
            encoder_options: dict[str, str] | None = None,
            side_by_side_view: bool = False, overwrite: bool = False,
            start: float | None = None, duration: float | None = None,
            max_pixels: int | None = DEFAULT_MAX_PIXELS, queue_frames: int | None = None,
            progress: Callable[[int, int | None], None] | None = None,
            handle_signals: bool = True, live: bool | None = None,
            live_options: LiveOptions | None = None, frames: int | None = None,
            segment_time: float | None = None, status: Callable[[str], None] | None = None,
            status_interval: float = 5.0, outscale: float | None = None,
            size: str | tuple[int | None, int | None] | None = None, image_ext: str | None = None,
            threads: int | None = None, backend: str = "torch",
            input_size: tuple[int, int] | None = None,
            **aliases) -> Stats:
    """Upscale a video file, image or image folder x4 into `dst` (video file, image or PNG folder).

    `model`: "lite" (bundled), "paper", a weights path, or an `nn.Module` (float NCHW [0,1] in,
    x4 out). `progress(done, total)` is called from the encode thread after each written frame
    (`total` is an estimate, or None). Returns `Stats`; raises `Interrupted` (after finalising the
    output) on SIGINT/SIGTERM, and `StreamsrError`s for bad input/output/options.

    Live mode (`live`, default: on for network URLs) reads through `LiveSource` (`live_options`:
    transport, timeouts, reconnects, drop policy, max latency), writes MKV by default, rolling
    files with `segment_time`, or pushes to an rtsp:// / rtmp:// `dst`; `status(line)` gets a
    status line every `status_interval` seconds. `frames` stops after that many input frames.
    `decoder`: "software", "cuda" (NVDEC; software after a warning when unavailable) or "auto"
    (NVDEC when the model runs on a GPU and NVDEC works there); files only, live input and
    images decode in software. `cuda_graphs`, `threads`, `backend` (torch, openvino,
    onnxruntime, tensorrt, auto): see `EngineConfig`.

    `outscale` (e.g. 2) or `size` ("1280x-1", (W, H); -1/0/None: from the aspect ratio, see
    `OutputSize`): the model's x4 output is downscaled on the device (antialiased bicubic) to
    that size; video outputs get even sides. `image_ext` ("png", "jpg", "webp", ...): the
    format of a folder of images (default png; a single image file's own extension decides).
    A single image output takes one frame of a video too (`frames=1`, with `start`).

    `input_size` (W, H): frames of other sizes are scaled to it before the model, as frames
    whose size differs from the first one's are (a part of a longer video: its first frame's).
    """
    if "side_by_side" in aliases:
        side_by_side_view = bool(aliases.pop("side_by_side"))
    if "preset" in aliases:
        encoder_preset = aliases.pop("preset")
    if aliases:
        raise TypeError(f"upscale() got unexpected options: {sorted(aliases)}")
    from streamsr.engine import Engine, EngineConfig

    t0 = time.monotonic()
    src, dst = str(src), str(dst)
    check_input_name(src)
    if not is_push_url(dst):
        dst = output_name(dst)  # file:NAME is NAME; other FFmpeg protocols are refused
    check_window(start, duration)  # before anything is opened: nan or 1e308 never reach FFmpeg
    check_frames(frames)
    image_out = is_image_output(dst) and not is_push_url(dst)
    resize = OutputSize.from_options(outscale, size, even=not image_out)
    if image_ext is not None:
        image_ext = check_image_ext(image_ext)
        if not image_out:
            raise ConfigError(f"--ext is for image outputs (a folder or an image file), not "
                              f"{os.path.basename(dst) or dst}")
    encode = EncodeOptions(codec=codec, crf=crf, preset=encoder_preset, pix_fmt=pix_fmt,
                           bitrate=bitrate, options=dict(encoder_options or {}))
    if not is_image_output(dst) or is_push_url(dst):
        check_encoder(encode)  # fail on a bad codec/pix_fmt before any heavy work
    check_not_input(src, dst)  # also via file:, a symlink, a hard link or an HLS segment
    live_mode = is_network_uri(src) if live is None else live
    if live_mode and not is_push_url(dst):  # a live output without a container name gets .mkv
        check_not_input(src, live_output_path(dst))
    decoder, gpu = _decoder_for(decoder, device)
    if live_mode:
        if start:
            log.warning("--start is ignored for live sources")
        if decoder == "cuda":
            log.warning("--decoder cuda applies to files; live input is decoded in software")
        source = open_live_source(src, live_options, duration=duration, frames=frames,
                                  max_pixels=max_pixels)
    else:
        # a >8-bit input into a >8-bit video output travels as 16-bit RGB end to end
        # (file outputs only: image outputs are 8-bit PNGs, a push encodes from RGB24)
        deep = not is_image_output(dst) and not is_push_url(dst) and component_bits(pix_fmt) > 8
        source = open_source(src, start=start, duration=duration, max_pixels=max_pixels, deep=deep,
                             decoder=decoder, gpu=gpu)
    with source:
        engine = Engine(resolve_model(model), EngineConfig(device=device, precision=precision,
                                                            batch=batch, tile=tile, compile=compile,
                                                            cuda_graphs=cuda_graphs,
                                                            threads=threads, backend=backend))
        info = source.info
        if isinstance(source, ImageSource):  # a video has one frame size; images keep theirs
            source.one_size = not image_out or input_size is not None
        if input_size is not None and (info.width, info.height) != tuple(input_size):
            # the source scales every frame whose size differs from its info's
            source.info = info = dataclasses.replace(info, width=input_size[0],
                                                     height=input_size[1])
        if frames is not None and not live_mode and (info.frames is None or info.frames > frames):
            info = dataclasses.replace(info, frames=frames)  # progress total; one frame: an image
        n_batch = engine.plan(info.height, info.width)
        out_w, out_h = info.width * engine.scale, info.height * engine.scale
        sink_info, sink_scale = info, engine.scale
        if resize is not None:  # the sink writes frames of sink_info's size x sink_scale
            out_w, out_h = resize.for_input(info.width, info.height, engine.scale)
            sink_info, sink_scale = dataclasses.replace(info, width=out_w, height=out_h), 1
            engine.output_size = resize
        # audio, subtitles, chapters and tags come from the input file itself
        copy_from = src if isinstance(source, VideoSource) and not info.is_live else None
        if live_mode or is_push_url(dst) or segment_time:
            sink = open_live_sink(dst, sink_info, scale=sink_scale, encode=encode,
                                  segment_time=segment_time, overwrite=overwrite,
                                  rtsp_transport=(live_options or LiveOptions()).rtsp_transport)
        else:
            sink = open_sink(dst, sink_info, scale=sink_scale, encode=encode, copy_from=copy_from,
                             overwrite=overwrite, start=source.window[0], end=source.window[1],
                             image_ext=image_ext)
        if live_mode:
            progress = live_progress(source, progress, status, status_interval)
        # frames reach a yuv420p encoder as planes made on the device (streamsr/pack.py); the
        # side-by-side view composes RGB frames, so it keeps the RGB hand-over
        engine.pack = None if side_by_side_view else getattr(sink, "yuv420", None)
        run = Stages(source, sink, engine, n_batch, queue_frames or 2 * n_batch,
                     side_by_side_view, progress)
        run.total = info.frames
        if live_mode:  # latency is checked when the batcher takes a frame, after every queue
            source.check_latency_on_iter = False
            run.live, run.fresh = True, source.fresh
        else:
            run.max_frames = frames
        with StopSignals(handle_signals) as stop:
            run.stop_request = stop.event
            if live_mode:  # a signal or an error ends a wait for a feed that is down
                source.stop_on(stop.event, run.abort)
            try:
                run.go()
            finally:
                stopped_early = stop.signum is not None or run.failed
                try:
                    # a part of the input (--frames) keeps the audio of that part only
                    sink.close(trim=stopped_early or source.truncated or run.cut)
                except StreamsrError:
                    if run.error is None and stop.signum is None:
                        raise
                    log.error("output could not be finalised cleanly")
                if run.error is not None and sink.frames_written == 0:
                    sink.discard()  # failed before its first frame: no file rather than an empty one
        if live_mode:  # stop the reader first: frames it left queued are counted as dropped
            source.close()
        seconds = time.monotonic() - t0
        stats = Stats(frames=sink.frames_written, seconds=seconds,
                      fps=sink.frames_written / seconds if seconds > 0 else 0.0,
                      output_bytes=sink.bytes_written,
                      output=live_output_label(dst, segment_time) if live_mode else dst,
                      input_size=(info.width, info.height),
                      output_size=(out_w, out_h),
                      dropped=source.dropped, skipped_packets=source.skipped_packets,
                      truncated=source.truncated, interrupted=stop.signum is not None,
                      live=source.stats.as_dict() if live_mode else None)
    if stop.signum is not None:
        exc = Interrupted(f"interrupted by {signal.Signals(stop.signum).name}: {stats.frames} "
                          f"frames written to {dst} (finalised)", stop.signum)
        exc.stats = stats  # type: ignore[attr-defined]
        raise exc
    return stats  # a truncated input was reported once, by the source, with its frame count


def _decoder_for(decoder: str, device: str) -> tuple[str, int | None]:
    """(decoder, GPU index) for the source: "auto" decodes with NVDEC only for a model on CUDA,
    on that model's GPU (CPU runs keep software decoding, with its frame threads)."""
    from streamsr.runtime import resolve_device

    if decoder not in DECODERS:
        raise ConfigError(f"unknown decoder {decoder!r}; use {', '.join(DECODERS)}")
    if decoder == "software":
        return decoder, None
    dev = resolve_device(device)
    if dev.type != "cuda":
        return ("software" if decoder == "auto" else decoder), None
    return decoder, dev.index
