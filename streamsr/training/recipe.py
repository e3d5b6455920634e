"""Training recipes: every hyperparameter in one flat TOML file, overridable with `--set k=v`.

A recipe selects values only (numbers, switches, and names looked up in plain dicts: a model
config, the degradations of photo data); it never imports code by name. Unknown keys and values
of the wrong type are refused, so a typo cannot silently fall back to a default.
"""

from __future__ import annotations

import math
import os
import re
import stat
import sys
import types
import typing
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, from PyPI
    import tomli as tomllib

from streamsr.data.degradations import DEFAULT_DEGRADATIONS, check_degradations
from streamsr.errors import ConfigError
from streamsr.models.configs import CONFIGS

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass(frozen=True)
class Recipe:
    """Everything a training run depends on besides the data and the initial weights."""

    name: str = "custom"
    model: str = "lite"  # a named model config: paper | lite | tiny
    # schedule
    epochs: int = 21
    max_steps: int = 0  # > 0: stop after this many optimizer steps (the cosine spans them)
    batch: int = 13  # per process; the global batch is batch x world size
    lr: float = 1e-4
    lr_min: float = 1e-5  # cosine annealing ends here
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    # loss: MSE(H_hat, H) + alpha * (sum Charbonnier + edge_weight * sum Edge)
    alpha: float = 0.5
    edge_weight: float = 0.05
    # data
    data: str = "prepared"  # prepared: a `streamsr prepare` folder; photos: sharp stills, shaken on the fly
    samples_per_epoch: int = 4096  # data = photos: samples drawn per epoch
    shake_max_shift: float = 24.0  # data = photos: longest shake path, HR pixels
    shake_max_noise: float = 2.0  # data = photos: Gaussian noise sigma drawn in [0, this], 8-bit values
    shake_camera_motion: float = 0.0  # data = photos: fraction blurred by a simulated clip's camera path
    shake_codec: float = 0.0  # data = photos: fraction of LR inputs sent through 4:2:0 H.264
    shake_crf: tuple[int, int] = (10, 28)  # data = photos: CRF range of that H.264 round trip
    # data = photos: the degradations applied, by name (streamsr.data.degradations); one left
    # out is off, as if its strength above were zero
    degradations: tuple[str, ...] = DEFAULT_DEGRADATIONS
    patch: int = 0  # LR crop fed to the network (random within a stored triplet); 0 = whole triplet
    augment: bool = True  # random flip and rot90
    train_split: str = "train"
    val_split: str = "test"
    val_max: int = 500  # at most this many validation triplets, evenly spaced; 0 = all
    val_batch: int = 8
    num_workers: int = 2
    # numerics and reproducibility
    precision: str = "auto"  # auto = bf16 on CUDA GPUs that support it, fp32 elsewhere
    seed: int = 0
    deterministic: bool = True
    # bookkeeping
    log_every: int = 20  # steps
    val_every: int = 0  # steps between extra validations; 0 = once per epoch only
    checkpoint_every: int = 1000  # steps; a checkpoint is also written at the end of every epoch
    keep_last: int = 3  # step/epoch checkpoints kept (the best weights are kept apart)

    def __post_init__(self) -> None:
        _check_types(self)
        if self.model not in CONFIGS:
            raise ConfigError(f"recipe model {self.model!r} is not one of {sorted(CONFIGS)}")
        if self.data not in ("prepared", "photos"):
            raise ConfigError(f"recipe data {self.data!r} is not 'prepared' or 'photos'")
        if self.data == "photos" and self.patch < 1:
            raise ConfigError("recipe data = 'photos' needs a patch size (LR pixels)")
        try:
            check_degradations(self.degradations)
        except ConfigError as exc:
            raise ConfigError(f"recipe degradations: {exc}") from None
        if self.precision not in PRECISIONS:
            raise ConfigError(f"recipe precision {self.precision!r} is not one of {PRECISIONS}")
        for key, (lo, hi) in _INT_RANGES.items():
            v = getattr(self, key)
            if not lo <= v <= hi:
                raise ConfigError(f"recipe {key} must be a whole number in [{lo}, {hi}], got {v}")
        for key, (lo, hi, open_low) in _FLOAT_RANGES.items():
            v = getattr(self, key)
            if not (lo < v <= hi if open_low else lo <= v <= hi):
                raise ConfigError(f"recipe {key} must be a finite number in {'(' if open_low else '['}"
                                  f"{lo:g}, {hi:g}], got {v}")
        if not self.lr_min <= self.lr:
            raise ConfigError(f"recipe needs 0 < lr_min <= lr, got lr={self.lr} lr_min={self.lr_min}")
        lo, hi = self.shake_crf
        if not (0 <= lo <= hi <= 51 and lo == int(lo) and hi == int(hi)):
            raise ConfigError(f"recipe shake_crf must be two whole numbers 0 <= low <= high <= 51, got {list(self.shake_crf)}")
        if not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"recipe betas must be in [0, 1), got {list(self.betas)}")
        if len(self.name) > 200 or not self.name.isprintable():
            raise ConfigError(f"recipe name must be printable text of at most 200 characters, "
                              f"got {self.name[:40]!r}")
        for key in ("train_split", "val_split"):  # folder names inside --data
            v = getattr(self, key)
            if not _SPLIT_RE.match(v) or v in (".", ".."):
                raise ConfigError(f"recipe {key} must be a folder name (letters, digits, . _ -), "
                                  f"got {v!r}")

    def to_dict(self) -> dict:
        """Plain values (tuples as lists), as stored in checkpoints and TOML."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def to_toml(self) -> str:
        """The recipe as TOML (round-trips through `load_recipe`)."""
        def fmt(v) -> str:
            if isinstance(v, bool):
                return "true" if v else "false"
            if isinstance(v, str):
                return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
            if isinstance(v, (list, tuple)):
                return "[" + ", ".join(fmt(x) for x in v) + "]"
            return repr(v)
        return "".join(f"{k} = {fmt(v)}\n" for k, v in self.to_dict().items())


_HINTS = typing.get_type_hints(Recipe)

# Ranges every recipe value must lie in: far beyond any real run, narrow enough that a typo or a
# hostile file cannot overflow a seed, allocate a billion-entry sample order or train with an
# infinite learning rate. Seeds go to numpy, which takes 0 <= seed < 2^32.
_INT_RANGES = {"epochs": (1, 100_000), "max_steps": (0, 10**9), "batch": (1, 4096),
               "samples_per_epoch": (1, 10**7), "patch": (0, 4096), "val_max": (0, 10**7),
               "val_batch": (1, 4096), "num_workers": (0, 256), "seed": (0, 2**32 - 1),
               "log_every": (1, 10**9), "val_every": (0, 10**9), "checkpoint_every": (1, 10**9),
               "keep_last": (1, 10_000)}
# (low, high, low excluded); NaN fails every comparison, so it is refused with the infinities
_FLOAT_RANGES = {"lr": (0.0, 1.0, True), "lr_min": (0.0, 1.0, True), "weight_decay": (0.0, 1.0, False),
                 "grad_clip": (0.0, 1e6, False), "alpha": (0.0, 1e3, False),
                 "edge_weight": (0.0, 1e3, False), "shake_max_shift": (0.0, 1e3, False),
                 "shake_max_noise": (0.0, 255.0, False), "shake_camera_motion": (0.0, 1.0, False),
                 "shake_codec": (0.0, 1.0, False)}
_SPLIT_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def _check_types(recipe: Recipe) -> None:
    """Every field of the type its annotation says (a Recipe built in Python is checked too)."""
    for f in fields(recipe):
        v, hint = getattr(recipe, f.name), _HINTS[f.name]
        if hint == tuple[str, ...]:
            ok = isinstance(v, tuple) and all(isinstance(x, str) for x in v)
        elif typing.get_origin(hint) is tuple:
            n = len(typing.get_args(hint))
            ok = (isinstance(v, tuple) and len(v) == n
                  and all(_is_number(x) and math.isfinite(x) for x in v))
        elif hint is float:
            ok = _is_number(v)
        elif hint is int:
            ok = isinstance(v, int) and not isinstance(v, bool)
        else:
            ok = isinstance(v, hint)
        if not ok:
            raise ConfigError(f"recipe {f.name} = {v!r} is not a valid {_type_name(hint)}")


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _coerce(key: str, value, source: str):
    """`value` as the type of recipe field `key`, or a ConfigError that says what was expected."""
    hint = _HINTS[key]
    bad = ConfigError(f"{source}: {key} = {value!r} is not a valid {_type_name(hint)}")
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise bad
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise bad
    if hint is str:
        if isinstance(value, str):
            return value
        raise bad
    if hint == tuple[str, ...]:  # names: a list of strings, or one comma-separated string
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise bad
    if typing.get_origin(hint) is tuple:
        n = len(typing.get_args(hint))
        if (isinstance(value, (list, tuple)) and len(value) == n
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
            return tuple(float(v) for v in value)
        raise bad
    raise TypeError(f"unsupported recipe field type {hint}")  # a bug, not a user error


def _type_name(hint) -> str:
    if isinstance(hint, type):
        return {"bool": "boolean (true/false)", "int": "integer", "float": "number",
                "str": "string"}.get(hint.__name__, hint.__name__)
    if hint == tuple[str, ...]:
        return "list of names"
    if isinstance(hint, types.GenericAlias) and typing.get_origin(hint) is tuple:
        return f"list of {len(typing.get_args(hint))} numbers"
    return str(hint)


def recipe_from_dict(data: dict, source: str = "recipe") -> Recipe:
    """A checked Recipe from plain values (unknown keys and wrong types are refused)."""
    known = {f.name for f in fields(Recipe)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{source}: unknown recipe key(s) {unknown}; known keys: {sorted(known)}")
    values = {k: _coerce(k, v, source) for k, v in data.items()}
    try:
        return Recipe(**values)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def load_recipe(path: str | os.PathLike) -> Recipe:
    """Read a flat TOML recipe."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
        if not stat.S_ISREG(mode):  # a FIFO would block the read forever
            raise ConfigError(f"recipe {path} is not a regular file "
                              f"({'a folder' if stat.S_ISDIR(mode) else 'a FIFO, socket or device'})")
        if path.stat().st_size > (1 << 20):
            raise ConfigError(f"recipe {path} is larger than 1 MB: not a recipe")
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"recipe not found: {path}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML ({str(exc).splitlines()[0]})") from None
    except OSError as exc:
        raise ConfigError(f"cannot read recipe {path}: {exc.strerror}") from None
    nested = [k for k, v in data.items() if isinstance(v, dict)]
    if nested:
        raise ConfigError(f"{path}: recipes are flat; unexpected table(s) {nested}")
    data.setdefault("name", path.stem)
    return recipe_from_dict(data, str(path))


def parse_override(text: str) -> tuple[str, object]:
    """`key=value` -> (key, value): the value is read as a TOML value, else as a bare string."""
    key, sep, raw = text.partition("=")
    key, raw = key.strip(), raw.strip()
    if not sep or not key:
        raise ConfigError(f"--set expects key=value, got {text!r}")
    if raw.startswith("(") and raw.endswith(")"):
        raw = "[" + raw[1:-1] + "]"
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # bare words such as `model=lite`
    if _HINTS.get(key) is str and not isinstance(value, str):
        value = raw  # `name=123` is the string "123"
    if _HINTS.get(key) == tuple[str, ...]:
        return key, value  # a TOML list of strings, or a bare comma-separated string
    if typing.get_origin(_HINTS.get(key)) is tuple and isinstance(value, str) and "," in value:
        try:
            value = [float(v) for v in value.split(",")]
        except ValueError:
            pass
    return key, value


def apply_overrides(recipe: Recipe, overrides: list[str] | tuple[str, ...]) -> Recipe:
    """The recipe with `key=value` overrides applied, each checked like a recipe file value."""
    changes = {}
    for text in overrides:
        key, value = parse_override(text)
        if key not in _HINTS:
            raise ConfigError(f"--set {text}: unknown recipe key {key!r}; known keys: {sorted(_HINTS)}")
        changes[key] = _coerce(key, value, f"--set {text}")
    if not changes:
        return recipe
    try:
        return replace(recipe, **changes)
    except ConfigError as exc:
        raise ConfigError(f"--set {' '.join(overrides)}: {exc}") from None


__all__ = ["Recipe", "apply_overrides", "load_recipe", "parse_override", "recipe_from_dict"]
