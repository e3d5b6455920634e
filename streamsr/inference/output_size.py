"""Output sizes other than the model's x4: `--outscale 2`, or a target `--size 1280x-1`.

As Real-ESRGAN's `--outscale` does, the model always runs at its own scale and its output is
then downscaled, here with an antialiased bicubic (torch's, the filter of PIL's BICUBIC
reduction) on the engine's device, before the frame is rounded to 8 bits and leaves it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from torch import Tensor

from streamsr.errors import ConfigError
from streamsr.models.ops import resize_bicubic

MIN_OUTSCALE = 0.25  # below this the model's work is thrown away: use a smaller input instead


@dataclass(frozen=True)
class OutputSize:
    """The output size rule: a factor over the input, or a box the output fits in.

    `outscale`: output = input x outscale (at most the model's scale). `width`/`height`: the
    largest size with the input's aspect ratio that fits in width x height; a side of None
    (written -1 or 0 on the command line) follows from the other one. `even`: round both
    sides to even numbers (4:2:0 video encoders need them); otherwise to the nearest integer.
    """

    outscale: float | None = None
    width: int | None = None
    height: int | None = None
    even: bool = True

    def __post_init__(self) -> None:
        if self.outscale is not None:
            if self.width is not None or self.height is not None:
                raise ConfigError("give --outscale or --size, not both")
            s = self.outscale
            if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s) \
                    or s < MIN_OUTSCALE:
                raise ConfigError(f"--outscale must be a number from {MIN_OUTSCALE} to the "
                                  f"model's scale (4), got {s!r}")
        elif self.width is None and self.height is None:
            raise ConfigError("an output size needs --outscale or --size")
        for side in (self.width, self.height):
            if side is not None and (isinstance(side, bool) or not isinstance(side, int)
                                     or side < 1):
                raise ConfigError(f"--size sides must be whole numbers of pixels, got {side!r}")

    @classmethod
    def from_options(cls, outscale: float | None = None,
                     size: str | tuple[int | None, int | None] | None = None,
                     even: bool = True) -> OutputSize | None:
        """The rule for `--outscale`/`--size` ("WxH", "Wx-1", "-1xH" or a (W, H) tuple;
        -1, 0 or None: keep the aspect ratio); None when neither is given (plain x scale)."""
        if outscale is None and size is None:
            return None
        if size is None:
            try:
                outscale = float(outscale)
            except (TypeError, ValueError):
                raise ConfigError(f"--outscale must be a number, got {outscale!r}") from None
            return cls(outscale=outscale, even=even)
        w, h = parse_size(size) if isinstance(size, str) else size
        w, h = (None if v is None or v in (0, -1) else v for v in (w, h))
        if w is None and h is None:
            raise ConfigError("--size needs at least one side, e.g. 1280x-1 or -1x720")
        return cls(outscale=outscale, width=w, height=h, even=even)

    def for_input(self, width: int, height: int, scale: int) -> tuple[int, int]:
        """(width, height) of the output for an input of this size and a x`scale` model."""
        if self.outscale is not None:
            if self.outscale > scale:
                raise ConfigError(f"--outscale {self.outscale:g} is more than the model's x{scale}")
            w, h = width * self.outscale, height * self.outscale
        elif self.height is None or (self.width is not None
                                     and self.width * height <= self.height * width):
            w, h = float(self.width), height * self.width / width
        else:
            w, h = width * self.height / height, float(self.height)
        out = (self._round(w), self._round(h))
        if out[0] > width * scale or out[1] > height * scale:
            raise ConfigError(f"--size {self._spec()} asks for {out[0]}x{out[1]}, more than the "
                              f"model's x{scale} output of this {width}x{height} input "
                              f"({width * scale}x{height * scale}); streamsr only scales down "
                              "from there")
        return out

    def _round(self, x: float) -> int:
        return max(2, 2 * round(x / 2)) if self.even else max(1, round(x))

    def _spec(self) -> str:
        return f"{self.width or -1}x{self.height or -1}"

    def resize(self, y: Tensor, width: int, height: int, scale: int) -> Tensor:
        """The model's float NCHW output `y` for `width` x `height` inputs, downscaled to the
        output size (antialiased bicubic, values not clamped); `y` itself when it is that size."""
        w, h = self.for_input(width, height, scale)
        if (h, w) == tuple(y.shape[-2:]):
            return y
        return resize_bicubic(y, (h, w))


def parse_size(text: str) -> tuple[int, int]:
    """'1280x720' -> (1280, 720); '1280x-1' -> (1280, -1) (-1 or 0: from the aspect ratio)."""
    m = re.fullmatch(r"\s*(-1|\d+)\s*[xX:]\s*(-1|\d+)\s*", str(text))
    if not m:
        raise ConfigError(f"--size wants WIDTHxHEIGHT such as 1280x720 or 1280x-1, got {text!r}")
    return int(m.group(1)), int(m.group(2))
