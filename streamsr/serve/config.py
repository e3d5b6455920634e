"""`streamsr serve` configuration: one [server] table and one [[stream]] table per camera.

Every mistake is reported as one line that names the file, the stream and the key, before
anything is opened. Stream tables reuse the option parts of `UpscaleOptions`: live keys
(drop, max_latency, reconnect_max, ...) are `LiveOptions` fields, encoder keys are
`EncodeOptions` fields, so a key means the same here as in a preset or on the command line.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
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
from streamsr.options import load_preset
from streamsr.video.encoder import EncodeOptions
from streamsr.video.live import LiveOptions, is_network_uri

DEFAULT_PORT = 8600
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


class ServeConfigError(ConfigError):
    """A bad serve config: the message names the file, the stream and the key."""


@dataclass(frozen=True)
class Outputs:
    """Where one stream's x4 frames go: any combination of a file, rolling segments, a push."""

    file: str | None = None
    segments: str | None = None  # a strftime pattern, one file every segment_time seconds
    segment_time: float = 600.0
    push: str | None = None  # rtsp:// or rtmp:// server
    overwrite: bool = False  # replace an existing `file` output

    def targets(self) -> list[tuple[str, str]]:
        """(kind, destination) of each output that is set."""
        return [(kind, dst) for kind in ("file", "segments", "push")
                if (dst := getattr(self, kind)) is not None]


@dataclass(frozen=True)
class StreamConfig:
    """One camera (or file): its input, outputs, live options and encoder."""

    name: str
    input: str
    outputs: Outputs
    live: LiveOptions = field(default_factory=LiveOptions)
    encode: EncodeOptions = field(default_factory=EncodeOptions)
    max_pixels: int | None = None
    # feed a file at its frame rate, as a camera would (the streams bench; not a TOML key)
    realtime: bool = False

    @property
    def is_live(self) -> bool:
        return is_network_uri(self.input)


@dataclass(frozen=True)
class ServerConfig:
    """The [server] table: the HTTP listener and the one shared engine."""

    listen: str = f"127.0.0.1:{DEFAULT_PORT}"
    token: str | None = None
    model: str = "lite"
    device: str = "auto"
    precision: str = "auto"
    backend: str = "torch"
    batch: int | None = None  # frames per shared model call (None: the engine's choice)
    batch_timeout: float = 0.05  # seconds a partly filled batch waits for more frames
    threads: int | None = None

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)

    def engine_config(self) -> EngineConfig:
        return EngineConfig(device=self.device, precision=self.precision, backend=self.backend,
                            batch=self.batch, threads=self.threads)


@dataclass(frozen=True)
class ServeConfig:
    server: ServerConfig
    streams: tuple[StreamConfig, ...]
    path: Path | None = None


# keys of a [[stream]] table besides the LiveOptions fields
_OUTPUT_KEYS = {f.name for f in dataclasses.fields(Outputs)}
_ENCODE_KEYS = {"codec": "codec", "crf": "crf", "encoder_preset": "preset", "pix_fmt": "pix_fmt",
                "bitrate": "bitrate"}
_LIVE_KEYS = {f.name for f in dataclasses.fields(LiveOptions)} - {"options"}
_STREAM_KEYS = ({"name", "input", "max_pixels", "preset", "timeout"} | _OUTPUT_KEYS
                | set(_ENCODE_KEYS) | _LIVE_KEYS)
# A server that reads cameras for days reconnects forever unless told otherwise.
_SERVE_LIVE_DEFAULTS = {"reconnect_max": 0}


def load_config(path: str | os.PathLike) -> ServeConfig:
    """Read and check a serve config file (ServeConfigError: one line naming stream and key)."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ServeConfigError(f"serve config {path} not found") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ServeConfigError(f"cannot read serve config {path}: {exc}") from None
    return parse_config(data, str(path))


def parse_config(data: dict[str, Any], where: str = "config") -> ServeConfig:
    """Check a parsed config (the TOML tables as dicts)."""
    unknown = sorted(set(data) - {"server", "stream"})
    if unknown:
        raise ServeConfigError(f"{where}: unknown table {unknown[0]!r} (use [server] and [[stream]])")
    server = _server(data.get("server", {}), where)
    tables = data.get("stream", [])
    if not isinstance(tables, list):
        raise ServeConfigError(f"{where}: streams are [[stream]] tables (an array of tables)")
    streams: list[StreamConfig] = []
    for n, table in enumerate(tables, 1):
        stream = _stream(table, f"{where}: stream {table.get('name', f'#{n}')!r}")
        if any(s.name == stream.name for s in streams):
            raise ServeConfigError(f"{where}: stream {stream.name!r}: name: used by two streams")
        streams.append(stream)
    return ServeConfig(server, tuple(streams), Path(where) if where != "config" else None)


def _server(table: dict[str, Any], where: str) -> ServerConfig:
    where = f"{where}: [server]"
    values = _typed(table, ServerConfig, set(_fields(ServerConfig)), where)
    if "port" in table:
        raise ServeConfigError(f"{where}: port: use listen = \"HOST:PORT\"")
    return check_server(ServerConfig(**values), where)


def check_server(server: ServerConfig, where: str = "[server]") -> ServerConfig:
    """`server` when it can work: a listen address, a token off loopback, a sane batch."""
    try:
        host, port = server.host_port
        ip = ipaddress.ip_address(host) if host != "localhost" else ipaddress.ip_address("127.0.0.1")
    except ValueError:
        raise ServeConfigError(f"{where}: listen: want \"IP:PORT\" such as 127.0.0.1:{DEFAULT_PORT}, "
                               f"not {server.listen!r}") from None
    if not 0 <= port <= 65535:
        raise ServeConfigError(f"{where}: listen: port {port} is out of range")
    if not ip.is_loopback and not server.token:
        raise ServeConfigError(f"{where}: token: listening on {host} (not loopback) needs a token")
    if server.batch is not None and server.batch < 1:
        raise ServeConfigError(f"{where}: batch: must be at least 1")
    if server.batch_timeout < 0:
        raise ServeConfigError(f"{where}: batch_timeout: must be >= 0 seconds")
    return server


def _stream(table: Any, where: str) -> StreamConfig:
    if not isinstance(table, dict):
        raise ServeConfigError(f"{where}: a stream is a table")
    table = {k.replace("-", "_"): v for k, v in table.items()}
    for key in table:
        if key not in _STREAM_KEYS:
            raise ServeConfigError(f"{where}: {key}: unknown key (allowed: "
                                   f"{', '.join(sorted(_STREAM_KEYS))})")
    for key in ("name", "input"):
        if not isinstance(table.get(key), str) or not table[key]:
            raise ServeConfigError(f"{where}: {key}: required (a string)")
    if not NAME.fullmatch(table["name"]):
        raise ServeConfigError(f"{where}: name: letters, digits, - and _ only (up to 64)")
    outputs = Outputs(**_typed({k: v for k, v in table.items() if k in _OUTPUT_KEYS}, Outputs,
                               _OUTPUT_KEYS, where))
    if not outputs.targets():
        raise ServeConfigError(f"{where}: outputs: none (set file, segments and/or push)")
    if outputs.segment_time <= 0:
        raise ServeConfigError(f"{where}: segment_time: must be a positive number of seconds")
    preset_live, preset_encode = _preset(table.get("preset"), where)
    if "timeout" in table:  # as in presets and on the command line: both live timeouts
        timeout = table.pop("timeout")
        table.setdefault("open_timeout", timeout)
        table.setdefault("read_timeout", timeout)
    live_values = {**_SERVE_LIVE_DEFAULTS, **preset_live,
                   **_typed({k: v for k, v in table.items() if k in _LIVE_KEYS}, LiveOptions,
                            _LIVE_KEYS, where)}
    live = LiveOptions(**live_values)
    try:
        live.validate()
    except ConfigError as exc:
        key = next((k for k in live_values if k in str(exc).replace("-", "_")), "live options")
        raise ServeConfigError(f"{where}: {key}: {exc}") from None
    enc = {_ENCODE_KEYS[k]: v for k, v in table.items() if k in _ENCODE_KEYS}
    encode = EncodeOptions(**{**preset_encode,
                              **_typed(enc, EncodeOptions, set(_ENCODE_KEYS.values()), where)})
    max_pixels = table.get("max_pixels")
    if max_pixels is not None and (not isinstance(max_pixels, int) or max_pixels < 1):
        raise ServeConfigError(f"{where}: max_pixels: a positive whole number")
    return StreamConfig(table["name"], table["input"], outputs, live, encode, max_pixels)


def _preset(name: Any, where: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(live, encode) values of a stream's `preset`: a pipeline preset's live and encoder keys
    (its model and engine keys are the server's and are not used per stream)."""
    if name is None:
        return {}, {}
    if not isinstance(name, str):
        raise ServeConfigError(f"{where}: preset: {name!r} is not a string")
    try:
        values = load_preset(name)
    except ConfigError as exc:
        raise ServeConfigError(f"{where}: preset: {exc}") from None
    live = {k: v for k, v in values.items() if k in _LIVE_KEYS}
    encode = {_ENCODE_KEYS[k]: v for k, v in values.items() if k in _ENCODE_KEYS}
    if "encoder_options" in values:
        encode["options"] = dict(values["encoder_options"])
    return live, encode


def _fields(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _typed(table: dict[str, Any], cls: type, allowed: set[str], where: str) -> dict[str, Any]:
    """`table`'s values, each checked against `cls`'s field type (one line naming the key)."""
    hints = _fields(cls)
    out = {}
    for key, value in table.items():
        if key not in allowed:
            raise ServeConfigError(f"{where}: {key}: unknown key (allowed: "
                                   f"{', '.join(sorted(allowed))})")
        if not _matches(value, hints[key]):
            raise ServeConfigError(f"{where}: {key}: {value!r} is not {_describe(hints[key])}")
        out[key] = float(value) if _wants_float(hints[key]) and isinstance(value, int) else value
    return out


def _args(hint: Any) -> tuple[Any, ...]:
    return tuple(a for a in typing.get_args(hint) if a is not type(None)) or (hint,)


def _matches(value: Any, hint: Any) -> bool:
    for h in _args(hint):
        if h is bool and isinstance(value, bool):
            return True
        if h is int and isinstance(value, int) and not isinstance(value, bool):
            return True
        if h is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True
        if h is str and isinstance(value, str):
            return True
        if typing.get_origin(h) is dict and isinstance(value, dict):
            return True
    return False


def _wants_float(hint: Any) -> bool:
    return float in _args(hint) and int not in _args(hint)


def _describe(hint: Any) -> str:
    names = {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}
    return " or ".join(names.get(h, "a table") for h in _args(hint))
