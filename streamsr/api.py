"""`streamsr.upscale`: the one entry point for every upscale job, used by the CLI and by Python.

It looks at the input, the output and the options, and picks the job:
- a folder of videos -> `jobs.folder.upscale_folder` (every file, round-robin over torchrun ranks);
- a video file under torchrun (WORLD_SIZE > 1) or with `resume` -> `jobs.parts.upscale_parts`
  (keyframe-aligned parts, joined on rank 0);
- anything else (a file, an image, an image folder, a live feed, a push, rolling segments, a
  window of the input) -> `jobs.stream.upscale_stream` on rank 0 only.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from streamsr.jobs.folder import FolderStats, is_video_folder, upscale_folder
from streamsr.jobs.parts import upscale_parts
from streamsr.jobs.stats import Stats
from streamsr.jobs.stream import upscale_stream
from streamsr.options import UpscaleOptions, options_from
from streamsr.runtime import DistEnv, device_for, dist_env
from streamsr.video.live import is_network_uri
from streamsr.video.output_paths import check_input_name, output_name, side_format
from streamsr.video.segments import is_push_url
from streamsr.video.sink import is_image_output
from streamsr.video.source import IMAGE_EXTS, check_frames, check_window

log = logging.getLogger(__name__)

__all__ = ["FolderStats", "Stats", "UpscaleOptions", "upscale"]


def upscale(src: str | os.PathLike, dst: str | os.PathLike, options: UpscaleOptions | None = None,
            *, progress: Callable[[int, int | None], None] | None = None,
            status: Callable[[str], None] | None = None, handle_signals: bool = True,
            env: DistEnv | None = None, **keywords) -> Stats | FolderStats | None:
    """Upscale a video file, image, image folder, folder of videos or live feed x4 into `dst`.

    `options`: an `UpscaleOptions`; keywords (the field names, e.g. `model="lite"`, `crf=20`,
    `device="cpu"`, `live_options=LiveOptions(...)`) are applied over it, so either or both may
    be given. `model`: "lite" (bundled), "paper", a weights path, or an `nn.Module` (float NCHW
    [0,1] in, x4 out). `progress(done, total)` is called from the encode thread after each
    written frame (`total` is an estimate, or None); live runs and folders send `status(line)`
    lines. Returns `Stats` (`FolderStats` for a folder of videos), or None on torchrun ranks
    other than 0; raises `Interrupted` (after finalising the output) on SIGINT/SIGTERM, and
    `StreamsrError`s for bad input/output/options.
    """
    options = options_from(options, keywords)
    env = env or dist_env()
    if not env.main:
        progress = None
    check_input_name(src)  # a name too long to exist: one line, not an OSError from is_dir()
    # before the choice below, which takes 0 for "not given": frames=0 or duration=0.0 would
    # otherwise upscale the whole input in parts
    check_window(options.input.start, options.input.duration)
    check_frames(options.input.frames)
    if not is_push_url(str(dst)):
        dst = output_name(dst)  # file:NAME is NAME; other FFmpeg protocols are refused
    src_path = Path(str(src))
    if src_path.is_dir() and is_video_folder(src_path):
        return upscale_folder(src_path, dst, options, progress=progress, status=status, env=env,
                              handle_signals=handle_signals)
    why_plain = _why_not_parts(src, dst, options)
    resume = options.output.resume
    if why_plain is not None:
        if env.distributed or resume:
            log.warning("torchrun and --resume split video files into parts, not with %s: running "
                        "the plain pipeline%s", why_plain, " on rank 0" if env.distributed else "")
        if not env.main:
            return None
        if env.distributed:
            options = options.replace(device=device_for(env, options.engine.device))
    elif env.distributed or resume:
        stats = upscale_parts(src, dst, options, progress=progress, env=env,
                              handle_signals=handle_signals)
        return stats if env.main else None
    return upscale_stream(src, dst, options, progress=progress, status=status,
                          handle_signals=handle_signals)


def _why_not_parts(src: str | os.PathLike, dst: str | os.PathLike,
                   options: UpscaleOptions) -> str | None:
    """Why this job cannot be split into parts (the flags that prevent it), or None when it can:
    only a whole video file into a video file can."""
    inp = options.input
    special = [flag for flag, value in (("--start", inp.start), ("--duration", inp.duration),
                                        ("--frames", inp.frames),
                                        ("--segment-time", options.output.segment_time))
               if value]
    if inp.live or is_network_uri(str(src)):
        special.append("--live")
    if side_format(Path(dst)):  # HLS/DASH write segment files of their own: no parts to join
        special.append(f"--{side_format(Path(dst))}-output")
    src_path = Path(str(src))
    if special:
        return ", ".join(special)
    if src_path.is_dir() or src_path.suffix.lower() in IMAGE_EXTS or is_image_output(dst):
        return "images"
    return None
