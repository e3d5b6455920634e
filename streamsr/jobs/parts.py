"""One video file in keyframe-aligned parts: over many torchrun processes, and resumable.

Rank 0 reads the input's keyframe index and plans contiguous parts (at least one per process,
about `part_frames` frames each); every rank upscales its share of the parts as ordinary streams
(`jobs.stream`: seek to the part's keyframe, decode up to the next part's first timestamp) into
`OUT.parts/part_NNNNN.mp4`; rank 0 then stream-copies the parts into OUT and copies audio,
subtitles and chapters once from the input. A part is finished when its final name exists
(it is written under a temporary name and renamed), and `OUT.parts/manifest.json` records the
plan, the input and the settings, so `resume=True` after an interruption redoes only the parts
that are missing, on any number of processes. `streamsr.api.upscale` picks this job for
torchrun runs and `resume=True` on a video file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import torch
from torch import nn

from streamsr import errors
from streamsr.errors import ConfigError, InputError, Interrupted, OutputError, StreamsrError
from streamsr.inference.output_size import OutputSize
from streamsr.jobs.stats import Stats
from streamsr.jobs.stream import resolve_model, upscale_stream
from streamsr.lock import OutputLock, lock_path_for
from streamsr.options import UpscaleOptions, options_from
from streamsr.runtime import DistEnv, ProcessGroup, device_for, dist_env
from streamsr.video.finished import check_finished, count_frames, video_geometry
from streamsr.video.output_paths import (
    check_input_name,
    check_not_input,
    check_output_name,
    name_too_long,
    output_name,
    short,
    side_format,
)
from streamsr.video.split import (
    KeyframeIndex,
    Segment,
    join_parts,
    part_offset,
    plan_segments,
    read_keyframe_index,
    segment_window,
)

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "streamsr-parts"
DEFAULT_PART_FRAMES = 1800  # about a minute at 30 fps: what a resumed run may have to redo
# Encoders whose packets MP4 holds (MP4 parts keep the input's time base exactly; MKV rounds to ms).
_MP4_CODECS = {"libx264", "libx265", "h264_nvenc", "hevc_nvenc", "av1_nvenc", "libsvtav1",
               "libaom-av1", "librav1e", "libvpx-vp9", "h264_qsv", "hevc_qsv", "mpeg4", "h264_vaapi",
               "hevc_vaapi"}


def parts_dir_for(dst: str | os.PathLike) -> Path:
    """Where the parts of `dst` are kept: OUT.parts/ next to it (same file system: atomic renames)."""
    dst = Path(dst)
    return dst.with_name(dst.name + ".parts")


def model_fingerprint(model: nn.Module) -> str:
    """sha256 of the model's parameters and buffers (names, shapes, bytes)."""
    h = hashlib.sha256(type(model).__name__.encode())
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _input_id(src: Path) -> dict:
    st = src.stat()
    return {"path": str(src.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


@dataclass
class PartsPlan:
    """What rank 0 decided, sent to every rank."""

    parts_dir: Path
    part_ext: str
    time_base: Fraction
    start_time: int | None
    segments: list[Segment]
    assignments: list[list[int]]  # per rank: indices of the segments it upscales
    width: int
    height: int
    rotation: int
    finished: bool = False  # OUT already exists and resume was asked: nothing to do

    def index(self) -> KeyframeIndex:
        """The parts of the index that segment windows need."""
        return KeyframeIndex(self.time_base, self.start_time, (), ())

    def part_path(self, seg: int, tmp: bool = False) -> Path:
        return self.parts_dir / f"part_{seg:05d}{'.tmp' if tmp else ''}{self.part_ext}"


def assign_contiguous(segments: list[Segment], world: int) -> list[list[int]]:
    """Split `segments` (in order) into `world` contiguous runs of about equal frame counts."""
    total = sum(max(1, s.frames) for s in segments)
    out: list[list[int]] = [[] for _ in range(world)]
    done = 0
    for s in segments:
        w = max(1, s.frames)
        rank = min(world - 1, int((done + w / 2) * world / total)) if total else 0
        out[rank].append(s.index)
        done += w
    return out


def _read_manifest(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == MANIFEST_FORMAT else None


def _write_manifest(parts_dir: Path, manifest: dict) -> None:
    """Write `manifest.json` atomically (temporary file + rename)."""
    try:
        parts_dir.mkdir(exist_ok=True)
        tmp = parts_dir / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        os.replace(tmp, parts_dir / MANIFEST)
    except OSError as exc:
        raise OutputError(f"cannot write {parts_dir}: {exc.strerror or exc}") from None


def _prepare(src: Path, dst: Path, *, world: int, resume: bool, overwrite: bool,
             part_frames: int, settings: dict,
             out_size: Callable[[int, int], tuple[int, int]]) -> PartsPlan:
    """Rank 0 (holding the output's lock): check paths, reuse or make the plan and the parts
    folder, share out the work. `out_size(w, h)`: the output frame size of a w x h input."""
    _check_paths(src, dst)
    parts_dir = parts_dir_for(dst)
    recorded = (_read_manifest(parts_dir / MANIFEST) or {}) if parts_dir.is_dir() else {}
    same_input = recorded.get("input") == _input_id(src)
    # a resumed run takes the input's geometry from its manifest: the input is not probed again
    geometry = recorded.get("geometry") if same_input else None
    width, height, rotation = tuple(geometry) if geometry else video_geometry(src)
    if dst.exists():
        if resume and not overwrite:
            check_finished(src, dst, out_size(width, height),
                           recorded=recorded.get("joined") if same_input else None)
            log.info("%s exists: already finished", dst)
            return PartsPlan(parts_dir, "", Fraction(1), None, [], [[] for _ in range(world)],
                             width, height, rotation, finished=True)
        if not overwrite:
            raise OutputError(f"{dst} exists; pass --overwrite to replace it (or --resume to keep it)")
    manifest = _reuse_or_plan(src, parts_dir, world=world, resume=resume, overwrite=overwrite,
                              part_frames=part_frames, settings=settings,
                              geometry=[width, height, rotation])
    plan = PartsPlan(parts_dir, manifest["part_ext"], Fraction(manifest["time_base"]),
                     manifest["start_time"], [Segment(**s) for s in manifest["segments"]], [],
                     width, height, rotation)
    for path in parts_dir.glob(f"part_*.tmp{plan.part_ext}"):
        path.unlink(missing_ok=True)  # left by an interrupted run
    todo = [s for s in plan.segments if not plan.part_path(s.index).exists()]
    if len(todo) < len(plan.segments):
        log.info("%d of %d parts already finished", len(plan.segments) - len(todo), len(plan.segments))
    plan.assignments = assign_contiguous(todo, world) if todo else [[] for _ in range(world)]
    return plan


def _check_paths(src: Path, dst: Path) -> None:
    """The input is a non-empty regular file, the output a file (not HLS/DASH) in a folder."""
    check_input_name(src)
    check_output_name(dst)
    if not src.exists():
        raise InputError(f"input not found: {src}")
    if not src.is_file():
        raise InputError(f"{src} is not a regular file")
    check_not_input(src, dst)
    if side_format(dst):
        raise ConfigError(f"{dst.name}: --resume and torchrun join parts into one file; an "
                          f"{side_format(dst).upper()} output (with its own segment files) runs "
                          f"without them")
    if not dst.parent.is_dir():
        raise OutputError(f"cannot write {dst}: folder {dst.parent} does not exist")
    if src.stat().st_size == 0:
        raise InputError(f"{src} is empty (0 bytes)")


def _reuse_or_plan(src: Path, parts_dir: Path, *, world: int, resume: bool, overwrite: bool,
                   part_frames: int, settings: dict, geometry: list[int]) -> dict:
    """The manifest of the parts folder when `resume` may keep it, else a new plan (old parts
    are removed only with `overwrite`)."""
    want = {"format": MANIFEST_FORMAT, "version": 1, "input": _input_id(src), "settings": settings}
    manifest = None
    if parts_dir.exists():
        manifest = _read_manifest(parts_dir / MANIFEST)
        if manifest is None and parts_dir.is_dir() and any(parts_dir.iterdir()):
            raise OutputError(f"{parts_dir} exists and is not a streamsr parts folder; move it away")
        same = manifest is not None and (manifest.get("input"), manifest.get("settings")) == (
            want["input"], settings)
        if manifest is not None and resume and same:
            log.info("resuming from %s", parts_dir)
        elif manifest is not None:
            # the parts of another run are work and files of their own: as an output, they
            # are replaced only with --overwrite
            if not overwrite:
                if not resume:
                    raise OutputError(f"{parts_dir} holds the parts of an unfinished run: pass "
                                      f"--resume to finish it or --overwrite to start over")
                what = "input" if manifest.get("input") != want["input"] else "settings"
                raise ConfigError(f"the parts in {parts_dir} were made from another {what}; pass "
                                  f"--overwrite to start over (or delete that folder)")
            log.info("starting over: removing the old parts in %s", parts_dir)
            shutil.rmtree(parts_dir)
            manifest = None
    if manifest is None:
        index = read_keyframe_index(src)
        frames = index.frames if index else 0
        parts = max(world, math.ceil(frames / max(1, part_frames)))
        segments = plan_segments(index, parts)
        codec = settings.get("codec", "libx264")
        manifest = {**want, "part_ext": ".mp4" if codec in _MP4_CODECS else ".mkv",
                    "time_base": str(index.time_base if index else Fraction(1, 90000)),
                    "start_time": index.start_time if index else None,
                    "frames": frames, "segments": [s.as_dict() for s in segments],
                    "geometry": geometry}
        _write_manifest(parts_dir, manifest)
        log.info("%s: %d frames in %d keyframe-aligned parts", src, frames, len(segments))
    return manifest


def output_size_of(module: nn.Module, options: UpscaleOptions) -> Callable[[int, int], tuple[int, int]]:
    """(w, h) of an input frame -> the output frame size `module` with `options` (--outscale,
    --size) writes."""
    scale = int(getattr(getattr(module, "config", None), "scale", None) or getattr(module, "scale", 4))
    resize = OutputSize.from_options(options.output.outscale, options.output.size)

    def out_size(w: int, h: int) -> tuple[int, int]:
        return resize.for_input(w, h, scale) if resize is not None else (w * scale, h * scale)

    return out_size


def _settings(module: nn.Module, options: UpscaleOptions) -> dict:
    """What decides the content of a part: the model and the options that change the content."""
    return {**options.content_settings(), "model": model_fingerprint(module)}


def _error_record(exc: BaseException) -> tuple[str, str]:
    return type(exc).__name__, str(exc)


def _raise_remote(rank: int, record: tuple[str, str]) -> None:
    name, message = record
    cls = getattr(errors, name, None)
    if isinstance(cls, type) and issubclass(cls, StreamsrError):
        raise cls(f"rank {rank}: {message}")
    raise RuntimeError(f"rank {rank} failed: {name}: {message}")


def upscale_parts(src: str | os.PathLike, dst: str | os.PathLike,
                  options: UpscaleOptions | None = None, *,
                  progress: Callable[[int, int | None], None] | None = None,
                  env: DistEnv | None = None, handle_signals: bool = True, **keywords) -> Stats:
    """Upscale one video file in keyframe-aligned parts on every torchrun rank, then join on rank 0.

    Works with one process too (that is how `--resume` runs). `options` (and/or keywords over
    them): see `UpscaleOptions`; `output.resume`, `output.part_frames` and `output.keep_parts`
    are this job's. Rank 0 returns the `Stats` of the joined output, other ranks those of their
    own parts.
    """
    options = options_from(options, keywords)
    t0 = time.monotonic()
    env = env or dist_env()
    src, dst = Path(src), Path(output_name(dst))
    dev = device_for(env, options.engine.device)
    module = resolve_model(options.model)
    out_size = output_size_of(module, options)
    with ProcessGroup(env, dev) as group, contextlib.ExitStack() as held:
        plan = group.broadcast(_plan_on_main(src, dst, env, module, options, out_size, held)
                               if env.main else None)
        if isinstance(plan, BaseException):
            raise plan
        mine = plan.assignments[env.rank]
        # every part: its window of the input, at the size of the video's first frame (the join
        # stream-copies them into one track), as a single run scales frames of another size
        per_part = options.replace(model=module, device=dev, overwrite=True, frames=None,
                                   live=None, segment_time=None,
                                   input_size=(plan.width, plan.height))
        done_frames, error, failure = _upscale_mine(src, plan, mine, per_part, env, progress,
                                                    handle_signals)
        results = group.all_gather(error)
        if failure is not None:
            raise failure
        for rank, record in enumerate(results):
            if record is not None:
                _raise_remote(rank, record)
        if plan.finished:
            written = count_frames(dst) if env.main else 0
        elif env.main:  # the other ranks may leave meanwhile
            written = _join(src, dst, plan, options.output.keep_parts)
        else:
            written = done_frames
    seconds = time.monotonic() - t0
    label = str(dst) if env.main else f"rank {env.rank}: {len(mine)} parts of {dst}"
    return Stats(frames=written, seconds=seconds, fps=written / seconds if seconds > 0 else 0.0,
                 output_bytes=dst.stat().st_size if env.main and dst.exists() else 0, output=label,
                 input_size=(plan.width, plan.height),
                 output_size=out_size(plan.width, plan.height))


def _plan_on_main(src: Path, dst: Path, env: DistEnv, module: nn.Module, options: UpscaleOptions,
                  out_size: Callable[[int, int], tuple[int, int]],
                  held: contextlib.ExitStack) -> PartsPlan | StreamsrError:
    """Rank 0: take the output's lock (held until the join is done) and plan, or the error."""
    try:
        check_output_name(dst)
        for kept in (parts_dir_for(dst), lock_path_for(dst)):
            why = name_too_long(kept)
            if why:
                raise OutputError(f"cannot write {short(kept)} (where --resume and "
                                  f"torchrun keep their work): {why}; use a shorter "
                                  f"output name")
        held.enter_context(OutputLock(lock_path_for(dst), dst))
        out = options.output
        return _prepare(src, dst, world=env.world_size, resume=out.resume, overwrite=out.overwrite,
                        part_frames=out.part_frames or DEFAULT_PART_FRAMES,
                        settings=_settings(module, options), out_size=out_size)
    except StreamsrError as exc:
        return exc


def _upscale_mine(src: Path, plan: PartsPlan, mine: list[int], options: UpscaleOptions,
                  env: DistEnv, progress, handle_signals: bool
                  ) -> tuple[int, tuple[str, str] | None, BaseException | None]:
    """This rank's parts, in order: (frames written, error record for the others, the error)."""
    segs = {s.index: s for s in plan.segments}
    total = sum(segs[i].frames for i in mine)
    done_frames = 0
    for i in mine:
        seg = segs[i]
        start, duration = segment_window(plan.index(), seg)
        tmp, final = plan.part_path(i, tmp=True), plan.part_path(i)
        base = done_frames

        def part_progress(done: int, _total: int | None, base: int = base) -> None:
            if progress is not None:
                progress(base + done, total)

        try:
            stats = upscale_stream(src, tmp, options.replace(start=start, duration=duration),
                                   progress=part_progress if progress else None,
                                   handle_signals=handle_signals)
        except Interrupted:
            tmp.unlink(missing_ok=True)
            raise
        except Exception as exc:  # noqa: BLE001 - reported to every rank
            tmp.unlink(missing_ok=True)
            log.error("rank %d, part %d: %s", env.rank, i, exc)
            return done_frames, _error_record(exc), exc
        if stats.frames > seg.frames:  # frames of another part: never keep a doubled frame
            tmp.unlink(missing_ok=True)
            failure = RuntimeError(f"part {i}: {stats.frames} frames decoded, but the part "
                                   f"has only {seg.frames}")
            return done_frames, _error_record(failure), failure
        if stats.frames != seg.frames:
            log.warning("part %d: %d frames decoded, the index has %d (damaged input?)",
                        i, stats.frames, seg.frames)
        os.replace(tmp, final)
        done_frames += stats.frames
        log.info("rank %d: part %d done (%d frames)", env.rank, i, stats.frames)
    return done_frames, None, None


def _join(src: Path, dst: Path, plan: PartsPlan, keep_parts: bool) -> int:
    """Rank 0: every part must be there (shared file system); stream-copy them into `dst`."""
    missing = [plan.part_path(s.index).name for s in plan.segments if not plan.part_path(s.index).exists()]
    if missing:
        raise OutputError(f"{len(missing)} parts are not in {plan.parts_dir} ({missing[0]}, ...): with "
                          f"several machines, OUT must be on a file system they all share")
    index = plan.index()
    parts = [(plan.part_path(s.index), part_offset(index, s), s.start_pts) for s in plan.segments]
    joined = plan.parts_dir / f"joined{dst.suffix}"
    written = join_parts(parts, joined, time_base=plan.time_base, copy_from=str(src),
                         rotation=plan.rotation)
    expected = sum(s.frames for s in plan.segments)
    os.replace(joined, dst)
    if written != expected:  # damaged input: keep the count, so --resume knows dst is finished
        log.warning("%s: %d frames joined, the input index has %d", dst, written, expected)
        manifest = _read_manifest(plan.parts_dir / MANIFEST) or {"format": MANIFEST_FORMAT}
        _write_manifest(plan.parts_dir, {**manifest, "joined": written})
        if not keep_parts:
            for part in plan.parts_dir.glob("part_*"):
                part.unlink(missing_ok=True)
    elif not keep_parts:
        shutil.rmtree(plan.parts_dir, ignore_errors=True)
    return written
