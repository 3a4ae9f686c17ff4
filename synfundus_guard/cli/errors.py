"""One place that maps library errors to one-line messages and exit codes.

Exit codes, the same for every command: 0 pass, 1 policy failed (a leak was found), 2 usage or input error.
"""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable

import typer

from ..errors import GuardError, PolicyError

EXIT_PASS = 0
EXIT_FAIL = 1
EXIT_USAGE = 2


def fail_usage(message: str) -> "typer.Exit":
    """Print ``error: message`` to stderr and return the exit to raise (code 2)."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(EXIT_USAGE)


def guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator for Typer commands: GuardError -> one line on stderr + exit 2; never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except PolicyError as exc:
            typer.echo(f"error: invalid policy {exc.source}:", err=True)
            for problem in exc.problems:
                typer.echo(f"  - {problem}", err=True)
            raise typer.Exit(EXIT_USAGE) from None
        except GuardError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None
        except MemoryError:
            typer.echo("error: out of memory; try a smaller --batch-size", err=True)
            raise typer.Exit(EXIT_USAGE) from None
        except OSError as exc:
            typer.echo(f"error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), err=True)
            raise typer.Exit(EXIT_USAGE) from None

    return wrapper


def _excepthook_last_resort(exc_type: type, exc: BaseException, tb: Any) -> None:  # pragma: no cover
    sys.stderr.write(f"error: internal error: {exc_type.__name__}: {exc}\n")
