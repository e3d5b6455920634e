"""The `streamsr` command: a thin click shell over the Python API.

Each command lives in a small module of this package and only parses options, calls one library
function and prints. `StreamsrError`s become one red line and their exit code; `--debug` shows
the traceback.
"""

from __future__ import annotations

import functools
import inspect
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


def _log_level(obj: dict) -> int:
    """WARNING, INFO with -v, DEBUG with -vv or --debug."""
    if obj.get("debug"):
        return logging.DEBUG
    return max(logging.DEBUG, logging.WARNING - 10 * obj.get("verbose", 0))


def common_options(*, progress: bool = True):
    """The options every command takes, spelled the same everywhere.

    `-q/--quiet` (no progress bar, no summary or status lines on stderr; warnings and errors
    still show) and `-v/--verbose` (repeatable) work before the command and after it alike:
    `streamsr -q upscale ...` = `streamsr upscale ... -q`, and -v counts add up. With
    `progress`, the command also takes `--progress/--no-progress` (default: on unless quiet)
    and receives the resolved `progress: bool`. A command whose function has a `quiet`
    parameter receives the resolved quiet flag too.
    """
    def decorate(fn):
        wants_quiet = "quiet" in inspect.signature(fn).parameters

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            obj = click.get_current_context().find_root().ensure_object(dict)
            obj["quiet"] = quiet = bool(kwargs.pop("_quiet") or obj.get("quiet"))
            obj["verbose"] = obj.get("verbose", 0) + kwargs.pop("_verbose")
            logging.getLogger().setLevel(_log_level(obj))
            if progress:
                shown = kwargs.pop("progress")
                kwargs["progress"] = (not quiet) if shown is None else shown
            if wants_quiet:
                kwargs["quiet"] = quiet
            return fn(*args, **kwargs)

        wrapper = click.option("-v", "--verbose", "_verbose", count=True,
                               help="More log output (-vv for debug logs); also before the "
                                    "command.")(wrapper)
        wrapper = click.option("-q", "--quiet", "_quiet", is_flag=True,
                               help="No progress bar and no summary; also before the "
                                    "command.")(wrapper)
        if progress:
            wrapper = click.option("--progress/--no-progress", default=None,
                                   help="Progress bar on stderr (default: on unless "
                                        "--quiet).")(wrapper)
        return wrapper
    return decorate


def threads_option(fn):
    """`--threads N`: torch's CPU threads for this process (default: automatic)."""
    def pin(_ctx: click.Context, _param: click.Parameter, value: int | None) -> None:
        if value is not None:
            from streamsr.runtime import pin_cpu_threads

            pin_cpu_threads(value)

    return click.option("--threads", type=click.IntRange(min=1), metavar="N", expose_value=False,
                        callback=pin, help="CPU threads for torch (default: automatic; wins over "
                        "OMP_NUM_THREADS).")(fn)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="streamsr")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug logs).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars and no summaries.")
@click.pass_context
def main(ctx: click.Context, debug: bool, verbose: int, quiet: bool) -> None:
    """Sharp x4 video from blurry low-resolution footage."""
    ctx.ensure_object(dict)
    ctx.obj.update(debug=debug, verbose=verbose, quiet=quiet)
    logging.basicConfig(level=_log_level(ctx.obj), format="%(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)


# Commands register themselves on `main` when their module is imported.
from streamsr.cli import (  # noqa: E402,F401
    bench_cmd,
    export_cmd,
    model_cmds,
    quality_cmds,
    serve_cmd,
    train_cmds,
    video_cmds,
)
