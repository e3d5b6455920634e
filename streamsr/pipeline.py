"""The main job: decode -> batched inference -> encode, one output frame per input frame.

Three stages overlap: a decode thread fills a bounded queue with RGB frames, the calling thread
groups them into batches for `Engine.map` (pinned double buffering on CUDA), and an encode
thread writes the results. Bounded queues give back-pressure, so memory does not grow with the
length of the video. Frames are never dropped for files; they leave in the order they came, with
their own timestamps. SIGINT/SIGTERM stop reading, let the frames already in flight finish,
finalise the output and raise `Interrupted`; any other error also finalises what was written.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from streamsr.errors import ConfigError, Interrupted, StreamsrError
from streamsr.output_size import OutputSize
from streamsr.video.live import LiveOptions, is_network_uri, live_progress, open_live_source
from streamsr.video.output_paths import check_input_name, check_not_input, output_name
from streamsr.video.overlay import side_by_side
from streamsr.video.segments import (
    is_push_url,
    live_output_label,
    live_output_path,
    open_live_sink,
)
from streamsr.video.sink import (
    EncodeOptions,
    Sink,
    check_encoder,
    check_image_ext,
    is_image_output,
    open_sink,
)
from streamsr.video.source import (
    DECODERS,
    DEFAULT_MAX_PIXELS,
    Frame,
    ImageSource,
    Source,
    VideoSource,
    check_frames,
    check_window,
    component_bits,
    open_source,
)

log = logging.getLogger(__name__)

_END = object()  # end-of-stream marker in the queues
_POLL = 0.1  # seconds between checks for a stop request while a queue is full/empty


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


class _StopSignals:
    """Turns SIGINT/SIGTERM into a flag while active (main thread only), then restores handlers."""

    def __init__(self, enabled: bool) -> None:
        self.signum: int | None = None
        self.event = threading.Event()
        self._old: dict[int, object] = {}
        self.enabled = enabled and threading.current_thread() is threading.main_thread()

    def _handle(self, signum, _frame) -> None:
        if self.signum is not None:  # second signal: stop waiting politely
            raise KeyboardInterrupt
        self.signum = signum
        self.event.set()
        log.warning("%s received: finishing the frames in flight and finalising the output",
                    signal.Signals(signum).name)

    def __enter__(self) -> _StopSignals:
        if self.enabled:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _put(q: queue.Queue, item, *stops: threading.Event) -> bool:
    """Put with back-pressure; False if a stop event fired while waiting."""
    while True:
        if any(s.is_set() for s in stops):
            return False
        try:
            q.put(item, timeout=_POLL)
            return True
        except queue.Full:
            continue


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
        source = open_live_source(src, live_options, duration=duration, frames=frames)
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
        run = _Run(source, sink, engine, n_batch, queue_frames or 2 * n_batch, side_by_side_view,
                   progress)
        run.total = info.frames
        if live_mode:  # latency is checked when the batcher takes a frame, after every queue
            source.check_latency_on_iter = False
            run.live, run.fresh = True, source.fresh
        else:
            run.max_frames = frames
        with _StopSignals(handle_signals) as stop:
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
    from streamsr.engine import resolve_device

    if decoder not in DECODERS:
        raise ConfigError(f"unknown decoder {decoder!r}; use {', '.join(DECODERS)}")
    if decoder == "software":
        return decoder, None
    dev = resolve_device(device)
    if dev.type != "cuda":
        return ("software" if decoder == "auto" else decoder), None
    return decoder, dev.index


class _CpuThreads:
    """Gives the model one torch thread or all of them, whichever runs it faster right now.

    On a CPU the model usually dominates and wants every core (lite at 320x180 on 2 idle cores:
    1.27 s per frame with 2 threads, 1.91 s with 1). With a cheap model the encoder's threads
    keep the cores busy, and torch's fork-join ops stall whenever one of their threads is
    descheduled: the x4 nearest stand-in of `streamsr bench` ran 10 fps with 2 threads and 26
    fps with 1. Other processes matter the same way: with every core busy elsewhere, `lite`
    at 64x64 took 0.67 s with 1 thread and 6-9 s with 2. The load average cannot tell these
    cases apart (it lags by minutes and still counts a job that just ended), so the run
    measures: the first (warm-up) batch runs with one thread, then the engine's time per frame
    is measured with one thread and with all of them, each over at least WINDOW seconds (or
    FRAMES frames), and the faster setting is kept for the rest of the run. The second
    measurement stops after one batch when it is already CLEAR times slower or faster than the
    first, so at most one batch runs in a bad setting. A count the user chose (`--threads`,
    EngineConfig.threads, OMP_NUM_THREADS) is left alone.
    """

    WINDOW = 0.5  # seconds of engine time per measurement (at least one batch) ...
    FRAMES = 16  # ... or this many frames, whichever comes first
    CLEAR = 1.5  # per-frame time ratio that decides after one batch of the second setting
    _active = 0  # runs measuring now: the thread count is per process, so only one may
    _lock = threading.Lock()

    def __init__(self, engine) -> None:
        self.engine = engine
        self.full = torch.get_num_threads()
        self.enabled = (engine.device.type == "cpu" and self.full > 1
                        and not getattr(engine, "threads_fixed", False)
                        and not os.environ.get("OMP_NUM_THREADS"))
        self.owner = False
        if self.enabled:
            with _CpuThreads._lock:
                self.enabled = self.owner = _CpuThreads._active == 0
                _CpuThreads._active += self.owner
        if self.enabled:  # warm up on one thread: all of them may be the slow setting
            torch.set_num_threads(1)
        self.mark: tuple[float, int] | None = None  # engine busy seconds, frames at window start
        self.per_frame: dict[int, float] = {}  # threads -> engine seconds per frame

    def tick(self) -> None:
        """Call after every batch the engine returns."""
        if not self.enabled:
            return
        now = (self.engine.busy_seconds, self.engine.frames_done)
        if self.mark is None:  # the first batch pays for warm-up: measure from the next one
            self.mark = now
            return
        busy, frames = now[0] - self.mark[0], now[1] - self.mark[1]
        if frames < 1:
            return
        threads = torch.get_num_threads()
        per = busy / frames
        first = self.per_frame.get(1) if threads != 1 else None
        clear = first is not None and (per > self.CLEAR * first or per * self.CLEAR < first)
        if not clear and busy < self.WINDOW and frames < self.FRAMES:
            return
        self.per_frame[threads] = per
        self.mark = now
        if threads == 1:  # measured one thread: now all of them
            torch.set_num_threads(self.full)
            return
        best = min(self.per_frame, key=self.per_frame.get)
        torch.set_num_threads(best)
        self.enabled = False  # decided
        log.info("engine %s per frame: %d torch thread%s", ", ".join(
            f"{1000 * t:.0f} ms with {n}" for n, t in sorted(self.per_frame.items())), best,
            "" if best == 1 else "s")

    def restore(self) -> None:
        """Back to the count the run started with (call once, when the run ends)."""
        if not self.owner:
            return
        self.owner = False
        with _CpuThreads._lock:
            _CpuThreads._active -= 1
        if torch.get_num_threads() != self.full:
            torch.set_num_threads(self.full)


class _Run:
    """The threads and queues of one `upscale` call."""

    def __init__(self, source: Source, sink: Sink, engine, batch: int, queue_frames: int,
                 sbs: bool, progress) -> None:
        self.source, self.sink, self.engine = source, sink, engine
        self.batch = max(1, batch)
        self.frames_in: queue.Queue = queue.Queue(maxsize=max(2, queue_frames))
        self.frames_out: queue.Queue = queue.Queue(maxsize=max(2, queue_frames))
        self.sbs = sbs
        self.progress = progress
        self.stop_request = threading.Event()  # SIGINT/SIGTERM: stop reading new frames
        self.abort = threading.Event()  # an error somewhere: every stage stops
        self.error: BaseException | None = None
        self.failed = False
        self.total = source.info.frames
        self.max_frames: int | None = None  # stop after this many input frames (files)
        self.cut = False  # max_frames stopped the run before the input's end
        self.live = False  # live: run partial batches instead of waiting for a full one
        self.fresh: Callable[[Frame], bool] | None = None  # live: False drops a too-old frame

    def _fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        self.failed = True
        self.abort.set()

    # -- decode thread ----------------------------------------------------------------------
    def _decode(self) -> None:
        try:
            frames = iter(self.source)
            for taken, frame in enumerate(frames, 1):
                if self.stop_request.is_set() or not _put(self.frames_in, frame, self.abort, self.stop_request):
                    break
                if self.max_frames is not None and taken >= self.max_frames:
                    self.cut = self._more(frames)
                    break
        except StreamsrError as exc:  # the input went bad: finish the frames decoded so far first
            if self.error is None:
                self.error = exc
            self.failed = True
        except BaseException as exc:  # noqa: BLE001 - re-raised in the calling thread
            self._fail(exc)
        finally:
            _put(self.frames_in, _END, self.abort)

    @staticmethod
    def _more(frames: Iterator[Frame]) -> bool:
        """Whether the input has a frame after the ones taken (one more frame is decoded)."""
        try:
            return next(frames, None) is not None
        except StreamsrError:  # damage after the last frame taken: that part is cut too
            return True

    # -- encode thread ----------------------------------------------------------------------
    def _encode(self) -> None:
        try:
            while True:
                try:
                    item = self.frames_out.get(timeout=_POLL)
                except queue.Empty:
                    if self.abort.is_set():
                        return
                    continue
                if item is _END:
                    return
                rgb, frame = item
                self.sink.write(rgb, frame.pts, frame.time_base, name=frame.name,
                                duration=frame.duration)
                if self.progress is not None:
                    self.progress(self.sink.frames_written, self.total)
        except BaseException as exc:  # noqa: BLE001
            self._fail(exc)

    # -- batcher (calling thread) -----------------------------------------------------------
    def _batches(self, meta: collections.deque) -> Iterator[np.ndarray]:
        """Consecutive frames of one size, up to `batch` at a time, as uint8 (deep sources:
        uint16) NHWC arrays."""
        held: Frame | None = None
        while not self.abort.is_set():
            group: list[Frame] = [held] if held is not None else []
            held = None
            ended = False
            while len(group) < self.batch:
                if self.stop_request.is_set():
                    ended = True
                    break
                try:
                    item = self.frames_in.get(timeout=0 if (self.live and group) else _POLL)
                except queue.Empty:
                    if self.abort.is_set():
                        return
                    if self.live and group:
                        break  # live: run what has arrived rather than wait for a full batch
                    continue
                if item is _END:
                    ended = True
                    break
                if self.fresh is not None and not self.fresh(item):
                    continue
                if group and item.rgb.shape != group[0].rgb.shape:
                    held = item  # a new frame size starts the next batch
                    break
                group.append(item)
            if group:
                meta.append(group)
                yield np.stack([f.rgb for f in group])
            if ended and held is None:
                return

    def go(self) -> None:
        decoder = threading.Thread(target=self._decode, name="streamsr-decode", daemon=True)
        encoder = threading.Thread(target=self._encode, name="streamsr-encode", daemon=True)
        decoder.start()
        encoder.start()
        meta: collections.deque = collections.deque()
        threads = _CpuThreads(self.engine)
        try:
            for result in self.engine.map(self._batches(meta)):
                threads.tick()
                group = meta.popleft()
                if len(result) != len(group):
                    raise RuntimeError(f"engine returned {len(result)} frames for {len(group)}")
                if self.sbs:
                    result = side_by_side(np.stack([f.rgb for f in group]), result)
                for rgb, frame in zip(result, group, strict=True):
                    if not _put(self.frames_out, (rgb, frame), self.abort):
                        break
                if self.abort.is_set():
                    break
        except BaseException as exc:
            self._fail(exc)
        finally:
            threads.restore()
            if not self.abort.is_set():
                _put(self.frames_out, _END, self.abort)
            encoder.join()
            self.abort.set()  # release the decoder if it waits on a full queue
            decoder.join(timeout=10)
        if self.error is not None:
            raise self.error
