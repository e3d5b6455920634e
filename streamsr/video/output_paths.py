"""Which local files an output name makes FFmpeg write, so that all of them are checked.

FFmpeg opens a name through the protocol its prefix names: `file:out.mp4` and
`file:///abs/in.mp4` are local files that `Path(name).exists()` does not see, `pipe:1` is
stdout, `http://...` a server. And some containers write files of their own beside the one
named: an HLS playlist `out.m3u8` writes `out0.ts`, `out1.ts`, ...; a DASH manifest writes
`init-stream0.m4s` and `chunk-stream0-00001.m4s` (and `out.mpd.tmp` while it updates).
`output_file` turns a name into the local path FFmpeg would write (refusing other protocols),
`written_files` lists every existing file a run would write over, and `check_not_input`
refuses any of them that is the input itself. Names longer than the file system allows are
refused in one line instead of an `OSError` from the first `stat`.
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

from streamsr.errors import ConfigError, InputError, OutputError

# FFmpeg's protocols (`ffmpeg -protocols`, 8.x, plus the RTSP muxer's schemes): a name that
# starts with one of these and a colon is opened through it, not as a local file of that name.
FFMPEG_PROTOCOLS = frozenset({
    "android_content", "async", "bluray", "cache", "concat", "concatf", "crypto", "data", "dtls",
    "fd", "ffrtmpcrypt", "ffrtmphttp", "file", "ftp", "gopher", "gophers", "hls", "http",
    "httpproxy", "https", "icecast", "ipfs", "ipns", "librist", "librtmp", "librtmpe",
    "librtmps", "librtmpt", "librtmpte", "libsmbclient", "libsrt", "libssh", "libzmq", "md5",
    "mmsh", "mmst", "pipe", "prompeg", "rist", "rtmp", "rtmpe", "rtmps", "rtmpt", "rtmpte",
    "rtmpts", "rtp", "rtsp", "rtsps", "sctp", "sftp", "smb", "srt", "srtp", "subfile", "tcp",
    "tee", "tls", "udp", "udplite", "unix", "zmq"})
_SCHEME = re.compile(r"([A-Za-z0-9+.-]+):")  # FFmpeg's URL_SCHEME_CHARS, then a colon
_SHORT = 60  # characters of a long name kept in messages

# Containers that write files of their own beside the named one: extension -> patterns of
# those files' names (in the named file's folder) made from the name's stem.
_HLS = "hls"
_DASH = "dash"
_SIDE_FORMATS = {".m3u8": _HLS, ".mpd": _DASH}


def url_scheme(name: str) -> str | None:
    """The FFmpeg protocol `name` would be opened with (lower case), or None for a local name."""
    if name.startswith("subfile,") and ":" in name:  # FFmpeg's one scheme spelled with a comma
        return "subfile"
    m = _SCHEME.match(name)
    if not m:
        return None
    scheme = m.group(1).lower()
    return scheme if scheme in FFMPEG_PROTOCOLS or scheme.split("+")[0] in FFMPEG_PROTOCOLS else None


def local_file(name: str | os.PathLike) -> Path | None:
    """The local path a name means to FFmpeg (`file:` stripped), or None for another protocol."""
    text = os.fspath(name)
    scheme = url_scheme(text)
    if scheme is None:
        return Path(text)
    if scheme != "file":
        return None
    rest = text[len("file:"):]
    return Path(re.sub(r"^/+", "/", rest)) if rest else None


def output_file(dst: str | os.PathLike) -> Path:
    """The local file an output name makes FFmpeg write; OutputError for any other protocol
    (`pipe:`, `http:`, `crypto:`, ...), whose writes no overwrite check could cover. (Push
    URLs, rtsp:// and rtmp://, are told apart before this by `segments.is_push_url`.)"""
    text = os.fspath(dst)
    path = local_file(text)
    if path is None:
        scheme = url_scheme(text) or "?"
        raise OutputError(f"cannot write to {short(text)}: outputs are local files (or a push to "
                          f"rtsp:// / rtmp://), not FFmpeg's {scheme}: protocol")
    return path


def output_name(dst: str | os.PathLike) -> str:
    """`output_file` as text, keeping a trailing "/" (which makes the output a folder)."""
    text = os.fspath(dst)
    name = str(output_file(text))
    return name + "/" if text.endswith(("/", os.sep)) and not name.endswith("/") else name


def ffmpeg_name(path: str | os.PathLike) -> str:
    """`path` spelled so FFmpeg opens that local file: a relative name whose start looks like a
    protocol (`cam:01.mp4`) gets `./` in front."""
    text = os.fspath(path)
    return "./" + text if _SCHEME.match(text) or url_scheme(text) else text


def short(name: str | os.PathLike) -> str:
    """A name for a one-line message: long ones are cut in the middle."""
    text = os.fspath(name)
    return text if len(text) <= 2 * _SHORT else f"{text[:_SHORT]}...{text[-_SHORT // 2:]}"


def name_too_long(path: Path) -> str | None:
    """Why `path` cannot exist on its file system (a component or the whole path longer than
    it allows), or None."""
    parent = path.parent
    while not _exists(parent) and parent != parent.parent:
        parent = parent.parent
    try:
        name_max = os.pathconf(parent if str(parent) else ".", "PC_NAME_MAX")
        path_max = os.pathconf(parent if str(parent) else ".", "PC_PATH_MAX")
    except (OSError, ValueError):
        name_max, path_max = 255, 4096
    for part in path.parts:
        size = len(os.fsencode(part))
        if size > name_max:
            return f"file name too long ({size} bytes; the file system allows {name_max})"
    size = len(os.fsencode(str(path.absolute())))
    if size >= path_max:
        return f"path too long ({size} bytes; the system allows {path_max - 1})"
    return None


def check_input_name(src: str | os.PathLike) -> None:
    """InputError for an input name that cannot exist (too long); URLs are left alone."""
    path = local_file(src)
    if path is None:
        return
    why = name_too_long(path)
    if why:
        raise InputError(f"input not found: {short(src)}: {why}")


def check_output_name(path: Path) -> None:
    """OutputError for an output name the file system cannot hold."""
    why = name_too_long(path)
    if why:
        raise OutputError(f"cannot write {short(path)}: {why}")


def _exists(path: Path) -> bool:
    try:
        path.lstat()
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ENAMETOOLONG, errno.ELOOP):
            return False
        raise
    return True


def side_format(path: Path) -> str | None:
    """"hls" / "dash" when the container named by `path` writes files of its own beside it."""
    return _SIDE_FORMATS.get(path.suffix.lower())


def side_files(path: Path) -> list[Path]:
    """Existing files the container of `path` would write besides `path` itself."""
    kind = side_format(path)
    if kind is None:
        return []
    folder = path.parent if str(path.parent) else Path(".")
    if kind == _HLS:  # FFmpeg's default segment names: the playlist name without ".m3u8" + "%d.ts"
        pattern = re.compile(re.escape(path.stem) + r"\d+\.ts")
        extra = []
    else:  # DASH: init-stream$RepresentationID$.m4s, chunk-stream$ID$-$Number%05d$.m4s, and
        # the manifest is rewritten through NAME.tmp
        pattern = re.compile(r"(init-stream\d+|chunk-stream\d+-\d+)\.m4s")
        extra = [path.with_name(path.name + ".tmp")]
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return []
    found = [folder / n for n in names if pattern.fullmatch(n)]
    return found + [p for p in extra if _exists(p)]


def written_files(path: Path) -> list[Path]:
    """Every existing file that writing the output `path` would replace (`path` first)."""
    return ([path] if _exists(path) else []) + side_files(path)


def _same(a: Path, b: Path) -> bool:
    if os.path.abspath(a) == os.path.abspath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_not_input(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """ConfigError when writing `dst` (the file, or a segment its container writes) would
    replace the input `src`: through a protocol prefix, a symlink or a hard link alike."""
    src_path = local_file(src)
    dst_path = local_file(dst)
    if src_path is None or dst_path is None:
        return
    if _same(src_path, dst_path):
        raise ConfigError("input and output are the same file")
    if not _exists(src_path):
        return
    for side in side_files(dst_path):
        if _same(src_path, side):
            raise ConfigError(f"input and output are the same file: the {side_format(dst_path)} "
                              f"output {short(dst_path)} writes {short(side)}")


def check_overwrite(path: Path, overwrite: bool) -> None:
    """OutputError for an existing file the output would replace, without `overwrite`."""
    existing = written_files(path)
    if existing and not overwrite:
        what = "" if existing[0] == path else f" (written by the {side_format(path)} output {short(path)})"
        raise OutputError(f"{short(existing[0])} exists{what}; pass --overwrite to replace it")
