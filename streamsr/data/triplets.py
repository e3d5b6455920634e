"""The triplet folder format: [L_blur, L, H] crops of blurry/sharp HR pairs, written resumably.

    DST/prepare.json                       patch/stride/scale, checked when a run resumes
    DST/index.jsonl                        one line per finished source image (split, triplets)
    DST/<split>/{lr_blur,lr,hr}/<name>.png the triplets (uint8 RGB, lossless)

Cropping follows the paper: HR blurry and sharp images are cut into `patch` x `patch` squares
at `stride` (256 / 128), a plain sliding window from the top-left corner; the strip of fewer than
`patch` pixels left at the right or bottom when (size - patch) is not a multiple of the stride is
not covered, and images smaller than a patch give none. L_blur and L are each HR crop shrunk x4
with `streamsr.models.ops.bicubic_uint8`, the project's one bicubic kernel.

Resuming: a source image counts as done once its index line is written (one line, after all of
its files); re-running skips done images, rewrites half-written ones, and drops a torn last line.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from streamsr.data.gopro import ImagePair, read_pair, read_rgb, write_rgb
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


DEFAULT_CROP = CropSettings()  # the paper's 256 / 128 crops


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

def write_json_lines(path: Path, records: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    os.replace(tmp, path)


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
        write_json_lines(path, list(done.values()))
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


__all__ = ["DEFAULT_CROP", "FORMAT", "INDEX", "KINDS", "SETTINGS", "CropSettings", "PrepareSummary", "crop_count",
           "crop_positions", "make_triplets", "read_index", "read_settings", "write_json_lines",
           "write_triplets"]
