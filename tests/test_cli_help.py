"""Every help screen: exit 0, flags without a type, value types in Click's words (TEXT, INTEGER, PATH ...).

Typer 0.29 labels every parameter with its own type names (``--help <bool>``, ``<str>``, ``<int range>``);
``synfundus_guard/cli/main.py`` replaces them for the whole app. The commands are read from the app itself, so
a command added later is checked without touching this file.
"""

from __future__ import annotations

import re

import pytest
import typer.main

from synfundus_guard import __version__
from synfundus_guard.cli.main import app, run

TYPER_LABEL = re.compile(r"<(bool|str|int|float|path|file|directory|list\[|tuple|uuid|datetime)[^>]*>")
"""Typer's own type labels, which no help screen may show."""
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _commands(command, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], object]]:
    """Every command and group under ``command`` (itself included), by its argument path."""
    found = [(path, command)]
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        found += _commands(sub, (*path, name))
    return found


COMMANDS = _commands(typer.main.get_command(app))


def _help(capsys, monkeypatch, path: tuple[str, ...]) -> tuple[int, str]:
    monkeypatch.setenv("COLUMNS", "200")  # one row per option, so a row can be found by its flag
    code = run([*path, "--help"])
    out, err = capsys.readouterr()
    return code, ANSI.sub("", out + err)


def _row(screen: str, opt: str) -> str:
    """The row of option ``opt``: the line it starts (after the box, the required mark and a long name)."""
    row = re.compile(rf"^[^\w-]*(--[\w-]+\s+)?{re.escape(opt)}(\s|$)")
    (line,) = [line for line in screen.splitlines() if row.search(line)]
    return line


def test_the_app_has_its_commands():
    names = {" ".join(path) for path, _ in COMMANDS}
    assert {"", "audit", "gate", "generate", "train", "demo"} <= names


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[" ".join(p) or "guard" for p, _ in COMMANDS])
def test_help_screen_shows_no_typer_type_labels(capsys, monkeypatch, path, command):
    code, screen = _help(capsys, monkeypatch, path)
    assert code == 0, screen
    assert f"Usage: guard {' '.join(path)}".rstrip() in screen
    assert TYPER_LABEL.search(screen) is None, screen
    assert "--help" in _row(screen, "--help") and "BOOLEAN" not in _row(screen, "--help")
    for param in command.params:
        if getattr(param, "hidden", False) or param.param_type_name != "option":
            continue
        row = _row(screen, param.opts[0])
        if param.is_flag:
            assert "BOOLEAN" not in row, row  # a flag takes no value: no type at all
        elif param.metavar:
            assert f" {param.metavar} " in row, row  # the command's own name for the value wins
        else:
            assert re.search(r"\s(TEXT|INTEGER|FLOAT|PATH|FILE|DIRECTORY)|\[\w[^\]]*\|", row), row


def test_value_types_read_as_click_words(capsys, monkeypatch):
    _, screen = _help(capsys, monkeypatch, ("gate",))
    assert re.search(r"--policy\s+-p\s+PATH\s", _row(screen, "--policy")), _row(screen, "--policy")


def test_version(capsys):
    assert run(["--version"]) == 0
    out, err = capsys.readouterr()
    assert out == f"synfundus-guard {__version__}\n" and err == ""
