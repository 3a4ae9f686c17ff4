"""The ``guard`` console script: one Typer app, one small module per command group."""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="guard",
    help="Release synthetic medical images without leaking the patients they were trained on.\n\n"
    "Exit codes: 0 pass, 1 policy failed (leak found), 2 usage or input error.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)



@app.callback()
def _root() -> None:
    """Release synthetic medical images without leaking the patients they were trained on."""


# Each module registers its commands on ``app`` (or adds a sub-app) when imported.
_COMMAND_MODULES = ("data", "audit", "gate", "manifest", "train", "generate", "demo")

for _name in _COMMAND_MODULES:
    try:
        importlib.import_module(f"{__package__}.{_name}").register(app)
    except ModuleNotFoundError as _exc:  # a command group not written yet
        if _exc.name != f"{__package__}.{_name}":
            raise


def main() -> None:
    """Entry point of the ``guard`` console script."""
    app()


if __name__ == "__main__":
    main()
