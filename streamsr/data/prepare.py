"""Training triplets [L_blur, L, H] from blurry/sharp HR pairs: GOPRO, your own footage, stills.

Every source ends up as HR pairs in the GOPRO layout, then as triplets:

    DST/prepare.json                       patch/stride/scale, checked when a run resumes
    DST/index.jsonl                        one line per finished source image (split, triplets)
    DST/<split>/{lr_blur,lr,hr}/<name>.png the triplets (uint8 RGB, lossless)
    DST/pairs/<split>/<seq>/{blur,sharp}/  HR pairs made by `frames` and `synthetic`
    DST/pairs/.<seq>.json                  `frames`: its settings, and the pair count once done

Cropping follows the paper: HR blurry and sharp images are cut into `patch` x `patch` squares
at `stride` (256 / 128), a plain sliding window from the top-left corner; the strip of fewer than
`patch` pixels left at the right or bottom when (size - patch) is not a multiple of the stride is
not covered, and images smaller than a patch give none. L_blur and L are each HR crop shrunk x4
with `streamsr.models.ops.bicubic_uint8`, the project's one bicubic kernel.

Resuming: a source image counts as done once its index line is written (one line, after all of
its files); re-running skips done images, rewrites half-written ones, and drops a torn last line.
`frames` pairs resume too: groups whose two PNGs exist are skipped, and changed settings clear
the sequence's old pairs and their triplets first.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import multiprocessing
import os
import re
import shutil
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from streamsr.data.gopro import IMAGE_EXTS, ImagePair, find_pairs, read_pair, read_rgb, write_rgb
from streamsr.data.transforms import linear_to_srgb, srgb_to_linear
from streamsr.errors import ConfigError, InputError, OutputError
from streamsr.models.ops import bicubic_uint8

log = logging.getLogger(__name__)

FORMAT = "streamsr-triplets-v1"
INDEX = "index.jsonl"
SETTINGS = "prepare.json"
KINDS = ("lr_blur", "lr", "hr")


@dataclass(frozen=True)
class CropSettings:
    """How HR pairs become triplets: patch and stride in HR pixels, down-sampling factor."""

    patch: int = 256
    stride: int = 128
    scale: int = 4

    def check(self) -> None:
        if self.patch <= 0 or self.stride <= 0 or self.scale <= 0:
            raise ConfigError("patch, stride and scale must be positive")
        if self.patch % self.scale:
            raise ConfigError(f"patch {self.patch} is not a multiple of the scale {self.scale}")


@dataclass
class PrepareSummary:
    """What a prepare run did: images cropped now, images skipped as done, triplets written."""

    dst: Path
    images_done: int = 0
    images_skipped: int = 0
    triplets: int = 0
    per_split: dict[str, int] = field(default_factory=dict)


def crop_positions(size: int, patch: int, stride: int) -> list[int]:
    """Top-left offsets of a sliding window: 0, stride, ... while the patch fits (border dropped)."""
    return list(range(0, size - patch + 1, stride)) if size >= patch else []


def crop_count(width: int, height: int, patch: int = 256, stride: int = 128) -> int:
    """Triplets one W x H image gives: ((W - p) // s + 1) * ((H - p) // s + 1), 0 if smaller."""
    return len(crop_positions(width, patch, stride)) * len(crop_positions(height, patch, stride))


def make_triplets(blur: np.ndarray, sharp: np.ndarray, settings: CropSettings
                  ) -> Iterator[tuple[int, int, np.ndarray, np.ndarray, np.ndarray]]:
    """(y, x, L_blur, L, H) for every crop of an HR pair (uint8 RGB HWC)."""
    p, lp = settings.patch, settings.patch // settings.scale
    h, w = sharp.shape[:2]
    for y in crop_positions(h, p, settings.stride):
        for x in crop_positions(w, p, settings.stride):
            hr_blur = blur[y:y + p, x:x + p]
            hr = np.ascontiguousarray(sharp[y:y + p, x:x + p])
            yield y, x, bicubic_uint8(hr_blur, (lp, lp)), bicubic_uint8(hr, (lp, lp)), hr


# --- the index ----------------------------------------------------------------------------------

def read_index(dst: str | os.PathLike) -> list[dict]:
    """The finished-image records of a prepared folder (a torn or malformed line is skipped)."""
    path = Path(dst) / INDEX
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            log.warning("%s: skipping a malformed line (interrupted write?)", path)
            continue
        if isinstance(rec, dict) and {"split", "source", "triplets"} <= set(rec):
            records.append(rec)
    return records


def _open_index(dst: Path) -> tuple[dict[tuple[str, str], dict], object]:
    """Load finished records, rewrite the index without torn lines, open it for appending."""
    records = read_index(dst)
    done = {(r["split"], r["source"]): r for r in records}
    path = dst / INDEX
    if path.exists():
        _write_json_lines(path, list(done.values()))
    return done, open(path, "a", encoding="utf-8")


def _check_settings(dst: Path, settings: CropSettings) -> None:
    """Write prepare.json, or refuse to mix triplets made with other crop settings."""
    path = dst / SETTINGS
    want = {"format": FORMAT, **asdict(settings)}
    if path.exists():
        try:
            have = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            raise InputError(f"{path} is corrupt; delete {dst} or choose another --dst") from None
        if have != want:
            raise ConfigError(f"{dst} was prepared with {have}, not {want}; use another --dst")
        return
    path.write_text(json.dumps(want, indent=1) + "\n", encoding="utf-8")


def read_settings(dst: str | os.PathLike) -> CropSettings:
    """The crop settings of a prepared folder."""
    path = Path(dst) / SETTINGS
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{dst} is not a prepared triplet folder (no {SETTINGS}); run "
                         f"`streamsr prepare ...` first") from None
    except ValueError:
        raise InputError(f"{path} is corrupt") from None
    if data.get("format") != FORMAT:
        raise InputError(f"{path}: unknown format {data.get('format')!r}")
    return CropSettings(data["patch"], data["stride"], data["scale"])


# --- the generic writer ---------------------------------------------------------------------------

def _crop_pair(pair: ImagePair, dst: Path, split: str, settings: CropSettings) -> list[str]:
    """Write every triplet of one pair; returns their names (runs in worker processes too)."""
    blur, sharp = read_pair(pair)
    names = []
    for y, x, lr_blur, lr, hr in make_triplets(blur, sharp, settings):
        name = f"{pair.key}_y{y:04d}_x{x:04d}"
        for kind, img in zip(KINDS, (lr_blur, lr, hr), strict=True):
            write_rgb(dst / split / kind / f"{name}.png", img)
        names.append(name)
    if not names:
        log.warning("%s is %dx%d, smaller than one %d px patch: no triplets",
                    pair.blur, sharp.shape[1], sharp.shape[0], settings.patch)
    return names


def _worker_setup() -> None:
    """One thread per worker process: the processes are the parallelism."""
    import torch

    torch.set_num_threads(1)


def write_triplets(pairs: Sequence[ImagePair], dst: str | os.PathLike,
                   settings: CropSettings = CropSettings(), progress: bool = False,
                   workers: int = 1) -> PrepareSummary:
    """Crop every pair not yet done into triplets under `dst`, recording each image in the index.

    `workers` > 1 crops images in that many processes; the index is still written by this
    process only, one line per finished image, so resuming works the same.
    """
    settings.check()
    dst = Path(dst)
    try:
        dst.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {dst}: {exc.strerror}") from None
    _check_settings(dst, settings)
    done, index = _open_index(dst)
    summary = PrepareSummary(dst)
    todo = []
    for pair in pairs:
        split = pair.split or "train"
        if (split, pair.key) in done:
            summary.images_skipped += 1
        else:
            todo.append((pair, split))
    for split in {s for _, s in todo}:
        for kind in KINDS:
            (dst / split / kind).mkdir(parents=True, exist_ok=True)

    def record(pair: ImagePair, split: str, names: list[str]) -> None:
        rec = {"split": split, "source": pair.key, "triplets": names}
        index.write(json.dumps(rec) + "\n")
        index.flush()
        os.fsync(index.fileno())
        done[(split, pair.key)] = rec
        summary.images_done += 1

    bar = tqdm(total=len(todo), desc="prepare", unit="img", disable=not progress)
    try:
        if workers > 1 and len(todo) > 1:
            ctx = multiprocessing.get_context("spawn")  # no fork after torch's thread pools start
            with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_setup) as pool:
                try:
                    futures = {pool.submit(_crop_pair, p, dst, s, settings): (p, s) for p, s in todo}
                    for fut in as_completed(futures):
                        record(*futures[fut], fut.result())
                        bar.update()
                except BaseException:
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise
        else:
            for pair, split in todo:
                record(pair, split, _crop_pair(pair, dst, split, settings))
                bar.update()
    finally:
        bar.close()
        index.close()
    for (split, _), rec in done.items():
        summary.per_split[split] = summary.per_split.get(split, 0) + len(rec["triplets"])
    summary.triplets = sum(summary.per_split.values())
    if summary.triplets == 0:
        _no_triplets(pairs, dst, settings)
    log.info("prepared %s: %d images now, %d skipped, %d triplets (%s)", dst, summary.images_done,
             summary.images_skipped, summary.triplets, summary.per_split)
    return summary


def _no_triplets(pairs: Sequence[ImagePair], dst: Path, settings: CropSettings) -> None:
    """Refuse a prepare run that made nothing: training on it could only fail later.

    The index and prepare.json it wrote are removed (they record only empty images), so a run
    with a smaller --patch can use the same --dst; pairs made under DST/pairs are kept for it.
    """
    for name in (INDEX, SETTINGS):
        (dst / name).unlink(missing_ok=True)
    for folder in sorted(dst.glob("*/*"), reverse=True):  # the empty <split>/<kind> folders
        if folder.name in KINDS and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
            if not any(folder.parent.iterdir()):
                folder.parent.rmdir()
    example = ""
    if pairs:
        try:
            h, w = read_rgb(pairs[0].sharp).shape[:2]
            example = f" ({pairs[0].sharp.name} is {w}x{h})"
        except InputError:
            pass
    kept = (f"; the blurry/sharp pairs in {dst / 'pairs'} are kept and a re-run reuses them"
            if (dst / "pairs").is_dir() else "")
    raise InputError(f"no triplets made: none of the {len(pairs)} images is at least "
                     f"{settings.patch}x{settings.patch} pixels{example}; pass a smaller --patch "
                     f"(HR pixels, a multiple of {settings.scale}){kept}")


# --- GOPRO --------------------------------------------------------------------------------------

def prepare_gopro(src: str | os.PathLike, dst: str | os.PathLike,
                  settings: CropSettings = CropSettings(), splits: Sequence[str] = ("train", "test"),
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
    _write_json_lines(dst / INDEX, [r for r in records if keep(r)])
    return len(gone)


def _write_json_lines(path: Path, records: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    os.replace(tmp, path)


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
    seq = Path(source).stem or "frames"
    state = _read_json(dst / "pairs" / f".{seq}.json")
    settings = state.get("settings") if state else None
    recorded = settings.get("source") if isinstance(settings, dict) else None
    if recorded is not None and recorded != want["source"]:
        # another clip of the same name (cam1/clip.mp4, cam2/clip.mp4) owns this sequence: give
        # this one its own, named after its path, instead of clearing the other's pairs
        seq = f"{seq}_{hashlib.sha1(want['source'].encode()).hexdigest()[:8]}"
        log.info("%s: a clip of the same name from %s is already in %s; this one is sequence %s",
                 source, recorded, dst, seq)
        state = _read_json(dst / "pairs" / f".{seq}.json")
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
    if n == 0:
        raise InputError(f"{source} has fewer than {average} frames: no pair can be made")
    n_test = math.floor(n * val_fraction)
    if val_fraction > 0 and n_test == 0:
        log.warning("only %d pairs: none held out for validation", n)
    for i in range(n):  # the last n_test pairs are held out (a resumed move may be half done)
        split, other = ("test", "train") if i >= n - n_test else ("train", "test")
        for kind in ("blur", "sharp"):
            here, there = dirs[split, kind] / f"{i:06d}.png", dirs[other, kind] / f"{i:06d}.png"
            if there.exists():
                here.parent.mkdir(parents=True, exist_ok=True)
                os.replace(there, here)
    _write_json(state_path, {"settings": want, "pairs": n})
    log.info("%s: %d pairs (%d held out, %d already made)", source, n, n_test, skipped)
    return n


def prepare_frames(source: str | os.PathLike, dst: str | os.PathLike, average: int,
                   settings: CropSettings = CropSettings(), val_fraction: float = 0.1,
                   max_pairs: int | None = None, progress: bool = False,
                   workers: int = 1) -> PrepareSummary:
    """Pairs by averaging `average` consecutive frames (GOPRO's method), then triplets."""
    make_frame_pairs(source, dst, average, val_fraction, max_pairs, progress)
    return write_triplets(find_pairs(Path(dst) / "pairs"), dst, settings, progress, workers)


# --- synthetic camera shake on still images -------------------------------------------------------

def _still_images(folder: Path) -> list[Path]:
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
    files = _still_images(folder)
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
                      settings: CropSettings = CropSettings(), variants: int = 1, seed: int = 0,
                      val_fraction: float = 0.1, progress: bool = False, workers: int = 1,
                      **opts) -> PrepareSummary:
    """Synthetic camera-shake pairs from still images, then triplets."""
    make_synthetic_pairs(images, dst, variants, seed, val_fraction, progress, **opts)
    return write_triplets(find_pairs(Path(dst) / "pairs"), dst, settings, progress, workers)


def iter_sources(dst: str | os.PathLike) -> Iterable[str]:
    """Source keys already done in a prepared folder (for reports and tests)."""
    return [r["source"] for r in read_index(dst)]


__all__ = ["CropSettings", "PrepareSummary", "average_frames", "crop_count", "crop_positions",
           "iter_frames", "make_frame_pairs", "make_synthetic_pairs", "make_triplets",
           "prepare_frames", "prepare_gopro", "prepare_synthetic", "read_index", "read_settings",
           "write_triplets"]
