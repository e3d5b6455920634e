"""`serve(CONFIG)`: load the config, start the streams, the shared engine and HTTP, and run
until SIGINT/SIGTERM (every output finalised); SIGHUP re-reads the config."""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import threading
from collections.abc import Callable

from streamsr.errors import StreamsrError
from streamsr.runtime import StopSignals
from streamsr.serve.config import check_server, load_config
from streamsr.serve.http import HttpServer
from streamsr.serve.server import Server

log = logging.getLogger(__name__)


def serve(config_path: str | os.PathLike, *, model=None, listen: str | None = None,
          ready: Callable[[Server, int], None] | None = None,
          stop: threading.Event | None = None) -> Server:
    """Run `streamsr serve` in this thread until a signal (or `stop`); returns the stopped
    server. `ready(server, port)` is called once HTTP listens (tests, embedding)."""
    config = load_config(config_path)
    if listen is not None:  # --listen wins over the config's address, checked the same way
        server_config = check_server(dataclasses.replace(config.server, listen=listen), "--listen")
        config = dataclasses.replace(config, server=server_config)
    server = Server(config, model)
    host, port = config.server.host_port
    http = HttpServer(server, host, port, config.server.token)
    reload = threading.Event()
    stop = stop or threading.Event()
    main = threading.current_thread() is threading.main_thread()
    old_hup = signal.signal(signal.SIGHUP, lambda *_: reload.set()) if main else None
    try:
        with StopSignals(main, message="finalising the outputs of every stream") as signals:
            server.start()
            http.start()
            log.warning("serve: http://%s:%d/ (%d streams)", host, http.port,
                        len(config.streams))
            if ready is not None:
                ready(server, http.port)
            while not (signals.event.wait(0.2) or stop.is_set()):
                if reload.is_set():
                    reload.clear()
                    _reload(server, config_path)
                if not server.engine_alive():
                    break
            server.stop()
    finally:
        http.close()
        if old_hup is not None:
            signal.signal(signal.SIGHUP, old_hup)
    if server.engine_error is not None:
        raise StreamsrError(f"the shared engine failed: {server.engine_error}")
    return server


def _reload(server: Server, config_path) -> None:
    try:
        started, stopped = server.apply(load_config(config_path))
        log.warning("serve: config reloaded: started %s, stopped %s", started or "none",
                    stopped or "none")
    except StreamsrError as exc:
        log.error("serve: reload: %s", exc)

