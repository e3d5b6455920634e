"""On-disk cache of built artifacts (exported ONNX graphs, TensorRT engines), never trusted blindly.

Each entry is a file named by the sha256 of its key (model weights hash, shape, precision, GPU,
library versions, ...) and a JSON sidecar holding that key and the sha256 of the file's bytes.
An entry is used only when its sidecar names the same key and the bytes still hash to the
recorded value; anything else (a truncated write, a corrupted file, a key collision) is deleted
and rebuilt. Writes go to a temporary file renamed into place, the sidecar last, so a crash
leaves an entry without a sidecar, which is rebuilt too.

The root is $STREAMSR_CACHE_DIR, else $XDG_CACHE_HOME/streamsr, else ~/.cache/streamsr.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

from streamsr.errors import ConfigError

log = logging.getLogger(__name__)


def cache_root() -> Path:
    """Where compiled models are kept (see the module docstring)."""
    env = os.environ.get("STREAMSR_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "streamsr"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def key_name(fields: dict) -> str:
    """The file name stem of a key: sha256 of its canonical JSON."""
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:40]


class ArtifactCache:
    """Files under `root/kind/`, keyed by a JSON-able dict and checked on every load."""

    def __init__(self, kind: str, root: Path | None = None) -> None:
        self.folder = (root if root is not None else cache_root()) / kind

    def entry(self, fields: dict, suffix: str) -> Path:
        return self.folder / (key_name(fields) + suffix)

    def load(self, fields: dict, suffix: str) -> Path | None:
        """The entry's path when it is intact and made for exactly this key, else None
        (a bad entry is removed)."""
        path = self.entry(fields, suffix)
        side = path.with_name(path.name + ".json")
        if not path.exists() and not side.exists():
            return None
        try:
            meta = json.loads(side.read_text())
            if meta.get("key") == json.loads(json.dumps(fields)) and meta.get("sha256") == file_sha256(path):
                return path
            reason = "made for another key" if meta.get("key") != fields else "content changed"
        except (OSError, ValueError) as exc:
            reason = f"unreadable ({type(exc).__name__})"
        log.warning("cache entry %s is %s: rebuilding it", path.name, reason)
        self.remove(fields, suffix)
        return None

    def remove(self, fields: dict, suffix: str) -> None:
        path = self.entry(fields, suffix)
        for p in (path.with_name(path.name + ".json"), path):
            try:
                p.unlink()
            except FileNotFoundError:
                pass

    def store(self, fields: dict, suffix: str, write: Callable[[Path], None]) -> Path:
        """Build an entry with `write(tmp_path)` and put it in place atomically; returns it."""
        path = self.entry(fields, suffix)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create the model cache {self.folder} "
                              f"({exc.strerror or exc}); set STREAMSR_CACHE_DIR") from None
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        side = path.with_name(path.name + ".json")
        side_tmp = side.with_name(f".{side.name}.{os.getpid()}.tmp")
        try:
            write(tmp)
            side_tmp.write_text(json.dumps({"key": fields, "sha256": file_sha256(tmp)},
                                           sort_keys=True, indent=1))
            os.replace(tmp, path)
            os.replace(side_tmp, side)
        finally:
            for p in (tmp, side_tmp):
                if p.exists():
                    p.unlink()
        return path

    def get(self, fields: dict, suffix: str, write: Callable[[Path], None]) -> Path:
        """The cached entry, built (and stored) first when missing or bad."""
        return self.load(fields, suffix) or self.store(fields, suffix, write)
