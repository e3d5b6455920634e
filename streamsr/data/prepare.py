"""Training triplets [L_blur, L, H] from blurry/sharp HR pairs: GOPRO, your own footage, stills.

Every source ends up as HR pairs in the GOPRO layout, then as triplets (streamsr.data.triplets):

    DST/pairs/<split>/<seq>/{blur,sharp}/  HR pairs made by `frames` and `synthetic`
    DST/pairs/.<seq>.json                  `frames`: its settings, and the pair count once done

`frames` pairs resume: groups whose two PNGs exist are skipped, and changed settings clear the
sequence's old pairs and their triplets first. Decoding uses PyAV only; the H.264 round trip of
synthetic data takes its swscale flags from streamsr.video.ffmpeg, like the pipeline.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shutil
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from streamsr.data.gopro import IMAGE_EXTS, find_pairs, read_rgb, write_rgb
from streamsr.data.transforms import linear_to_srgb, srgb_to_linear
from streamsr.data.triplets import (
    DEFAULT_CROP,
    INDEX,
    KINDS,
    CropSettings,
    PrepareSummary,
    read_index,
    write_json_lines,
    write_triplets,
)
from streamsr.errors import ConfigError, InputError

log = logging.getLogger(__name__)

log = logging.getLogger(__name__)


# --- GOPRO --------------------------------------------------------------------------------------

def prepare_gopro(src: str | os.PathLike, dst: str | os.PathLike,
                  settings: CropSettings = DEFAULT_CROP, splits: Sequence[str] = ("train", "test"),
                  progress: bool = False, workers: int = 1) -> PrepareSummary:
    """Triplets from GOPRO_Large (`train/` and `test/`; the held-out split is `test`)."""
    pairs = [p for p in find_pairs(src) if not p.split or p.split in splits]
    return write_triplets(pairs, dst, settings, progress, workers)


# --- your own high-frame-rate footage -------------------------------------------------------------

def iter_frames(source: str | os.PathLike) -> Iterator[np.ndarray]:
    """uint8 RGB frames of a video file (decoded with PyAV) or of a folder of images (sorted)."""
    source = Path(source)
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_EXTS)
        if not files:
            raise InputError(f"no image files in {source}")
        for f in files:
            yield read_rgb(f)
        return
    if not source.exists():
        raise InputError(f"no such video or folder: {source}")
    import av  # imported here: only this source kind needs FFmpeg

    from streamsr.video.ffmpeg import main_video_stream

    try:
        container = av.open(str(source))
    except (av.error.FFmpegError, OSError) as exc:
        raise InputError(f"cannot open {source} as a video ({exc})") from None
    with container:
        stream = main_video_stream(container)  # not a cover picture or thumbnail track
        if stream is None:
            raise InputError(f"{source} has no video stream")
        stream.thread_type = "AUTO"
        try:
            for frame in container.decode(stream):
                yield frame.to_ndarray(format="rgb24")
        except av.error.FFmpegError as exc:
            raise InputError(f"{source}: decoding failed ({exc})") from None


def average_frames(frames: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(blurry, sharp): the mean of the frames in linear light, and the middle frame.

    This is how GOPRO was made: a long exposure is the sum of the light of short ones, so the
    frames are decoded from the sRGB curve, averaged, and re-encoded.
    """
    acc = np.zeros(frames[0].shape, np.float64)
    for f in frames:  # one frame at a time: K float copies of a 4K frame would be gigabytes
        acc += srgb_to_linear(f.astype(np.float64) / 255.0)
    blur = np.clip(np.round(linear_to_srgb(acc / len(frames)) * 255.0), 0, 255).astype(np.uint8)
    return blur, frames[len(frames) // 2]


def _pair_dir(dst: Path, split: str, seq: str, kind: str) -> Path:
    return dst / "pairs" / split / seq / kind


def _source_id(source: str | os.PathLike) -> dict:
    """Path, and for a file its size and modification time: a re-encoded clip is another source."""
    path = Path(source).resolve()
    rec: dict = {"source": str(path)}
    if path.is_file():
        st = path.stat()
        rec.update(size=st.st_size, mtime_ns=st.st_mtime_ns)
    return rec


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data), encoding="utf-8")
    os.replace(tmp, path)


def _forget_triplets(dst: Path, keep: Callable[[dict], bool]) -> int:
    """Delete the triplets of index records that `keep` rejects and drop those records."""
    records = read_index(dst)
    gone = [r for r in records if not keep(r)]
    if not gone:
        return 0
    for rec in gone:
        for name in rec["triplets"]:
            for kind in KINDS:
                (dst / rec["split"] / kind / f"{name}.png").unlink(missing_ok=True)
    write_json_lines(dst / INDEX, [r for r in records if keep(r)])
    return len(gone)


def _clear_sequence(dst: Path, seq: str) -> None:
    """Remove the pairs of `seq` in both splits, and the triplets cropped from them."""
    dirs = [dst / "pairs" / split / seq for split in ("train", "test")]
    mine = re.compile(rf"^{re.escape(seq)}_\d{{6}}$")  # keys of this sequence's pairs
    dropped = _forget_triplets(dst, lambda r: not mine.match(r["source"]))
    if dropped or any(d.exists() for d in dirs):
        log.info("%s: pairs of %s were made with other settings (or by an older version): "
                 "removing them and %d images' triplets", dst, seq, dropped)
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)
    (dst / "pairs" / f".{seq}.done").unlink(missing_ok=True)  # marker of older versions


def _frame_sequence(source: str | os.PathLike, dst: Path, want: dict) -> tuple[str, dict | None]:
    """The sequence name of `source`'s pairs and its recorded state (None: nothing made yet).

    Another clip of the same name (cam1/clip.mp4, cam2/clip.mp4) that owns the sequence gives
    this one its own, named after its path, instead of clearing the other's pairs.
    """
    seq = Path(source).stem or "frames"
    state = _read_json(dst / "pairs" / f".{seq}.json")
    settings = state.get("settings") if state else None
    recorded = settings.get("source") if isinstance(settings, dict) else None
    if recorded is not None and recorded != want["source"]:
        seq = f"{seq}_{hashlib.sha1(want['source'].encode()).hexdigest()[:8]}"
        log.info("%s: a clip of the same name from %s is already in %s; this one is sequence %s",
                 source, recorded, dst, seq)
        state = _read_json(dst / "pairs" / f".{seq}.json")
    return seq, state


def _average_groups(source: str | os.PathLike, average: int, dirs: dict, max_pairs: int | None,
                    progress: bool) -> tuple[int, int]:
    """Decode `source` and write one blurry/sharp pair per group of `average` frames into the
    train split, skipping groups already made; returns (groups, groups skipped)."""
    def made(name: str) -> bool:
        return any(all((dirs[split, kind] / name).exists() for kind in ("blur", "sharp"))
                   for split in ("train", "test"))

    group: list[np.ndarray] = []
    n = skipped = 0
    bar = tqdm(desc="pairs", unit="pair", disable=not progress)
    for frame in iter_frames(source):
        if group and frame.shape != group[0].shape:
            raise InputError(f"{source}: frame size changes mid-stream "
                             f"({group[0].shape[1]}x{group[0].shape[0]} -> {frame.shape[1]}x{frame.shape[0]})")
        group.append(frame)
        if len(group) < average:
            continue
        name = f"{n:06d}.png"
        if made(name):
            skipped += 1
        else:
            blur, sharp = average_frames(group)
            write_rgb(dirs["train", "blur"] / name, blur)
            write_rgb(dirs["train", "sharp"] / name, sharp)
        group = []
        n += 1
        bar.update()
        if max_pairs is not None and n >= max_pairs:
            break
    bar.close()
    return n, skipped


def _hold_out_last(dirs: dict, n: int, n_test: int) -> None:
    """Move the last `n_test` of `n` pairs to the test split (a resumed move may be half done)."""
    for i in range(n):
        split, other = ("test", "train") if i >= n - n_test else ("train", "test")
        for kind in ("blur", "sharp"):
            here, there = dirs[split, kind] / f"{i:06d}.png", dirs[other, kind] / f"{i:06d}.png"
            if there.exists():
                here.parent.mkdir(parents=True, exist_ok=True)
                os.replace(there, here)


def make_frame_pairs(source: str | os.PathLike, dst: str | os.PathLike, average: int,
                     val_fraction: float = 0.1, max_pairs: int | None = None,
                     progress: bool = False) -> int:
    """Write blurry/sharp HR pairs from groups of `average` consecutive frames; returns the count.

    Groups do not overlap. The last `val_fraction` of the groups (a block at the end of the clip,
    so held-out frames are not neighbours of training frames) go to the `test` split.

    Resumable: `pairs/.<seq>.json` records the settings (and, once finished, the count). A
    re-run with the same settings skips groups whose blur and sharp PNGs both exist (each is
    written atomically); other settings first remove this sequence's pairs and their triplets,
    so pairs made two ways are never mixed and no held-out pair stays in the training split.
    """
    if average < 3 or average % 2 == 0 or average > 255:
        raise ConfigError(f"--average must be an odd number in [3, 255] (the sharp frame is the "
                          f"middle one; every frame of a group is held in memory), got {average}")
    if max_pairs is not None and max_pairs < 1:
        raise ConfigError(f"--max-pairs must be at least 1, got {max_pairs}")
    if not 0 <= val_fraction < 1:
        raise ConfigError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    dst = Path(dst)
    want = {**_source_id(source), "average": average, "val_fraction": val_fraction,
            "max_pairs": max_pairs}
    seq, state = _frame_sequence(source, dst, want)
    state_path = dst / "pairs" / f".{seq}.json"
    if state and state.get("settings") == want and isinstance(state.get("pairs"), int):
        log.info("pairs from %s already made (%d); skipping decode", source, state["pairs"])
        return state["pairs"]
    if not state or state.get("settings") != want:
        _clear_sequence(dst, seq)
    dirs = {(split, kind): _pair_dir(dst, split, seq, kind)
            for split in ("train", "test") for kind in ("blur", "sharp")}
    for (split, _), d in dirs.items():
        if split == "train":
            d.mkdir(parents=True, exist_ok=True)
        for tmp in d.glob("*.tmp.png") if d.is_dir() else ():
            tmp.unlink()  # a PNG torn by an interruption (write_rgb renames when complete)
    _write_json(state_path, {"settings": want, "pairs": None})
    n, skipped = _average_groups(source, average, dirs, max_pairs, progress)
    if n == 0:
        raise InputError(f"{source} has fewer than {average} frames: no pair can be made")
    n_test = math.floor(n * val_fraction)
    if val_fraction > 0 and n_test == 0:
        log.warning("only %d pairs: none held out for validation", n)
    _hold_out_last(dirs, n, n_test)
    _write_json(state_path, {"settings": want, "pairs": n})
    log.info("%s: %d pairs (%d held out, %d already made)", source, n, n_test, skipped)
    return n


def prepare_frames(source: str | os.PathLike, dst: str | os.PathLike, average: int,
                   settings: CropSettings = DEFAULT_CROP, val_fraction: float = 0.1,
                   max_pairs: int | None = None, progress: bool = False,
                   workers: int = 1) -> PrepareSummary:
    """Pairs by averaging `average` consecutive frames (GOPRO's method), then triplets."""
    make_frame_pairs(source, dst, average, val_fraction, max_pairs, progress)
    return write_triplets(find_pairs(Path(dst) / "pairs"), dst, settings, progress, workers)


# --- synthetic camera shake on still images -------------------------------------------------------

def still_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise InputError(f"no such image folder: {folder}")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
    if not files:
        raise InputError(f"no images in {folder}")
    return files


def held_out(i: int, n: int, val_fraction: float) -> bool:
    """Whether item `i` of `n` is held out: every k-th, k = round(1 / fraction), at least one."""
    if val_fraction <= 0 or n < 2:
        return False
    k = max(2, min(n, round(1 / val_fraction)))
    return i % k == k - 1


def make_synthetic_pairs(images: str | os.PathLike, dst: str | os.PathLike, variants: int = 1,
                         seed: int = 0, val_fraction: float = 0.1, progress: bool = False,
                         synth: Callable[..., tuple[np.ndarray, np.ndarray]] | None = None,
                         **opts) -> int:
    """Blurry/sharp HR pairs from sharp stills with random camera shake; returns the pair count.

    Each (image, variant) draws from its own generator seeded by (seed, crc32(name), variant),
    so the pairs do not depend on order and a resumed run skips those already written. Whole
    images are held out (every k-th), never a variant of an image that is also trained on.
    """
    if synth is None:
        from streamsr.data.synthetic import synthetic_pair as synth
    _check_synthetic_options(variants, seed, val_fraction, opts)
    folder, dst = Path(images), Path(dst)
    files = still_images(folder)
    size = opts.get("size")
    need = (size, size) if isinstance(size, int) else size  # (h, w) of the random crop, or None
    small: list[str] = []
    n = 0
    for i, f in enumerate(tqdm(files, desc="synthesise", unit="img", disable=not progress)):
        split = "test" if held_out(i, len(files), val_fraction) else "train"
        rel = f.relative_to(folder).with_suffix("")
        stem = "_".join(rel.parts)
        dirs = {k: _pair_dir(dst, split, "synthetic", k) for k in ("blur", "sharp")}
        img = None
        for v in range(variants):
            name = f"{stem}_v{v}.png"
            if (dirs["blur"] / name).exists() and (dirs["sharp"] / name).exists():
                n += 1
                continue
            if img is None:
                img = read_rgb(f)
                if need and (img.shape[0] < need[0] or img.shape[1] < need[1]):
                    small.append(f"{f.relative_to(folder)} is {img.shape[1]}x{img.shape[0]}")
                    break
                for d in dirs.values():
                    d.mkdir(parents=True, exist_ok=True)
            rng = np.random.default_rng([seed, zlib.crc32(str(rel).encode()), v])
            blur, sharp = synth(img, rng, **opts)
            write_rgb(dirs["sharp"] / name, sharp)
            write_rgb(dirs["blur"] / name, blur)  # written last: its presence marks the pair done
            n += 1
    if small and n == 0:
        raise InputError(f"every image in {folder} is smaller than the --size {size} crop "
                         f"(first: {small[0]}); pass a smaller --size")
    if small:
        log.warning("%d of %d images are smaller than the --size %s crop and were skipped "
                    "(first: %s)", len(small), len(files), size, small[0])
    return n


def _check_synthetic_options(variants: int, seed: int, val_fraction: float, opts: dict) -> None:
    """Refuse option values that would crash deep inside (numpy's seed range) or make nonsense."""
    def number(key: str, v, lo: float, hi: float) -> None:
        if (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
                or not lo <= v <= hi):
            raise ConfigError(f"--{key} must be a number in [{lo:g}, {hi:g}], got {v!r}")

    if isinstance(variants, bool) or not isinstance(variants, int) or not 1 <= variants <= 10_000:
        raise ConfigError(f"--variants must be a whole number in [1, 10000], got {variants!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ConfigError(f"--seed must be a whole number in [0, 2^32), got {seed!r}")
    if not (isinstance(val_fraction, (int, float)) and 0 <= val_fraction < 1):
        raise ConfigError(f"--val-fraction must be in [0, 1), got {val_fraction!r}")
    size = opts.get("size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise ConfigError(f"--size must be a whole number of pixels >= 1, got {size!r}")
    for key, flag, hi in (("max_shift", "max-shift", 1e3), ("max_angle", "max-angle", 90.0),
                          ("noise_sigma", "noise", 255.0)):
        if key in opts:
            number(flag, opts[key], 0.0, hi)
    if "exposures" in opts:
        e = opts["exposures"]
        if isinstance(e, bool) or not isinstance(e, int) or not 1 <= e <= 1000:
            raise ConfigError(f"--exposures must be a whole number in [1, 1000], got {e!r}")
    q = opts.get("jpeg_quality")
    if q is not None and (isinstance(q, bool) or not isinstance(q, int) or not 1 <= q <= 100):
        raise ConfigError(f"--jpeg must be a quality in [1, 100], got {q!r}")


def prepare_synthetic(images: str | os.PathLike, dst: str | os.PathLike,
                      settings: CropSettings = DEFAULT_CROP, variants: int = 1, seed: int = 0,
                      val_fraction: float = 0.1, progress: bool = False, workers: int = 1,
                      **opts) -> PrepareSummary:
    """Synthetic camera-shake pairs from still images, then triplets."""
    make_synthetic_pairs(images, dst, variants, seed, val_fraction, progress, **opts)
    return write_triplets(find_pairs(Path(dst) / "pairs"), dst, settings, progress, workers)


def iter_sources(dst: str | os.PathLike) -> Iterable[str]:
    """Source keys already done in a prepared folder (for reports and tests)."""
    return [r["source"] for r in read_index(dst)]


__all__ = ["average_frames", "held_out", "iter_frames", "iter_sources", "make_frame_pairs", "still_images",
           "make_synthetic_pairs", "prepare_frames", "prepare_gopro", "prepare_synthetic"]
