"""One input into one output: decode -> batched inference -> encode, one output frame per input frame.

`upscale_stream` checks everything it can before opening anything (names, window, encoder,
output over input), then `open_source` picks the kind of input (a file, images, a live feed),
`open_sink` the kind of output (a file, images, rolling segments, a push), and the three
overlapping stages of `streamsr.inference.stages` move the frames. Frames are never dropped for
files; they leave in the order they came, with their own timestamps. SIGINT/SIGTERM stop
reading, let the frames already in flight finish, finalise the output and raise `Interrupted`;
any other error also finalises what was written.
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
from streamsr.inference.output_size import OutputSize
from streamsr.inference.stages import Stages
from streamsr.jobs.stats import Stats
from streamsr.options import UpscaleOptions, options_from
from streamsr.runtime import StopSignals
from streamsr.video import source as video_source
from streamsr.video.encoder import check_encoder
from streamsr.video.images import ImageSource
from streamsr.video.live import is_network_uri, open_live_source
from streamsr.video.live_stats import live_progress
from streamsr.video.output_paths import check_input_name, check_not_input, output_name
from streamsr.video.segments import (
    is_push_url,
    live_output_label,
    live_output_path,
    open_live_sink,
)
from streamsr.video.sink import check_image_ext, is_image_output
from streamsr.video.sink import open_sink as open_file_sink
from streamsr.video.source import (
    DECODERS,
    Source,
    VideoInfo,
    VideoSource,
    check_frames,
    check_window,
    component_bits,
)

log = logging.getLogger(__name__)

Progress = Callable[[int, int | None], None]


def resolve_model(model: str | os.PathLike | nn.Module, device: str = "cpu") -> nn.Module:
    """An nn.Module as given, or a bundled name / weights path loaded with `load_model`."""
    if isinstance(model, nn.Module):
        return model
    from streamsr.models.weights import load_model

    return load_model(model, "cpu")


@dataclass(frozen=True)
class StreamJob:
    """What the checks decided before anything was opened."""

    src: str
    dst: str  # file:NAME is NAME
    image_out: bool  # an image file or a folder of images
    push: bool  # an rtsp:// / rtmp:// output
    live: bool  # the input is read as a live feed
    resize: OutputSize | None  # --outscale / --size
    image_ext: str | None


def check_job(src: str | os.PathLike, dst: str | os.PathLike, options: UpscaleOptions) -> StreamJob:
    """Every check that needs no decoding: names, window, output size, encoder, output over input."""
    src, dst = str(src), str(dst)
    inp, out = options.input, options.output
    check_input_name(src)
    push = is_push_url(dst)
    if not push:
        dst = output_name(dst)  # file:NAME is NAME; other FFmpeg protocols are refused
    check_window(inp.start, inp.duration)  # before anything is opened: nan or 1e308 never reach FFmpeg
    check_frames(inp.frames)
    image_out = is_image_output(dst) and not push
    resize = OutputSize.from_options(out.outscale, out.size, even=not image_out)
    image_ext = out.image_ext
    if image_ext is not None:
        image_ext = check_image_ext(image_ext)
        if not image_out:
            raise ConfigError(f"--ext is for image outputs (a folder or an image file), not "
                              f"{os.path.basename(dst) or dst}")
    if not image_out:
        check_encoder(options.encode)  # fail on a bad codec/pix_fmt before any heavy work
    check_not_input(src, dst)  # also via file:, a symlink, a hard link or an HLS segment
    live = is_network_uri(src) if inp.live is None else inp.live
    if live and not push:  # a live output without a container name gets .mkv
        check_not_input(src, live_output_path(dst))
    return StreamJob(src, dst, image_out, push, live, resize, image_ext)


def decoder_for(decoder: str, device: str) -> tuple[str, int | None]:
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


def open_source(job: StreamJob, options: UpscaleOptions) -> Source:
    """The input: a live feed, or a file / image / image folder."""
    inp = options.input
    decoder, gpu = decoder_for(inp.decoder, options.engine.device)
    if job.live:
        if inp.start:
            log.warning("--start is ignored for live sources")
        if decoder == "cuda":
            log.warning("--decoder cuda applies to files; live input is decoded in software")
        return open_live_source(job.src, options.live, duration=inp.duration, frames=inp.frames,
                                max_pixels=inp.max_pixels)
    # a >8-bit input into a >8-bit video output travels as 16-bit RGB end to end
    # (file outputs only: image outputs are 8-bit PNGs, a push encodes from RGB24)
    deep = not job.image_out and not job.push and component_bits(options.encode.pix_fmt) > 8
    return video_source.open_source(job.src, start=inp.start, duration=inp.duration,
                                    max_pixels=inp.max_pixels, deep=deep, decoder=decoder, gpu=gpu)


@dataclass(frozen=True)
class Geometry:
    """Frame sizes of a run: the model's input, what the sink is told, the output size."""

    info: VideoInfo  # the input (with --frames as its frame count, for progress)
    sink_info: VideoInfo  # the sink writes frames of sink_info's size x sink_scale
    sink_scale: int
    out_size: tuple[int, int]


def plan_frames(source: Source, engine, job: StreamJob, options: UpscaleOptions) -> Geometry:
    """Fix the frame size the model sees and the output size (the engine learns the resize)."""
    info = source.info
    input_size = options.input.input_size
    if isinstance(source, ImageSource):  # a video has one frame size; images keep theirs
        source.one_size = not job.image_out or input_size is not None
    if input_size is not None and (info.width, info.height) != tuple(input_size):
        source.scale_to(*input_size)  # every frame whose size differs is scaled to it
        info = source.info
    frames = options.input.frames
    if frames is not None and not job.live and (info.frames is None or info.frames > frames):
        info = dataclasses.replace(info, frames=frames)  # progress total; one frame: an image
    out_size = (info.width * engine.scale, info.height * engine.scale)
    sink_info, sink_scale = info, engine.scale
    if job.resize is not None:
        out_size = job.resize.for_input(info.width, info.height, engine.scale)
        sink_info, sink_scale = dataclasses.replace(info, width=out_size[0], height=out_size[1]), 1
        engine.output_size = job.resize
    return Geometry(info, sink_info, sink_scale, out_size)


def open_sink(job: StreamJob, source: Source, geometry: Geometry, options: UpscaleOptions):
    """The output: rolling segments or a push for live runs, else a video file or images."""
    out = options.output
    if job.live or job.push or out.segment_time:
        return open_live_sink(job.dst, geometry.sink_info, scale=geometry.sink_scale,
                              encode=options.encode, segment_time=out.segment_time,
                              overwrite=out.overwrite, rtsp_transport=options.live.rtsp_transport)
    # audio, subtitles, chapters and tags come from the input file itself
    copy_from = job.src if isinstance(source, VideoSource) and not geometry.info.is_live else None
    return open_file_sink(job.dst, geometry.sink_info, scale=geometry.sink_scale,
                          encode=options.encode, copy_from=copy_from, overwrite=out.overwrite,
                          start=source.window[0], end=source.window[1], image_ext=job.image_ext)


def run_stages(stages: Stages, source: Source, sink, live: bool, handle_signals: bool) -> StopSignals:
    """Run the stages until the input ends, a signal or an error; the output is always finalised."""
    with StopSignals(handle_signals) as stop:
        stages.stop_request = stop.event
        if live:  # a signal or an error ends a wait for a feed that is down
            source.stop_on(stop.event, stages.abort)
        try:
            stages.go()
        finally:
            stopped_early = stop.signum is not None or stages.failed
            try:
                # a part of the input (--frames) keeps the audio of that part only
                sink.close(trim=stopped_early or source.truncated or stages.cut)
            except StreamsrError:
                if stages.error is None and stop.signum is None:
                    raise
                log.error("output could not be finalised cleanly")
            if stages.error is not None and sink.frames_written == 0:
                sink.discard()  # failed before its first frame: no file rather than an empty one
    return stop


def upscale_stream(src: str | os.PathLike, dst: str | os.PathLike,
                   options: UpscaleOptions | None = None, *, progress: Progress | None = None,
                   status: Callable[[str], None] | None = None, handle_signals: bool = True,
                   **keywords) -> Stats:
    """Upscale one video file, image, image folder or live feed into one output.

    `options` (and/or `streamsr.upscale`'s keywords over them): see `UpscaleOptions`.
    `progress(done, total)` is called from the encode thread after each written frame; live
    runs send `status(line)` every `status_interval` seconds. Raises `Interrupted` (after
    finalising the output) on SIGINT/SIGTERM, and `StreamsrError`s for bad input/output/options.
    """
    from streamsr.inference.engine import Engine

    options = options_from(options, keywords)
    t0 = time.monotonic()
    job = check_job(src, dst, options)
    source = open_source(job, options)
    with source:
        engine = Engine(resolve_model(options.model), options.engine)
        geometry = plan_frames(source, engine, job, options)
        n_batch = engine.plan(geometry.info.height, geometry.info.width)
        sink = open_sink(job, source, geometry, options)
        if job.live:
            progress = live_progress(source, progress, status, options.status_interval)
        sbs = options.output.side_by_side
        stages = Stages(source, sink, engine, n_batch, options.queue_frames or 2 * n_batch, sbs,
                        progress)
        stages.total = geometry.info.frames
        if job.live:  # latency is checked when the batcher takes a frame, after every queue
            source.check_latency_on_iter = False
            stages.live, stages.fresh = True, source.fresh
        else:
            stages.max_frames = options.input.frames
        stop = run_stages(stages, source, sink, job.live, handle_signals)
        if job.live:  # stop the reader first: frames it left queued are counted as dropped
            source.close()
        stats = _stats(job, source, sink, geometry, options, time.monotonic() - t0, stop)
    if stop.signum is not None:
        exc = Interrupted(f"interrupted by {signal.Signals(stop.signum).name}: {stats.frames} "
                          f"frames written to {job.dst} (finalised)", stop.signum)
        exc.stats = stats  # type: ignore[attr-defined]
        raise exc
    return stats  # a truncated input was reported once, by the source, with its frame count


def _stats(job: StreamJob, source: Source, sink, geometry: Geometry, options: UpscaleOptions,
           seconds: float, stop: StopSignals) -> Stats:
    info = geometry.info
    return Stats(frames=sink.frames_written, seconds=seconds,
                 fps=sink.frames_written / seconds if seconds > 0 else 0.0,
                 output_bytes=sink.bytes_written,
                 output=(live_output_label(job.dst, options.output.segment_time) if job.live
                         else job.dst),
                 input_size=(info.width, info.height), output_size=geometry.out_size,
                 dropped=source.dropped, skipped_packets=source.skipped_packets,
                 truncated=source.truncated, interrupted=stop.signum is not None,
                 live=source.stats.as_dict() if job.live else None)
