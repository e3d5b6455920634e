"""The HTTP side of `streamsr serve`: /health, /metrics, /api/streams, / and tile images.

waitress (a maintained, production pure-Python WSGI server: its own HTTP parser, request
size limits, a small pool of worker threads) does the HTTP; this module only routes.
prometheus-client renders /metrics in the Prometheus text format. With a token, every request must carry it
(`Authorization: Bearer TOKEN`, or `?token=TOKEN` for browsers).
"""

from __future__ import annotations

import hmac
import io
import json
import logging
import socket
import threading
from urllib.parse import parse_qs

from PIL import Image
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from waitress import wasyncore
from waitress.server import create_server

from streamsr.errors import ConfigError
from streamsr.serve.metrics import registry_for
from streamsr.serve.page import PAGE
from streamsr.serve.server import Server

log = logging.getLogger(__name__)

TILE_WIDTH = 640  # tiles are downscaled to at most this width before JPEG encoding
HTTP_THREADS = 4  # waitress's worker threads: requests are short (a page, a tile, a scrape)


def make_app(server: Server, token: str | None = None):
    """The WSGI application of `server`."""
    registry = registry_for(server)
    page = PAGE.encode()

    def respond(start_response, status: str, body: bytes, ctype: str) -> list[bytes]:
        start_response(status, [("Content-Type", ctype), ("Content-Length", str(len(body))),
                                ("Cache-Control", "no-store")])
        return [body]

    def json_body(start_response, status: str, data) -> list[bytes]:
        return respond(start_response, status, json.dumps(data).encode(), "application/json")

    def app(environ, start_response):
        path = environ.get("PATH_INFO", "/")
        query = parse_qs(environ.get("QUERY_STRING", ""))
        if token and not _authorised(environ, query, token):
            return respond(start_response, "401 Unauthorized", b"token required\n", "text/plain")
        if path == "/health":
            ok, reason = server.health()
            return json_body(start_response, "200 OK" if ok else "503 Service Unavailable",
                             {"ok": ok, "reason": reason})
        if path == "/metrics":
            return respond(start_response, "200 OK", generate_latest(registry), CONTENT_TYPE_LATEST)
        if path == "/api/streams":
            return json_body(start_response, "200 OK", server.snapshot())
        if path == "/":
            return respond(start_response, "200 OK", page, "text/html; charset=utf-8")
        if path.startswith("/tile/") and path.endswith(".jpg"):
            view = query.get("view", ["model"])[0]
            jpeg = tile_jpeg(server, path[len("/tile/"):-len(".jpg")], view)
            if jpeg is None:
                return respond(start_response, "404 Not Found", b"no frame yet\n", "text/plain")
            return respond(start_response, "200 OK", jpeg, "image/jpeg")
        return respond(start_response, "404 Not Found", b"not found\n", "text/plain")

    return app


def _authorised(environ, query, token: str) -> bool:
    header = environ.get("HTTP_AUTHORIZATION", "")
    given = header[7:] if header.startswith("Bearer ") else query.get("token", [""])[0]
    return hmac.compare_digest(given.encode(), token.encode())


def tile_jpeg(server: Server, name: str, view: str = "model") -> bytes | None:
    """The stream's latest output frame as a JPEG; view "bicubic": its input frame scaled up
    x scale with bicubic interpolation instead, to compare with the model."""
    worker = server.worker(name)
    if worker is None or worker.latest_out is None:
        return None
    out = worker.latest_out
    if view == "bicubic" and worker.latest_in is not None:
        h, w = out.shape[:2]
        image = Image.fromarray(worker.latest_in).resize((w, h), Image.BICUBIC)
    else:
        image = Image.fromarray(out)
    if image.width > TILE_WIDTH:
        image = image.resize((TILE_WIDTH, round(image.height * TILE_WIDTH / image.width)),
                             Image.BILINEAR)
    buf = io.BytesIO()
    image.convert("RGB").save(buf, "JPEG", quality=85)
    return buf.getvalue()


class HttpServer:
    """waitress on its own thread (its event loop; requests run on its worker threads)."""

    def __init__(self, server: Server, host: str, port: int, token: str | None) -> None:
        # bind first, ourselves: a port in use is then one error with nothing half built
        # (waitress would have started its worker threads and its trigger pipe already)
        listener = _listen(host, port)
        try:
            self.httpd = create_server(make_app(server, token), sockets=[listener],
                                       threads=HTTP_THREADS, ident="streamsr")
        except Exception:
            listener.close()
            raise
        self.port = int(self.httpd.effective_port)
        self._thread = threading.Thread(target=self.httpd.run, name="serve-http", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Stop listening, close open connections and the worker threads. The sockets are
        closed on the event loop's own thread (through its trigger), so its loop ends cleanly;
        should the trigger be unusable, they are closed here and the loop ends at its next
        wake-up (waitress polls at least once a second)."""
        httpd = self.httpd
        if self._thread.is_alive():
            try:
                httpd.trigger.pull_trigger(lambda: wasyncore.close_all(httpd._map))
            except OSError as exc:
                log.debug("waitress trigger unusable (%s): closing from this thread", exc)
                wasyncore.close_all(httpd._map, ignore_all=True)
            self._thread.join(5)
        else:
            wasyncore.close_all(httpd._map, ignore_all=True)
        httpd.task_dispatcher.shutdown()


def _listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (IPv4 or IPv6, as the host resolves)."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        return socket.create_server((host, port), family=family, backlog=64)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
