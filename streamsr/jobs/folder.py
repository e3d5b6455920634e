"""A folder of videos: upscale every file into OUT_DIR, spread over torchrun ranks, resumable.

Files are found recursively (hidden files skipped) and mirrored under OUT_DIR with the same
relative path; containers that cannot hold H.264 plus the usual audio become .mkv. Each rank
takes every WORLD_SIZE-th file of the sorted list (round-robin) and runs an ordinary stream
job (`jobs.stream`) on its own device. An output is written under a hidden temporary name and
renamed when complete, so a file with its final name is always finished: `resume=True` skips
those, and an interrupted folder run continues where it stopped. One bad file does not stop
the others; the failures are reported together at the end.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from streamsr.errors import ConfigError, InputError, Interrupted, OutputError, StreamsrError
from streamsr.jobs.parts import output_size_of
from streamsr.jobs.stream import resolve_model, upscale_stream
from streamsr.lock import OutputLock, lock_path_for
from streamsr.options import UpscaleOptions, options_from
from streamsr.runtime import DistEnv, ProcessGroup, device_for, dist_env
from streamsr.video.ffmpeg import main_video_stream
from streamsr.video.finished import check_finished, video_geometry
from streamsr.video.output_paths import output_name
from streamsr.video.source import IMAGE_EXTS

log = logging.getLogger(__name__)

VIDEO_EXTS = frozenset({".mp4", ".mkv", ".mov", ".m4v", ".avi", ".webm", ".ts", ".mts", ".m2ts",
                        ".flv", ".wmv", ".mpg", ".mpeg", ".3gp", ".ogv", ".vob", ".mxf"})
KEEP_EXTS = frozenset({".mp4", ".mkv", ".mov", ".m4v"})  # outputs keep these; others become .mkv
TMP_TAG = ".partial"


def list_videos(folder: Path, exclude: Path | None = None) -> list[Path]:
    """Video files under `folder` (recursive, sorted, no hidden files, nothing under `exclude`)."""
    found = []
    skip = exclude.resolve() if exclude is not None else None
    for root, dirs, files in os.walk(folder):
        rootp = Path(root)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                         and (skip is None or (rootp / d).resolve() != skip))
        for name in files:
            if not name.startswith(".") and Path(name).suffix.lower() in VIDEO_EXTS:
                found.append(rootp / name)
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def estimate_frames(path: Path) -> int | None:
    """A video's frame count from its header (the stream's count, else duration x frame rate),
    for progress totals; None when the header does not say or the file does not open."""
    import av

    if not path.is_file():  # never open a FIFO or device here: it could block
        return None
    try:
        with av.open(str(path)) as container:
            vs = main_video_stream(container)  # not a cover picture
            if vs is None:
                return None
            if vs.frames:
                return int(vs.frames)
            rate = vs.average_rate or vs.guessed_rate
            if vs.duration is not None and vs.time_base is not None:
                seconds = float(vs.duration * vs.time_base)
            elif container.duration:
                seconds = container.duration / 1e6
            else:
                return None
            return max(1, round(seconds * float(rate))) if rate else None
    except (OSError, ValueError, av.error.FFmpegError):
        return None


def _frames_total(videos: list[Path]) -> int | None:
    """Estimated frames of all `videos` (a file whose header says nothing counts as the mean of
    the others); None when no header says anything."""
    counts = [estimate_frames(v) for v in videos]
    known = [c for c in counts if c is not None]
    if not known:
        return None
    mean = sum(known) / len(known)
    return round(sum(c if c is not None else mean for c in counts))


def is_video_folder(folder: Path) -> bool:
    """True when `folder` holds videos and no images (a folder of images is one image sequence)."""
    if not folder.is_dir():
        return False
    top = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
    if any(p.suffix.lower() in IMAGE_EXTS for p in top):
        return False
    return any(p.suffix.lower() in VIDEO_EXTS for p in top) or bool(list_videos(folder))


def output_for(src_dir: Path, out_dir: Path, video: Path) -> Path:
    """OUT_DIR/<same relative path>, with .mkv for containers we do not write."""
    rel = video.relative_to(src_dir)
    if rel.suffix.lower() not in KEEP_EXTS:
        rel = rel.with_suffix(".mkv")
    return out_dir / rel


def temp_for(out: Path) -> Path:
    """Hidden name in the same folder with the same extension (so the container is the same)."""
    return out.with_name(f".{out.stem}{TMP_TAG}{out.suffix}")


@dataclass
class FolderStats:
    """What a folder run did, over all ranks."""

    files: int
    written: int = 0
    skipped: int = 0
    frames: int = 0
    seconds: float = 0.0
    output: str = ""
    failed: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> str:
        line = (f"{self.files} files: {self.written} written, {self.skipped} already finished"
                f"{f', {len(self.failed)} failed' if self.failed else ''}; {self.frames} frames in "
                f"{self.seconds:.1f} s -> {self.output}")
        return line


@dataclass
class _RankResult:
    written: int = 0
    frames: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)


def _plan(src_dir: Path, out_dir: Path, resume: bool, overwrite: bool) -> list[tuple[Path, Path]] | StreamsrError:
    """Rank 0: the (input, output) pairs still to do, or the error that stops the run."""
    if not src_dir.is_dir():
        return InputError(f"{src_dir} is not a folder")
    if out_dir.exists() and not out_dir.is_dir():
        return OutputError(f"{out_dir} exists and is not a folder")
    if out_dir.suffix.lower() in VIDEO_EXTS and not out_dir.exists():
        return OutputError(f"{src_dir} is a folder of videos: give a folder as OUTPUT, not {out_dir.name}")
    if out_dir.resolve() == src_dir.resolve():
        return OutputError("the output folder must differ from the input folder")
    videos = list_videos(src_dir, exclude=out_dir)
    if not videos:
        return InputError(f"{src_dir} holds no video files ({', '.join(sorted(VIDEO_EXTS))})")
    pairs = [(v, output_for(src_dir, out_dir, v)) for v in videos]
    outs = [o for _, o in pairs]
    if len(set(outs)) != len(outs):
        dup = next(o for o in outs if outs.count(o) > 1)
        return OutputError(f"two inputs would both be written to {dup}; rename one of them")
    inputs = {v.resolve() for v in videos}
    for video, out in pairs:
        for path in (out, temp_for(out)):
            if path.resolve() in inputs or (path.exists() and any(
                    os.path.samefile(path, v) for v in videos)):
                return OutputError(f"the output of {video} ({path}) would be written over an input; "
                                   f"give an output folder outside the input folder's files")
    # a temporary name left by a killed run is a file of the run too
    existing = [p for o in outs for p in (o, temp_for(o)) if p.exists()]
    if existing and not (resume or overwrite):
        return OutputError(f"{len(existing)} outputs exist already ({existing[0]}, ...): pass --resume "
                           f"to skip them or --overwrite to replace them")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for o in outs:
            o.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return OutputError(f"cannot create folders in {out_dir}: {exc.strerror or exc}")
    return pairs


def upscale_folder(src_dir: str | os.PathLike, out_dir: str | os.PathLike,
                   options: UpscaleOptions | None = None, *,
                   progress: Callable[[int, int | None], None] | None = None,
                   status: Callable[[str], None] | None = None, env: DistEnv | None = None,
                   handle_signals: bool = True, **keywords) -> FolderStats | None:
    """Upscale every video under `src_dir` into `out_dir`; files are shared round-robin over ranks.

    `options` (and/or keywords over them): see `UpscaleOptions` (`output.resume` skips finished
    outputs); `progress(frames, total)` counts this rank's frames against the frames its files
    hold by their headers (so a progress bar has an ETA over all the files), and `status(line)`
    gets "[k/n] input -> output" as each file starts. Rank 0 returns the totals of all ranks,
    other ranks None. Raises `InputError` naming the failed files after the others are done.
    """
    options = options_from(options, keywords)
    t0 = time.monotonic()
    env = env or dist_env()
    src_dir, out_dir = Path(src_dir), Path(output_name(out_dir))
    device = options.engine.device
    dev = device_for(env, device) if env.distributed else device
    resume, overwrite = options.output.resume, options.output.overwrite
    if options.output.image_ext is not None:
        raise ConfigError("--ext is for image outputs; a folder of videos is written as videos")
    with ProcessGroup(env, dev) as group, contextlib.ExitStack() as held:
        if env.main:
            plan = _plan(src_dir, out_dir, resume, overwrite)
            if not isinstance(plan, BaseException):
                try:  # one run per output folder at a time (rank 0 holds it for all ranks)
                    held.enter_context(OutputLock(lock_path_for(out_dir, folder=True), out_dir))
                except StreamsrError as exc:
                    plan = exc
        else:
            plan = None
        plan = group.broadcast(plan)
        if isinstance(plan, BaseException):
            raise plan
        module = resolve_model(options.model)
        # each file: a plain run into its temporary name (live feeds and rolling segments are
        # not files of a folder)
        per_file = options.replace(model=module, device=dev, overwrite=True, live=None,
                                   live_options=None, segment_time=None)
        mine = plan[env.rank::env.world_size]
        result, skipped = _upscale_mine(mine, per_file, overwrite, env, progress,
                                        status if env.main else None, handle_signals)
        results = group.all_gather((result.written, result.frames, skipped, result.failed))
    if not env.main:
        return None
    total = FolderStats(files=len(plan), seconds=time.monotonic() - t0, output=str(out_dir))
    for written, frames, skip, failed in results:
        total.written += written
        total.frames += frames
        total.skipped += skip
        total.failed.extend(failed)
    if total.failed:
        name, message = total.failed[0]
        raise InputError(f"{len(total.failed)} of {total.files} files failed (first: {name}: "
                         f"{message}); {total.summary()}")
    return total


def _upscale_mine(mine: list[tuple[Path, Path]], options: UpscaleOptions, overwrite: bool,
                  env: DistEnv, progress, status, handle_signals: bool) -> tuple[_RankResult, int]:
    """This rank's files: finished ones checked and skipped (unless `overwrite`), the others
    written into their temporary names; a failed file is recorded and the next one goes on."""
    result = _RankResult()
    skipped = 0
    todo = [(v, o) for v, o in mine if overwrite or not o.exists()]
    total = _frames_total([v for v, _ in todo]) if progress is not None else None
    out_size = output_size_of(options.model, options)
    for video, out in mine:
        if out.exists() and not overwrite:
            try:  # finished by an earlier run (resume), if it really is this input's output
                check_finished(video, out, out_size(*video_geometry(video)[:2]))
            except StreamsrError as exc:
                log.error("%s: %s", video, exc)
                result.failed.append((str(video), str(exc)))
                continue
            skipped += 1
            log.info("skipping %s: %s is finished", video, out)
            continue
        tmp = temp_for(out)
        base = result.frames
        if status is not None:
            k = result.written + len(result.failed) + 1
            status(f"[{k}/{len(todo)}] {video} -> {out}")

        def file_progress(done: int, _total: int | None, base: int = base) -> None:
            if progress is not None:
                progress(base + done, total)

        try:
            stats = upscale_stream(video, tmp, options, progress=file_progress if progress else None,
                                   handle_signals=handle_signals)
        except Interrupted:
            tmp.unlink(missing_ok=True)
            raise
        except StreamsrError as exc:
            tmp.unlink(missing_ok=True)
            log.error("%s: %s", video, exc)
            result.failed.append((str(video), str(exc)))
            continue
        os.replace(tmp, out)
        result.written += 1
        result.frames += stats.frames
        log.info("rank %d: %s -> %s (%d frames)", env.rank, video, out, stats.frames)
    return result, skipped
