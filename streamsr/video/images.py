"""Images as input: a single image or a folder of images (natural sort order), one frame per
image, turned upright by its EXIF orientation; 16-bit images are scaled to 8 bits, alpha dropped,
grey expanded to RGB."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from streamsr.errors import InputError
from streamsr.video.color import ColorInfo
from streamsr.video.frame import check_pixels
from streamsr.video.source import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTS,
    IMAGE_TIME_BASE,
    Frame,
    Source,
    VideoInfo,
    check_window,
)

log = logging.getLogger(__name__)


def _natural_key(path: Path) -> list:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name)]


# EXIF orientation (1-8) -> the numpy steps that show the picture upright, as
# PIL.ImageOps.exif_transpose does: 2 mirror, 3 turn 180, 4 flip, 5 transpose, 6 turn 90
# clockwise, 7 transverse, 8 turn 90 counter-clockwise
_ORIENT = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1],
    8: lambda a: np.rot90(a, 1),
}


def exif_orientation(path: Path) -> int:
    """The EXIF orientation tag of an image file (1, upright, when it has none)."""
    try:
        from PIL import Image

        with Image.open(path) as im:
            if im.format == "PNG" and "exif" not in im.info:
                return 1  # Pillow would decode the whole PNG looking for a late eXIf chunk
            value = im.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - no Pillow, not an image Pillow knows, damaged EXIF
        return 1
    return value if isinstance(value, int) and value in _ORIENT else 1


def _read_image(path: Path) -> np.ndarray | None:
    """An image file as RGB uint8 (16-bit scaled down, alpha dropped, grey expanded), turned
    upright by its EXIF orientation (a portrait photo from a phone is stored on its side)."""
    import cv2

    try:
        img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED | cv2.IMREAD_ANYDEPTH | cv2.IMREAD_COLOR)
        if img is None:
            img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    except cv2.error:  # OpenCV's own limits (e.g. more than 2^30 pixels)
        return None
    if img is None:
        return None
    if img.dtype == np.uint16:
        img = (img.astype(np.uint32) * 255 + 32767) // 65535
    img = img.astype(np.uint8) if img.dtype != np.uint8 else img
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    elif img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    else:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    orientation = exif_orientation(path)
    if orientation != 1:  # IMREAD_UNCHANGED keeps the pixels as stored, ignoring EXIF
        img = _ORIENT[orientation](img)
    return np.ascontiguousarray(img)


def _image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from the image header, without decoding the pixels."""
    try:
        with av.open(str(path)) as c:
            cc = c.streams.video[0].codec_context
            if cc.width and cc.height:
                return cc.width, cc.height
    except (av.error.FFmpegError, IndexError):
        pass
    try:  # FFmpeg gives no size for images it will not decode (too large): read the header
        from PIL import Image

        with Image.open(path) as im:
            return im.size
    except ImportError:
        return None
    except Image.DecompressionBombError as exc:
        raise InputError(f"{path}: image too large to decode ({str(exc).splitlines()[0][:120]})") from None
    except Exception:  # not an image Pillow knows: OpenCV decides
        return None


class ImageSource(Source):
    """A single image or a folder of images (natural sort order), one frame per image.

    Each image keeps its own size unless `one_size` is set (a video output has one frame
    size): then images of another size are scaled to `info`'s (the first image's), with one
    warning naming the first such file, as a size change inside a video is.
    """

    one_size = False

    def __init__(self, uri: str, paths: list[Path], *, start: float | None = None,
                 duration: float | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> None:
        self.uri = uri
        check_window(start, duration)
        tb = IMAGE_TIME_BASE
        first = int(round((start or 0) / tb))
        last = first + int(round(duration / tb)) if duration else None
        self.paths = paths[first:last]
        self.window = (start, (start or 0) + duration if duration else None)
        if not self.paths:
            raise InputError(f"{uri}: no images in the requested --start/--duration window")
        self._first_index = first
        size = _image_size(self.paths[0])
        if size:
            check_pixels(str(self.paths[0]), *size, max_pixels)
        self._max_pixels = max_pixels
        self._warned_size = False
        img = _read_image(self.paths[0])
        if img is None:
            raise InputError(f"{self.paths[0]} is not an image OpenCV can read")
        h, w = img.shape[:2]
        self._first = img
        self.info = VideoInfo(width=w, height=h, fps=Fraction(1) / tb, time_base=tb,
                              frames=len(self.paths), duration=None, pix_fmt="rgb24",
                              color=ColorInfo(transfer="iec61966-2-1", range="pc"), rotation=0,
                              is_live=False, uri=uri)

    def __iter__(self) -> Iterator[Frame]:
        index = 0
        for k, path in enumerate(self.paths):
            img = self._first if k == 0 else None
            self._first = None
            if img is None:
                size = _image_size(path)
                if size:
                    check_pixels(str(path), *size, self._max_pixels)
                img = _read_image(path)
            if img is None:
                self.skipped_packets += 1
                log.warning("skipping %s: not a readable image", path)
                continue
            if self.one_size and img.shape[:2] != (self.info.height, self.info.width):
                img = self._to_first_size(img, path)
            yield Frame(img, self._first_index + k, IMAGE_TIME_BASE, index, time.monotonic(),
                        name=path.stem)
            index += 1
    def _to_first_size(self, img: np.ndarray, path: Path) -> np.ndarray:
        """An image of another size scaled to the first image's (area when it shrinks,
        bicubic when it grows); the first one warns."""
        import cv2

        w, h = self.info.width, self.info.height
        if not self._warned_size:
            self._warned_size = True
            log.warning("%s: %dx%d, not the %dx%d of the first image; scaling images of other "
                        "sizes to %dx%d (a video has one frame size)", path, img.shape[1],
                        img.shape[0], w, h, w, h)
        shrink = img.shape[1] >= w and img.shape[0] >= h
        return np.ascontiguousarray(cv2.resize(
            img, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC))


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside `folder`, in natural order (img2 before img10)."""
    return sorted((p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS),
                  key=_natural_key)
