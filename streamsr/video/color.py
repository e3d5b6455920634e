"""Colour description of a video: FFmpeg's tag tables, the defaults players assume, swscale's
coefficient tables, and the one place an output stream is tagged.

Y'CbCr -> RGB uses the input's own matrix and range (untagged: BT.709 for HD, BT.601 for SD,
limited range), and RGB -> Y'CbCr uses the same, so colours survive the round trip; the output
is tagged with what it was converted with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from av.video.reformatter import ColorRange, Colorspace

if TYPE_CHECKING:
    from streamsr.video.source import VideoInfo

# FFmpeg's enum values (libavutil/pixfmt.h) <-> the names ffmpeg prints.
PRIMARIES = {1: "bt709", 4: "bt470m", 5: "bt470bg", 6: "smpte170m", 7: "smpte240m", 8: "film",
             9: "bt2020", 10: "smpte428", 11: "smpte431", 12: "smpte432", 22: "jedec-p22"}
TRANSFERS = {1: "bt709", 4: "gamma22", 5: "gamma28", 6: "smpte170m", 7: "smpte240m",
             8: "linear", 9: "log100", 10: "log316", 11: "iec61966-2-4", 12: "bt1361e",
             13: "iec61966-2-1", 14: "bt2020-10", 15: "bt2020-12", 16: "smpte2084",
             17: "smpte428", 18: "arib-std-b67"}
MATRICES = {0: "gbr", 1: "bt709", 4: "fcc", 5: "bt470bg", 6: "smpte170m", 7: "smpte240m",
            8: "ycgco", 9: "bt2020nc", 10: "bt2020c"}
RANGES = {1: "tv", 2: "pc"}
# Matrix name -> swscale coefficient table.
_SWS_MATRIX = {"bt709": Colorspace.ITU709, "fcc": Colorspace.FCC, "bt470bg": Colorspace.ITU601,
               "smpte170m": Colorspace.ITU601, "smpte240m": Colorspace.SMPTE240M,
               "bt2020nc": Colorspace.BT2020, "bt2020c": Colorspace.BT2020}


@dataclass(frozen=True)
class ColorInfo:
    """Colour description as tagged in the input (ffmpeg names; None when untagged)."""

    primaries: str | None = None
    transfer: str | None = None
    matrix: str | None = None
    range: str | None = None  # "tv" (limited) or "pc" (full)


def read_color(*tagged) -> ColorInfo:
    """The colour tags of the first of `tagged` (decoded frames, codec contexts) that has each
    one: a frame's own tags win over its stream header's."""
    def first(attr: str, names: dict[int, str]) -> str | None:
        value = None
        for t in tagged:  # as `a or b`: the last one's value when none is set (0: gbr)
            value = getattr(t, attr)
            if value:
                break
        return names.get(value)

    return ColorInfo(first("color_primaries", PRIMARIES), first("color_trc", TRANSFERS),
                     first("colorspace", MATRICES), first("color_range", RANGES))


def tag_color(codec_context, color: ColorInfo) -> None:
    """Write `color` into an encoder's codec context (and so into the output stream's header);
    a None field leaves that tag as it is."""
    for attr, names, value in (("color_primaries", PRIMARIES, color.primaries),
                               ("color_trc", TRANSFERS, color.transfer),
                               ("colorspace", MATRICES, color.matrix),
                               ("color_range", RANGES, color.range)):
        if value is not None:
            setattr(codec_context, attr, {v: k for k, v in names.items()}[value])


def default_matrix(width: int, height: int) -> str:
    """The matrix players assume for untagged video: BT.709 for HD, BT.601 for SD."""
    return "bt709" if width >= 1280 or height > 576 else "smpte170m"


def effective_matrix(info: VideoInfo) -> str:
    """The Y'CbCr matrix the source decoded with (tag, or the size-based default)."""
    m = info.color.matrix
    return m if m in _SWS_MATRIX else default_matrix(info.width, info.height)


def effective_range(info: VideoInfo) -> str:
    """"pc" for full-range input, else "tv"."""
    return "pc" if info.color.range == "pc" else "tv"


def sws_matrix(name: str) -> Colorspace:
    """swscale's coefficient table for a matrix name (BT.601 when unknown)."""
    return _SWS_MATRIX.get(name, Colorspace.ITU601)


def sws_range(name: str) -> ColorRange:
    return ColorRange.JPEG if name == "pc" else ColorRange.MPEG
