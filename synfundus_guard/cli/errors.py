"""One place that maps library errors to one-line messages and exit codes.

Exit codes, the same for every command: 0 pass, 1 policy failed (a leak was found), 2 usage or input error,
130 interrupted (Ctrl-C, SIGINT), 143 terminated (SIGTERM). CI reads 1 as "leak found", so nothing but a policy
verdict ever exits 1: a crash (a bug, or a resource limit hit by a hostile input) is one ``error: internal
error: ...`` line and exit 2. ``guard --debug`` or ``GUARD_DEBUG=1`` also prints the traceback.
"""

from __future__ import annotations

import functools
import os
import sys
import traceback
from typing import Any, Callable

import click
import typer

from ..errors import GuardError, PolicyError

EXIT_PASS = 0
EXIT_FAIL = 1
EXIT_USAGE = 2
EXIT_SIGINT = 130
"""128 + SIGINT, the shell's code for a process ended by Ctrl-C."""
EXIT_SIGTERM = 143
"""128 + SIGTERM: what a shell reports for a killed process, though here cleanup ran first."""
DEBUG_ENV = "GUARD_DEBUG"
_MAX_MESSAGE = 400
"""Longest exception message shown on the one error line (a message can quote a whole file)."""

_debug = False


class Terminated(KeyboardInterrupt):
    """Raised in the main thread on SIGTERM, so the same ``finally`` blocks run as for Ctrl-C (exit 143)."""


def set_debug(enabled: bool) -> None:
    """Turn traceback printing on or off (the ``--debug`` root option)."""
    global _debug
    _debug = enabled


def debug_enabled() -> bool:
    """True with ``--debug`` or ``GUARD_DEBUG`` set to anything but empty, ``0``, ``false`` or ``no``."""
    return _debug or os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def one_line(text: object) -> str:
    """``text`` with every run of whitespace (newlines included) collapsed, cut to a readable length."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= _MAX_MESSAGE else flat[: _MAX_MESSAGE - 3] + "..."


def interrupt_exit_code(exc: BaseException) -> int:
    """143 for SIGTERM (:class:`Terminated`), 130 for Ctrl-C."""
    return EXIT_SIGTERM if isinstance(exc, Terminated) else EXIT_SIGINT


def report_internal_error(exc: BaseException) -> int:
    """Print the one-line message for an unexpected exception (and the traceback in debug mode); returns 2."""
    if debug_enabled():
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
        hint = ""
    else:
        hint = " (run with --debug for the traceback)"
    if isinstance(exc, RecursionError):
        message = "internal error: RecursionError: input nested too deeply to process"
    elif isinstance(exc, MemoryError):
        message = "internal error: MemoryError: out of memory (try a smaller --batch-size or input)"
    else:
        message = one_line(f"internal error: {type(exc).__name__}: {exc}")
    sys.stderr.write(f"error: {message}{hint}\n")
    sys.stderr.flush()
    return EXIT_USAGE


def fail_usage(message: str) -> "typer.Exit":
    """Print ``error: message`` to stderr and return the exit to raise (code 2)."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(EXIT_USAGE)


def _report_known(exc: Exception) -> int | None:
    """The exit code after printing a deliberate error (GuardError, OSError); None for anything else."""
    if isinstance(exc, PolicyError):
        typer.echo(f"error: invalid policy {exc.source}:", err=True)
        for problem in exc.problems:
            typer.echo(f"  - {problem}", err=True)
        return EXIT_USAGE
    if isinstance(exc, GuardError):
        typer.echo(f"error: {one_line(exc)}", err=True)
        return exc.exit_code
    if isinstance(exc, OSError):
        typer.echo(f"error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), err=True)
        return EXIT_USAGE
    return None


def guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator for Typer commands: any exception -> one line on stderr + exit 2; never a traceback, never 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, click.exceptions.ClickException, click.exceptions.Abort):
            raise  # exits and usage errors Click reports itself
        except KeyboardInterrupt as exc:
            typer.echo("terminated" if isinstance(exc, Terminated) else "interrupted", err=True)
            raise typer.Exit(interrupt_exit_code(exc)) from None
        except Exception as exc:  # noqa: BLE001 - the contract: one line and exit 2, whatever went wrong
            code = _report_known(exc)
            raise typer.Exit(code if code is not None else report_internal_error(exc)) from None

    return wrapper
