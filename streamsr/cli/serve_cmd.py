"""`streamsr serve CONFIG.toml`: many cameras through one shared model, HTTP on one port."""

from __future__ import annotations

import click

from streamsr.cli import common_options, main, threads_option
from streamsr.errors import ConfigError


@main.command()
@click.argument("config_path", metavar="CONFIG.toml")
@click.option("--listen", metavar="HOST:PORT",
              help="Address for HTTP (default: the config's [server] listen, 127.0.0.1:8600); "
                   "a non-loopback address needs a token in the config.")
@threads_option
@common_options(progress=False)
def serve(config_path: str, listen: str | None) -> None:
    """Run every [[stream]] of CONFIG.toml through one shared model until Ctrl-C.

    HTTP: / (one tile per stream), /health, /metrics (Prometheus), /api/streams. SIGHUP re-reads
    the config: new streams start, removed or changed ones stop, the others run on untouched.
    See docs/serve.md.
    """
    try:
        from streamsr.serve import serve as run
    except ModuleNotFoundError as exc:
        if exc.name != "prometheus_client":
            raise
        raise ConfigError("streamsr serve needs prometheus-client: "
                          "pip install 'streamsr[serve]'") from None
    run(config_path, listen=listen)
