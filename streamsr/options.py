"""Every option of an upscale run, in one frozen object built once and passed whole.

`UpscaleOptions` is made of parts that each layer reads: `engine` (how the model runs),
`encode` (the encoder), `input` (what part of the input is read, and how), `output` (how
outputs are written, resumed and split into parts) and `live` (network sources). It is built
from Python keywords (`from_keywords`, the names `streamsr.upscale` has always taken), from a
preset TOML (`load_preset`), or by the CLI from its flags, which win over a preset.

Keyword names come from the parts' dataclass fields: adding an option means adding a field
(and a CLI flag), nothing else. A few fields are spelled differently as keywords because two
parts use the same name (`encoder_preset`, `encoder_options`) or for compatibility.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from streamsr.errors import ConfigError
from streamsr.inference.engine import EngineConfig
from streamsr.video.encoder import EncodeOptions
from streamsr.video.live import LiveOptions
from streamsr.video.source import DEFAULT_MAX_PIXELS

# A field marked with this metadata describes one run, not a way of processing: presets cannot set it.
_PER_RUN = {"preset": False}


@dataclass(frozen=True)
class InputOptions:
    """What is read from the input, and how."""

    start: float | None = None  # seconds into the input
    duration: float | None = None  # seconds to process
    frames: int | None = None  # stop after this many input frames
    max_pixels: int | None = DEFAULT_MAX_PIXELS  # refuse larger frames (None: no limit)
    decoder: str = "software"  # software, cuda (NVDEC), auto
    # (W, H): frames of other sizes are scaled to it before the model (a part of a longer video)
    input_size: tuple[int, int] | None = field(default=None, metadata=_PER_RUN)
    live: bool | None = None  # live mode; None: on for network URLs


@dataclass(frozen=True)
class OutputOptions:
    """How outputs are written: what they show, their size, and how a job keeps its work."""

    overwrite: bool = field(default=False, metadata=_PER_RUN)
    side_by_side: bool = False  # left half bicubic, right half the model
    segment_time: float | None = None  # rolling files of this many seconds
    outscale: float | None = None  # output size as a factor of the input (downscale after x4)
    size: str | tuple[int | None, int | None] | None = None  # fit in W x H ("1280x-1")
    image_ext: str | None = None  # the format of a folder of images (png, jpg, ...)
    # keyframe-aligned parts kept in OUT.parts/ (torchrun, resume) and finished outputs reused
    resume: bool = field(default=False, metadata=_PER_RUN)
    part_frames: int | None = field(default=None, metadata=_PER_RUN)  # None: DEFAULT_PART_FRAMES
    keep_parts: bool = field(default=False, metadata=_PER_RUN)


@dataclass(frozen=True)
class UpscaleOptions:
    """All options of one upscale call (see the parts for each field)."""

    model: Any = "lite"  # "lite", "paper", a weights path, or an nn.Module
    engine: EngineConfig = field(default_factory=EngineConfig)
    encode: EncodeOptions = field(default_factory=EncodeOptions)
    input: InputOptions = field(default_factory=InputOptions)
    output: OutputOptions = field(default_factory=OutputOptions)
    live: LiveOptions = field(default_factory=LiveOptions)
    queue_frames: int | None = field(default=None, metadata=_PER_RUN)  # frames between stages
    status_interval: float = 5.0  # live: seconds between status lines (0: none)

    @classmethod
    def from_keywords(cls, **keywords: Any) -> UpscaleOptions:
        """Options from `streamsr.upscale`'s keyword names (defaults for the others)."""
        return cls().replace(**keywords)

    @classmethod
    def from_preset(cls, name: str | os.PathLike, **keywords: Any) -> UpscaleOptions:
        """Options from a preset (a bundled name or a .toml path); `keywords` win over it."""
        return cls().replace(**{**load_preset(name), **keywords})

    def replace(self, **keywords: Any) -> UpscaleOptions:
        """A copy with the options named by keyword changed (unknown names: TypeError)."""
        unknown = sorted(k for k in keywords if k not in keyword_fields())
        if unknown:
            raise TypeError(f"upscale() got unexpected options: {unknown}")
        changes: dict[str, dict[str, Any]] = {}
        top: dict[str, Any] = {}
        for key, value in keywords.items():
            part, name = keyword_fields()[key]
            if name is None:  # a whole part (live_options=LiveOptions(...))
                top[part] = value if value is not None else _part_types()[part]()
            elif part is None:
                top[name] = value
            else:
                if key == "encoder_options":
                    value = dict(value or {})
                changes.setdefault(part, {})[name] = value
        out = dataclasses.replace(self, **top) if top else self
        parts = {part: dataclasses.replace(top.get(part, getattr(out, part)), **values)
                 for part, values in changes.items()}
        return dataclasses.replace(out, **parts) if parts else out

    def content_settings(self) -> dict:
        """The options that change what an output contains (a resumed run must use the same
        ones): precision, backend and tiles, the encoder, the side-by-side view and the output
        size; as JSON values."""
        engine, encode, output = self.engine, self.encode, self.output
        out = {"precision": engine.precision, "backend": engine.backend, "tile": engine.tile,
               "codec": encode.codec, "crf": encode.crf, "encoder_preset": encode.preset,
               "pix_fmt": encode.pix_fmt, "bitrate": encode.bitrate,
               "encoder_options": dict(encode.options or {}),
               "side_by_side_view": output.side_by_side, "outscale": output.outscale,
               "size": output.size}
        return json.loads(json.dumps(out, default=str))


def options_from(options: UpscaleOptions | None, keywords: dict[str, Any]) -> UpscaleOptions:
    """`options` (default: the defaults) with `keywords` applied over it: how every job takes
    its options, so Python callers may pass either or both."""
    options = options if options is not None else UpscaleOptions()
    if not isinstance(options, UpscaleOptions):
        raise TypeError(f"options must be UpscaleOptions, not {type(options).__name__}")
    return options.replace(**keywords) if keywords else options


def _part_types() -> dict[str, type]:
    return {"engine": EngineConfig, "encode": EncodeOptions, "input": InputOptions,
            "output": OutputOptions, "live": LiveOptions}


# keyword -> (part, field) where the field's own name is taken by another part or has an
# older spelling that Python callers use
_RENAMED = {"encoder_preset": ("encode", "preset"), "encoder_options": ("encode", "options")}
_ALIASES = {"preset": ("encode", "preset"), "side_by_side_view": ("output", "side_by_side")}


def keyword_fields() -> dict[str, tuple[str | None, str | None]]:
    """keyword -> (part, field name): part None for UpscaleOptions' own fields, field None for
    a whole part (`live_options`)."""
    global _KEYWORDS
    if _KEYWORDS is None:
        table: dict[str, tuple[str | None, str | None]] = {}
        for f in dataclasses.fields(UpscaleOptions):
            if f.name not in _part_types():
                table[f.name] = (None, f.name)
        for part, cls in _part_types().items():
            for f in dataclasses.fields(cls):
                if f.name in ("options", "preset"):  # encode.options/preset: see _RENAMED
                    continue
                if f.name in table:
                    raise AssertionError(f"option {f.name} is in two parts")  # a programming error
                table[f.name] = (part, f.name)
        table.update(_RENAMED)
        table.update(_ALIASES)
        table["live_options"] = ("live", None)
        _KEYWORDS = table
    return _KEYWORDS


_KEYWORDS: dict[str, tuple[str | None, str | None]] | None = None


# ---- presets -------------------------------------------------------------------------------

# TOML keys that are spelled as the CLI flag rather than the field (kept for existing presets)
_PRESET_SPELLINGS = {"ext": ("image_ext",), "timeout": ("open_timeout", "read_timeout"),
                     "encoder_opt": ("encoder_options",)}


def _preset_field(key: str) -> dataclasses.Field | None:
    part, name = keyword_fields()[key]
    cls = UpscaleOptions if part is None else _part_types()[part]
    return next(f for f in dataclasses.fields(cls) if f.name == name) if name else None


def preset_keys() -> list[str]:
    """The TOML keys a preset may set: every option that is not about one particular run."""
    taken = {name for names in _PRESET_SPELLINGS.values() for name in names}
    keys = set(_PRESET_SPELLINGS)
    for key in keyword_fields():
        f = _preset_field(key)
        if key in _ALIASES or key in taken or f is None or not f.metadata.get("preset", True):
            continue
        keys.add(key)
    return sorted(keys)


def preset_dirs() -> tuple[Path, ...]:
    """Where named presets live: the installed package's presets (pipelines/ installed as
    streamsr/presets), else the checkout's pipelines/. Never the current directory."""
    package = Path(__file__).resolve().parent
    return package / "presets", package.parent / "pipelines"


def find_preset(name: str | os.PathLike) -> Path:
    """The file of preset `name`: a path the user gives (ending in .toml), else a bundled name."""
    text = os.fspath(name)
    if text.endswith(".toml"):
        path = Path(text).expanduser()
        if not path.is_file():
            raise ConfigError(f"preset file {text} not found")
        return path
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", text) or ".." in text:
        raise ConfigError(f"bad preset name {text!r}: use a plain name like dashcam (no paths)")
    for folder in preset_dirs():
        path = folder / f"{text}.toml"
        if path.is_file():
            return path
    known = sorted({p.stem for d in preset_dirs() if d.is_dir() for p in d.glob("*.toml")})
    raise ConfigError(f"no pipeline preset named {text!r} (known: {', '.join(known) or 'none'})")


def load_preset(name: str | os.PathLike) -> dict[str, Any]:
    """The option values of a preset as `from_keywords` names, type-checked.

    TOML keys take "-" or "_"; `ext` sets image_ext, `timeout` both live timeouts, and the table
    `encoder_opt` the FFmpeg encoder options; `description` is free text.
    """
    path = find_preset(name)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read preset {path}: {exc}") from None
    data.pop("description", None)
    allowed = preset_keys()
    values: dict[str, Any] = {}
    for key, value in data.items():
        norm = key.replace("-", "_")
        if norm not in allowed:
            raise ConfigError(f"preset {path}: unknown option {key!r} "
                              f"(allowed: {', '.join(allowed)})")
        if norm == "encoder_opt":
            if not isinstance(value, dict):
                raise ConfigError(f"preset {path}: encoder_opt must be a table of key = value")
            value = {str(k): str(v) for k, v in value.items()}
        else:
            _check_type(path, norm, value)
        for keyword in _PRESET_SPELLINGS.get(norm, (norm,)):
            values[keyword] = value
    return values


def _check_type(path: Path, key: str, value: Any) -> None:
    """A preset value must have its field's type (TOML has no None: leave the key out)."""
    names = _PRESET_SPELLINGS.get(key, (key,))
    f = _preset_field(names[0])
    part = keyword_fields()[names[0]][0]
    cls = UpscaleOptions if part is None else _part_types()[part]
    hint = typing.get_type_hints(cls).get(f.name) if f is not None else None
    if hint is None or _matches(value, hint):
        return
    raise ConfigError(f"preset {path}: bad value for {key}: {value!r} is not "
                      f"{_describe(hint)}")


def _matches(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, h) for h in typing.get_args(hint))
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin in (tuple, list):
        return isinstance(value, (list, tuple))
    if origin is dict:
        return isinstance(value, dict)
    return isinstance(value, hint) if isinstance(hint, type) else True


def _describe(hint: Any) -> str:
    args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    return " or ".join("a table" if typing.get_origin(a) is dict else
                       "a list" if typing.get_origin(a) in (tuple, list) else
                       getattr(a, "__name__", str(a)) for a in args)
