"""Regressions from the fuzz campaign: hostile inputs and crashes end as one ``error:`` line and exit 2.

CI reads exit 1 as "leak found", so a crash must never exit 1 and never print a traceback; untrusted files
(model folders, recipes, checkpoints) and numeric options are bounded before any heavy work starts.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import typer
from typer.testing import CliRunner

from synfundus_guard.cli import errors as cli_errors
from synfundus_guard.cli import gate as cli_gate
from synfundus_guard.cli import main as cli_main
from synfundus_guard.cli.main import app, run
from synfundus_guard.errors import ModelError
from synfundus_guard.generation.card import CARD_FILE
from synfundus_guard.generation.conditioning import Conditioning
from synfundus_guard.generation.default import RECIPE_FILE, read_recipe, training_data_dir
from synfundus_guard.generation.model import DEFAULT_MODEL_DIR, load_model
from synfundus_guard.generation.train import CHECKPOINT
from synfundus_guard.results import ImageResult, Report
from synfundus_guard.release.report import write_report

ROOT = Path(__file__).resolve().parents[1]
PUBLIC = "public"
"""The shipped public policy, by name."""
HINT = " (run with --debug for the traceback)"


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch: pytest.MonkeyPatch):
    """Each test starts without --debug and without GUARD_DEBUG (the flag is process state)."""
    monkeypatch.delenv(cli_errors.DEBUG_ENV, raising=False)
    cli_errors.set_debug(False)
    yield
    cli_errors.set_debug(False)


def _one_error_line(stderr: str) -> str:
    # strip(): a command that failed inside its progress display gets the blank line rich prints when it stops
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ") and "Traceback" not in stderr
    return lines[0]


def _report(tmp_path: Path, verdict: str = "pass") -> Path:
    images = [ImageResult("a.png", verdict, reasons=[] if verdict == "pass" else ["memorization: copy"],
                          checks={"memorization": "pass" if verdict == "pass" else "flag"})]
    report = Report(policy={"name": "public", "sha256": "0" * 64}, embedder={}, images=images, verdict=verdict)
    return write_report(report, tmp_path / "audit")


def _boom(*_args, **_kwargs):
    raise ZeroDivisionError("boom\nsecond line")


# --- the last-resort handler: guarded commands and main() -------------------------------------------------------


def test_unexpected_exception_in_a_command_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli_gate, "gate_report", _boom)
    code = run(["gate", str(_report(tmp_path)), "--policy", str(PUBLIC)])
    assert code == 2
    err = capsys.readouterr().err
    assert _one_error_line(err) == f"error: internal error: ZeroDivisionError: boom second line{HINT}"


def test_unexpected_exception_through_the_typer_app_is_exit_2_not_1(tmp_path, monkeypatch):
    monkeypatch.setattr(cli_gate, "gate_report", _boom)
    result = CliRunner().invoke(app, ["gate", str(_report(tmp_path)), "--policy", str(PUBLIC)])
    assert result.exit_code == 2 and result.stdout == ""
    assert _one_error_line(result.stderr).startswith("error: internal error: ZeroDivisionError: boom")


@pytest.mark.parametrize(("exc", "line"), [
    (RecursionError("maximum recursion depth exceeded"),
     "error: internal error: RecursionError: input nested too deeply to process" + HINT),
    (MemoryError(), "error: internal error: MemoryError: out of memory (try a smaller --batch-size or input)" + HINT),
], ids=["recursion", "memory"])
def test_resource_errors_in_a_command_are_one_line_exit_2(tmp_path, monkeypatch, exc, line):
    def fail(*_args, **_kwargs):
        raise exc

    monkeypatch.setattr(cli_gate, "gate_report", fail)
    result = CliRunner().invoke(app, ["gate", str(_report(tmp_path)), "--policy", str(PUBLIC)])
    assert result.exit_code == 2
    assert _one_error_line(result.stderr) == line


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_prints_the_traceback_too(tmp_path, monkeypatch, capsys, how):
    monkeypatch.setattr(cli_gate, "gate_report", _boom)
    args = ["gate", str(_report(tmp_path)), "--policy", str(PUBLIC)]
    if how == "flag":
        args.insert(0, "--debug")
    else:
        monkeypatch.setenv("GUARD_DEBUG", "1")
    assert run(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):") and "in _boom" in err
    assert err.splitlines()[-1] == "error: internal error: ZeroDivisionError: boom second line"


def test_main_catches_what_escapes_an_unguarded_command(monkeypatch, capsys):
    bare = typer.Typer()

    @bare.command()
    def crash() -> None:
        raise ValueError("unguarded")

    monkeypatch.setattr(cli_main, "app", bare)
    assert run([]) == 2
    assert _one_error_line(capsys.readouterr().err) == f"error: internal error: ValueError: unguarded{HINT}"


def test_main_keeps_exit_1_for_a_policy_failure_and_2_for_usage(tmp_path, capsys):
    assert run(["gate", str(_report(tmp_path, "fail")), "--policy", str(PUBLIC)]) == 1
    assert run(["gate"]) == 2
    assert run(["--help"]) == 0


def test_main_installs_no_signal_handler_at_import_and_restores_it():
    before = signal.getsignal(signal.SIGTERM)
    assert not isinstance(before, cli_main._SigtermToInterrupt)
    with cli_main._sigterm_as_interrupt() as handler:
        assert signal.getsignal(signal.SIGTERM) is handler
    assert signal.getsignal(signal.SIGTERM) is before


_WAITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import typer
    from synfundus_guard.cli import main as cli_main
    from synfundus_guard.cli.errors import guarded

    marker, mode = Path(sys.argv[1]), sys.argv[2]
    sys.argv = ["guard"]
    app = typer.Typer()

    def wait() -> None:
        try:
            print("ready", flush=True)
            time.sleep(60)
        finally:
            marker.write_text("cleaned up")

    app.command()(guarded(wait) if mode == "guarded" else wait)
    cli_main.app = app
    cli_main.main()
""")


@pytest.mark.parametrize(("sig", "code", "mode", "message"), [
    (signal.SIGTERM, 143, "guarded", "terminated\n"),
    (signal.SIGINT, 130, "guarded", "interrupted\n"),
    (signal.SIGTERM, 143, "bare", ""),
], ids=["sigterm", "sigint", "sigterm-unguarded"])
def test_signals_run_cleanup_and_exit_with_the_signal_code(tmp_path, sig, code, mode, message):
    marker = tmp_path / "marker"
    proc = subprocess.Popen([sys.executable, "-c", _WAITER, str(marker), mode], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert proc.stdout.readline() == "ready\n", proc.stderr.read()
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == code, err
    assert err == message
    assert marker.read_text() == "cleaned up", "the command's finally block must run"


# --- guard train: numeric options and checkpoints ---------------------------------------------------------------


@pytest.mark.parametrize(("args", "word"), [
    (["--channels", "100000"], "channels"),
    (["--channels", ",".join(["8"] * 100)], "channels"),
    (["--channels", "48,64"], "channels"),
    (["--steps", "10000000000"], "steps"),
    (["--resolution", "100000"], "resolution"),
    (["--resolution", "8", "--channels", "8,8,8,8"], "resolution"),
    (["--batch-size", "1000000"], "batch size"),
    (["--lr", "inf"], "learning rate"),
    (["--lr", "nan"], "learning rate"),
    (["--seed", "-1"], "seed"),
    (["--checkpoint-every", "0"], "checkpoint"),
    (["--dp", "--target-epsilon", "inf"], "finite"),
], ids=lambda v: v if isinstance(v, str) else " ".join(v)[:30])
def test_train_out_of_range_options_are_one_line_exit_2(phantom_dir, tmp_path, args, word):
    out = tmp_path / "model"
    result = CliRunner().invoke(app, ["train", str(phantom_dir), "--out", str(out), *args])
    assert result.exit_code == 2
    assert word in _one_error_line(result.stderr)
    assert not out.exists(), "nothing is written for refused options"


@pytest.mark.parametrize("content", [[1, 2, 3], torch.zeros(3), {"run_key": 7}, {"step": "x", "unet": []}],
                         ids=["list", "tensor", "bad-run-key", "bad-fields"])
def test_train_refuses_a_checkpoint_that_is_not_one(phantom_dir, tmp_path, content):
    out = tmp_path / "model"
    (out / CHECKPOINT).parent.mkdir(parents=True)
    torch.save(content, out / CHECKPOINT)
    before = (out / CHECKPOINT).read_bytes()
    result = CliRunner().invoke(app, ["train", str(phantom_dir), "--out", str(out), "--steps", "2",
                                      "--resolution", "16", "--batch-size", "4", "--channels", "16,32"])
    assert result.exit_code == 2
    line = _one_error_line(result.stderr)
    assert "not a training checkpoint" in line and "delete it to start over" in line
    assert (out / CHECKPOINT).read_bytes() == before and sorted(p.name for p in out.iterdir()) == ["checkpoint"]


# --- untrusted model folders --------------------------------------------------------------------------------------


@pytest.fixture
def model_copy(tmp_path) -> Path:
    """A private copy of the built-in model (4 MB) to break."""
    return Path(shutil.copytree(DEFAULT_MODEL_DIR, tmp_path / "model"))


def _edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(("file", "changes", "word"), [
    ("scheduler/scheduler_config.json", {"num_train_timesteps": -5}, "num_train_timesteps"),
    ("scheduler/scheduler_config.json", {"num_train_timesteps": 10**12}, "num_train_timesteps"),
    ("scheduler/scheduler_config.json", {"beta_schedule": "nope", "prediction_type": "zzz"}, "prediction_type"),
    ("scheduler/scheduler_config.json", {"trained_betas": [0.1, 0.2]}, "trained_betas"),
    ("unet/config.json", {"block_out_channels": [100000]}, "block_out_channels"),
    ("unet/config.json", {"sample_size": 10**6, "in_channels": 1}, "sample_size"),
], ids=["negative-timesteps", "huge-timesteps", "unknown-schedule", "short-betas", "huge-width", "huge-size"])
def test_generate_refuses_an_unusable_model_config(model_copy, tmp_path, file, changes, word):
    _edit_json(model_copy / file, **changes)
    with pytest.raises(ModelError, match=word):
        load_model(model_copy)
    release = tmp_path / "release"
    result = CliRunner().invoke(app, ["generate", "--out", str(release), "--model", str(model_copy), "--n", "1"])
    assert result.exit_code == 2
    assert word in _one_error_line(result.stderr)
    assert not release.exists() and not (tmp_path / "release-quarantine").exists()


@pytest.mark.parametrize("name", [CARD_FILE, "scheduler/scheduler_config.json", "unet/config.json"])
def test_deeply_nested_model_json_is_one_line_exit_2(model_copy, tmp_path, name):
    (model_copy / name).write_text('{"a":' * 100_000 + "1" + "}" * 100_000)
    result = CliRunner().invoke(app, ["generate", "--out", str(tmp_path / "release"), "--model", str(model_copy)])
    assert result.exit_code == 2
    assert "nested deeper than 64 levels" in _one_error_line(result.stderr)


@pytest.mark.parametrize(("conditioning", "word"), [
    ({"columns": ["a"], "vocab": {"a": [str(i) for i in range(100)]}, "classes": []}, "distinct values"),
    ({"columns": ["a", "a"], "vocab": {"a": ["0"]}, "classes": []}, "distinct non-empty"),
    ({"columns": ["a"], "vocab": {"a": ["0", "1"]}, "classes": [{"class": 5, "count": 1}]}, "indices"),
    ({"columns": ["a"], "vocab": {"a": ["0"]}, "classes": [{"class": 1e999, "count": 1}]}, "OverflowError"),
    ({"columns": "a", "vocab": 3, "classes": None}, "malformed"),
], ids=["too-many-values", "duplicate-column", "class-out-of-range", "infinite-class", "wrong-types"])
def test_conditioning_from_a_card_is_validated(conditioning, word):
    with pytest.raises(ModelError, match=word):
        Conditioning.from_dict(conditioning)


def _away_from_data(model_dir: Path, tmp_path: Path) -> None:
    """Point the card at a missing folder, so training_data_dir must fall back on the recipe."""
    card = json.loads((model_dir / CARD_FILE).read_text())
    card["data"]["train_dir"] = str(tmp_path / "gone")
    (model_dir / CARD_FILE).write_text(json.dumps(card))


@pytest.mark.parametrize(("recipe", "words"), [
    ({"phantom": {"patients": 10**8, "visits": 2, "size": 64, "seed": 0}}, ["phantom.patients"]),
    ({"phantom": {"patients": 200, "visits": 2, "size": 64, "seed": 0, "colour": "red"}}, ["phantom.colour"]),
    ({"phantom": {"patients": 200, "visits": 2, "size": 64, "seed": "../../x"}, "extra": 1},
     ["phantom.seed", "extra: unknown key"]),
    ({"phantom": {"patients": 5000, "visits": 20, "size": 512, "seed": 0}}, ["pixels"]),
    ({"phantom": {"patients": 2, "visits": 2, "size": 64}, "train": {"steps": -1}}, ["phantom.seed: required",
                                                                                    "train.steps"]),
    ([1, 2], ["expected a JSON object"]),
], ids=["billions-of-patients", "unknown-key", "path-in-seed", "pixel-budget", "missing-and-bad", "not-an-object"])
def test_recipe_is_validated_before_any_work(model_copy, tmp_path, recipe, words):
    (model_copy / RECIPE_FILE).write_text(json.dumps(recipe))
    _away_from_data(model_copy, tmp_path)
    model = load_model(model_copy)
    cache = tmp_path / "cache"
    t0 = time.perf_counter()
    with pytest.raises(ModelError) as info:
        training_data_dir(model, cache_dir=cache)
    assert time.perf_counter() - t0 < 1.0
    for word in words:
        assert word in str(info.value)
    assert "\n" not in str(info.value) and not cache.exists(), "no phantom is generated for a bad recipe"


def test_shipped_recipe_still_reads():
    assert read_recipe(DEFAULT_MODEL_DIR) == {"phantom": {"patients": 500, "visits": 2, "size": 128, "seed": 0}}


@pytest.mark.parametrize("args, expect", [
    (["generate", "--n", "abc", "--out", "x"], "Invalid value for '--n'"),
    (["gate"], "Missing argument 'REPORT'"),
    (["bogus"], "No such command 'bogus'"),
    (["audit", "--release"], "requires an argument"),
])
def test_usage_errors_through_the_console_script_are_one_line(args: list[str], expect: str) -> None:
    """The real entry point (not CliRunner): Click's boxed usage screen becomes one ``error:`` line, exit 2."""
    proc = subprocess.run([sys.executable, "-m", "synfundus_guard.cli.main", *args], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and expect in lines[0], proc.stderr


def test_version_option() -> None:
    from synfundus_guard import __version__

    proc = subprocess.run([sys.executable, "-m", "synfundus_guard.cli.main", "--version"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == f"synfundus-guard {__version__}"
