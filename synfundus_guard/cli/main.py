"""The ``guard`` console script: one Typer app, one small module per command group.

:func:`main` is the last line of defence for the exit-code contract (0 pass, 1 leak found, 2 error): commands
are :func:`~.errors.guarded`, and anything that still escapes (an unguarded command, Click itself) becomes one
``error: internal error: ...`` line and exit 2 here, never a traceback and never 1. It also turns SIGTERM into
the same ``KeyboardInterrupt`` as Ctrl-C, so a killed ``guard train`` or ``guard generate`` runs its cleanup
and exits 143 (130 for Ctrl-C).
"""

from __future__ import annotations

import contextlib
import importlib
import signal
import threading
from typing import Any, Iterator, Sequence

import typer

from .errors import (EXIT_SIGINT, EXIT_SIGTERM, EXIT_USAGE, DEBUG_ENV, Terminated, one_line,
                     report_internal_error, set_debug)

app = typer.Typer(
    name="guard",
    help="Release synthetic medical images without leaking the patients they were trained on.\n\n"
    "Exit codes: 0 pass, 1 policy failed (leak found), 2 usage or input error, 130 interrupted, 143 terminated.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help=f"Print tracebacks of internal errors (or set {DEBUG_ENV}=1)."),
) -> None:
    """Release synthetic medical images without leaking the patients they were trained on."""
    set_debug(debug)


# Each module registers its commands on ``app`` (or adds a sub-app) when imported.
_COMMAND_MODULES = ("data", "audit", "gate", "manifest", "train", "generate", "demo")

for _name in _COMMAND_MODULES:
    try:
        importlib.import_module(f"{__package__}.{_name}").register(app)
    except ModuleNotFoundError as _exc:  # a command group not written yet
        if _exc.name != f"{__package__}.{_name}":
            raise


class _SigtermToInterrupt:
    """SIGTERM handler: raise :class:`Terminated` in the main thread, once; a second SIGTERM kills at once."""

    def __init__(self) -> None:
        self.fired = False

    def __call__(self, signum: int, frame: Any) -> None:
        self.fired = True
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # cleanup that hangs can still be killed
        raise Terminated()


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[_SigtermToInterrupt]:
    """Install the SIGTERM handler for the duration of a run (main thread only; restored afterwards)."""
    handler = _SigtermToInterrupt()
    if threading.current_thread() is not threading.main_thread():
        yield handler
        return
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield handler
    finally:
        signal.signal(signal.SIGTERM, previous)


def _exit_code(exc: SystemExit, terminated: bool) -> int:
    """The code of a ``SystemExit`` from Click; Typer reports any KeyboardInterrupt as 130, SIGTERM is 143."""
    code = exc.code
    if code is None:
        return 0
    if not isinstance(code, int):  # sys.exit("message"): Python prints it and exits 1; we say 2
        typer.echo(f"error: {one_line(code)}", err=True)
        return EXIT_USAGE
    return EXIT_SIGTERM if terminated and code == EXIT_SIGINT else code


def run(args: Sequence[str] | None = None) -> int:
    """Run the ``guard`` app on ``args`` (default ``sys.argv[1:]``) and return its exit code; never raises."""
    with _sigterm_as_interrupt() as sigterm:
        try:
            app(args=None if args is None else list(args), prog_name="guard")
        except SystemExit as exc:
            return _exit_code(exc, sigterm.fired)
        except KeyboardInterrupt as exc:  # outside any command: Typer turns those inside into Exit(130)
            typer.echo("terminated" if isinstance(exc, Terminated) else "interrupted", err=True)
            return EXIT_SIGTERM if isinstance(exc, Terminated) else EXIT_SIGINT
        except Exception as exc:  # noqa: BLE001 - the last resort: one line and exit 2, never a traceback or 1
            return report_internal_error(exc)
    return 0


def main() -> None:
    """Entry point of the ``guard`` console script."""
    raise SystemExit(run())


if __name__ == "__main__":
    main()
