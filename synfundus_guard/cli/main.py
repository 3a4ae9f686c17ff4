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
import re
import signal
import threading
from typing import Any, Iterator, Sequence

import typer
import typer.core

from .errors import (EXIT_SIGINT, EXIT_SIGTERM, EXIT_USAGE, DEBUG_ENV, Terminated, one_line,
                     report_internal_error, set_debug)

# --- help screens: the type column --------------------------------------------------------------------------
# Typer 0.29 prints its own type labels in every help screen: ``<bool>`` beside flags that take no value (even
# ``--help``), ``<str>``, ``<int range>``, ``<list[str]>``. It has no setting for this, so the one method that
# makes those labels (``display_type``: used by the help screens only, plain and rich) is replaced for every
# option and argument of the app here, instead of a metavar on each option: flags show no type, values read as
# Click always wrote them (TEXT, INTEGER, FLOAT, PATH, ``[json|html]``). tests/test_cli_help.py checks every
# command's screen.
_TYPER_DISPLAY_TYPE = getattr(typer.core.TyperOption, "display_type", None)
_TYPE_WORDS = {"str": "TEXT", "int": "INTEGER", "float": "FLOAT", "bool": "BOOLEAN"}


def _help_type(param: Any, ctx: Any) -> str | None:
    """The type column for ``param`` in a help screen: None for a flag or a counter, else Click's type word."""
    if getattr(param, "is_flag", False) or getattr(param, "count", False):
        return None
    label = str(_TYPER_DISPLAY_TYPE(param, ctx))
    inner = label[1:-1] if label.startswith("<") and label.endswith(">") else label
    desc = getattr(param, "type_descriptor", None)
    if getattr(desc, "is_list", False) and inner.startswith("list[") and inner.endswith("]"):
        inner = inner[len("list["):-1]  # a repeatable option: each occurrence takes one value
    if getattr(desc, "is_choice", False) or (getattr(desc, "is_datetime", False) and "|" in inner):
        return f"[{inner}]"  # the choices (or date formats) themselves, as Click shows them
    return re.sub(r"[A-Za-z_]+", lambda m: _TYPE_WORDS.get(m[0], m[0].upper()), inner).replace(",", " ")


if _TYPER_DISPLAY_TYPE is not None:  # older Typer (Click's own help) already prints no type for flags
    typer.core.TyperOption.display_type = _help_type  # type: ignore[method-assign]
    typer.core.TyperArgument.display_type = _help_type  # type: ignore[method-assign]

app = typer.Typer(
    name="guard",
    help="Release synthetic medical images without leaking the patients they were trained on.\n\n"
    "Exit codes: 0 pass, 1 policy failed (leak found), 2 usage or input error, 130 interrupted, 143 terminated.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _show_version(value: bool) -> None:
    if value:
        from .. import __version__

        typer.echo(f"synfundus-guard {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help=f"Print tracebacks of internal errors (or set {DEBUG_ENV}=1)."),
    version: bool = typer.Option(False, "--version", is_eager=True, callback=_show_version,
                                 help="Print the version and exit."),
) -> None:
    """Release synthetic medical images without leaking the patients they were trained on."""
    set_debug(debug)


# Each module registers its commands on ``app`` (or adds a sub-app) when imported.
_COMMAND_MODULES = ("data", "audit", "gate", "evaluate", "manifest", "train", "generate", "demo")

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


def _usage_error(exc: Exception) -> int | None:
    """Print a command-line usage error (bad option value, missing argument, unknown command) as one line.

    Typer keeps Click's exception classes private, so they are recognised by Click's public protocol
    (``format_message`` and an integer ``exit_code``). A bare ``guard`` shows the help screen (exit 2). Returns
    the exit code (2), or None for any other exception.
    """
    if not (callable(getattr(exc, "format_message", None)) and isinstance(getattr(exc, "exit_code", None), int)):
        return None
    if type(exc).__name__ == "NoArgsIsHelpError":  # Typer has printed the help screen already
        return EXIT_USAGE
    ctx = getattr(exc, "ctx", None)
    hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
    typer.echo(f"error: {one_line(exc.format_message())}{hint}", err=True)
    return EXIT_USAGE


def run(args: Sequence[str] | None = None) -> int:
    """Run the ``guard`` app on ``args`` (default ``sys.argv[1:]``) and return its exit code; never raises."""
    with _sigterm_as_interrupt() as sigterm:
        try:
            code = app(args=None if args is None else list(args), prog_name="guard", standalone_mode=False)
            code = code if isinstance(code, int) and not isinstance(code, bool) else 0
            return EXIT_SIGTERM if sigterm.fired and code == EXIT_SIGINT else code
        except typer.Abort:
            typer.echo("interrupted", err=True)
            return EXIT_SIGTERM if sigterm.fired else EXIT_SIGINT
        except Exception as exc:  # noqa: BLE001 - Click's usage errors first, then the last resort
            usage = _usage_error(exc)
            return usage if usage is not None else report_internal_error(exc)
        except SystemExit as exc:
            return _exit_code(exc, sigterm.fired)
        except KeyboardInterrupt as exc:  # outside any command: Typer turns those inside into Exit(130)
            typer.echo("terminated" if isinstance(exc, Terminated) else "interrupted", err=True)
            return EXIT_SIGTERM if isinstance(exc, Terminated) else EXIT_SIGINT
    return 0


def main() -> None:
    """Entry point of the ``guard`` console script."""
    raise SystemExit(run())


if __name__ == "__main__":
    main()
