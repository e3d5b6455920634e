"""The `streamsr` command: a thin click shell over the Python API.

Each command lives in a small module of this package and only parses options, calls one library
function and prints. `StreamsrError`s become one red line and their exit code; `--debug` shows
the traceback.
"""

from __future__ import annotations

import logging
import sys

import click

from streamsr import __version__
from streamsr.cli.streams import protect_std_streams
from streamsr.errors import StreamsrError


def _usage_error_line(exc: click.UsageError, command_path: str) -> None:
    """Print a click usage error as streamsr's one red line, with a pointer to --help."""
    click.secho(f"streamsr: error: {exc.format_message()} (see '{command_path} --help')",
                fg="red", err=True)


class _Group(click.Group):
    """Turns user errors into one line instead of a traceback."""

    def main(self, *args, **kwargs):
        # a closed or full stderr (cron, services) must neither hang nor stop the run
        protect_std_streams()
        return super().main(*args, **kwargs)

    def make_context(self, info_name, args, parent=None, **extra) -> click.Context:
        # Top-level options (`streamsr --bogus`) are parsed here, before `invoke`: without this
        # click prints its multi-line Usage block. A bare `streamsr` still shows the help.
        debug = "--debug" in args
        if not args:  # a bare `streamsr` shows the help (click >= 8.2 raises for it, 8.1 exits)
            return super().make_context(info_name, args, parent=parent, **extra)
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as exc:
            if debug or parent is not None:
                raise
            _usage_error_line(exc, info_name or "streamsr")
            raise click.exceptions.Exit(exc.exit_code) from None

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except StreamsrError as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.secho(f"streamsr: error: {exc}", fg="red", err=True)
            ctx.exit(exc.exit_code)
        except click.UsageError as exc:  # a bad option of a command: one line too, with a pointer
            if ctx.obj and ctx.obj.get("debug"):
                raise
            _usage_error_line(exc, exc.ctx.command_path if exc.ctx else ctx.command_path)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.secho("streamsr: interrupted", fg="red", err=True)
            ctx.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="streamsr")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug logs).")
@click.pass_context
def main(ctx: click.Context, debug: bool, verbose: int) -> None:
    """Sharp x4 video from blurry low-resolution footage."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    level = logging.WARNING - 10 * verbose if not debug else logging.DEBUG
    logging.basicConfig(level=max(level, logging.DEBUG), format="%(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)


# Commands register themselves on `main` when their module is imported.
from streamsr.cli import (  # noqa: E402,F401
    bench_cmd,
    export_cmd,
    model_cmds,
    quality_cmds,
    train_cmds,
    video_cmds,
)
