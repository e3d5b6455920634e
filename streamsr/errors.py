"""User-facing errors.

Everything a user can cause (a missing file, a bad option, a corrupt video, a weights file that
does not match) raises a `StreamsrError` subclass. The CLI renders these as one line and exits
with `exit_code`; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class StreamsrError(Exception):
    """Base class of errors caused by input or environment, not by a bug."""

    exit_code: int = 2


class InputError(StreamsrError):
    """The input cannot be read: missing, not a video, no video stream, corrupt."""


class OutputError(StreamsrError):
    """The output cannot be written: exists without --overwrite, unwritable, disk full."""


class WeightsError(StreamsrError):
    """A weights or checkpoint file is unsafe, malformed, or does not match the model."""


class ConfigError(StreamsrError):
    """A bad option value, recipe, preset or model name."""


class SourceError(StreamsrError):
    """A live source could not be opened or stayed unreachable after every retry."""


class Interrupted(StreamsrError):
    """The user stopped the run (SIGINT/SIGTERM); output was finalised before raising."""

    def __init__(self, message: str, signum: int = 2) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum
