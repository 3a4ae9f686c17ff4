"""Report formats behind one interface: every member of the enum renders, escaping holds, files are written
all-or-nothing, and ``--format`` works the same on ``guard audit`` and ``guard gate``."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from typer.testing import CliRunner

from synfundus_guard.audit.base import Finding
from synfundus_guard.cli.main import app, run
from synfundus_guard.formats import OutputFormat, ReportFormat, ReportView, get_format, render_files, write_files
from synfundus_guard.formats._scores import SCORES, fraction_below, plain_words
from synfundus_guard.formats._plots import Histogram
from synfundus_guard.policies.evaluate import evaluate_release, image_result
from synfundus_guard.policies.schema import load_policy
from synfundus_guard.release.report import write_report
from synfundus_guard.results import Report

PUBLIC = load_policy("public")
MARKUP = ("html", "junit", "markdown")
"""Formats a browser or a CI page renders as markup: a hostile name must not become an element there."""
HOSTILE = "dir/<script>alert(1)</script> | [x](http://evil) `rm` \x07\u202e.png"


def _view(names=("a.png", HOSTILE)) -> ReportView:
    images = [image_result(n, [Finding("faces", i > 0, ("face detected",) if i else (), {"faces.dlib": float(i)})],
                           PUBLIC) for i, n in enumerate(names)]
    report = Report(policy=PUBLIC.fingerprint(), embedder={"name": "pixel"}, images=images, verdict="pending")
    verdict = evaluate_release(report, PUBLIC)
    report.verdict, report.violations = verdict.verdict, list(verdict.violations)
    return ReportView(report, verdict)


@pytest.mark.parametrize("fmt", list(OutputFormat))
def test_every_format_renders_a_hostile_report(fmt):
    impl = get_format(fmt)
    assert isinstance(impl, ReportFormat) and impl.name == fmt.value and impl.file_name and impl.description
    data = impl.render(_view())
    text = data.decode("utf-8")
    assert text.strip() and "\x07" not in text
    if fmt.value == "json":  # JSON strings carry any text safely; control characters are escaped
        assert json.loads(text)["images"][1]["file_name"] == HOSTILE
    elif fmt.value == "sarif":
        assert json.loads(text)["runs"][0]["results"]
    elif fmt.value in MARKUP:
        assert "<script>" not in text
    if fmt.value == "junit":
        ET.fromstring(data)
    if fmt.value == "markdown":
        assert "](http://evil)" not in text and "\\[x\\]\\(http://evil\\)" in text
        assert all(line.count("|") - line.count("\\|") in (0, 4) for line in text.splitlines())
    if fmt.value == "html":
        assert "&lt;script&gt;" in text and "<img" not in text  # no release folder: no thumbnails
        assert "http://evil" not in text.split("<body>")[0]


def test_formats_names_and_files_are_distinct():
    impls = [get_format(f) for f in OutputFormat]
    assert len({i.file_name for i in impls}) == len(impls) and len({i.name for i in impls}) == len(impls)
    assert {f.value for f in OutputFormat} >= {"json", "junit", "sarif", "html", "markdown"}


def test_only_html_has_a_private_tier_and_it_is_owner_only(tmp_path):
    files = render_files(_view(), list(OutputFormat), private=True)
    assert [k for k, (_, secret) in files.items() if secret] == ["private/report.html"]
    assert "private/report.html" not in render_files(_view(), list(OutputFormat))
    written = write_files(tmp_path, files)
    assert len(written) == len(files)
    assert (tmp_path / "private").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "private" / "report.html").stat().st_mode & 0o777 == 0o600


def test_plain_words_read_the_holdout_histogram():
    hist = Histogram([0.0, 0.5, 1.0], [50, 50])
    assert fraction_below(hist, 0.25) == pytest.approx(0.25) and fraction_below(hist, 2.0) == 1.0
    info = next(s for s in SCORES if s.key == "memorization.embedding_sim")
    assert plain_words(info, 0.75, hist) == "closer to a training photo than 75.0% of holdout photos of new " \
                                            "patients (0.750)"
    assert "any of the 100 holdout photos" in plain_words(info, 1.5, hist)
    assert plain_words(next(s for s in SCORES if s.key == "faces.dlib"), 1.0, hist) is None


@pytest.fixture
def report_dir(tmp_path) -> Path:
    view = _view()
    return write_report(view.report, tmp_path / "audit").parent


def _gate(*args):
    return CliRunner().invoke(app, ["gate", *map(str, args)])


def test_gate_writes_each_format_into_out_and_html_where_asked(report_dir, tmp_path):
    out = tmp_path / "ci"
    result = _gate(report_dir, "--policy", "public", "--format", "markdown", "-f", "sarif", "--out", out,
                   "--html", tmp_path / "page.html")
    assert result.exit_code == 1, result.output
    assert sorted(p.name for p in out.iterdir()) == ["report.md", "report.sarif"]
    assert "Release FAILS" in (tmp_path / "page.html").read_text()


@pytest.mark.parametrize("args, message", [
    (["--format", "html"], "error: --format writes into a folder: give --out DIR"),
    (["--format", "pdf", "--out", "x"], None),
    (["--html", "same", "--junit", "same"], "error: --junit and --html name the same file: same"),
])
def test_gate_format_usage_errors(report_dir, tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    assert run(["gate", str(report_dir), "--policy", "public", *args]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    if message:
        assert err.strip() == message
    assert not (tmp_path / "same").exists() and not (tmp_path / "x").exists()


def test_html_plots_membership_roc_curves_with_hostile_attack_names():
    view = _view()
    roc = {"fpr": [0.0, 0.2, 1.0], "tpr": [0.0, 0.6, 1.0]}
    attacks = {"<script>x</script> $\\frac{a$": {"auc": {"point": 0.7, "lower": 0.6, "upper": 0.8}, "roc": roc,
                                                 "tpr_at_1pct_fpr": {"point": 0.1, "lower": 0.0, "upper": 0.2},
                                                 "n_members": 50, "n_nonmembers": 40}}
    view.report.release_checks["membership"] = [{"level": "image", "attacks": attacks, "notes": ["a <b> note"]}]
    page = get_format("html").render(view).decode("utf-8")
    body = page.split("<h2>Membership inference</h2>")[1]
    assert body.count("<svg") == 1 and "<script>" not in page and "&lt;script&gt;" in body
    assert "0.700 [0.600, 0.800]" in body and "50 / 40" in body and "a &lt;b&gt; note" in body


def test_markdown_summarises_fidelity_when_the_report_has_it():
    view = _view()
    view.report.release_checks["fidelity"] = {"metrics": {"coverage": {"point": 0.93, "lower": 0.9, "upper": 0.95},
                                                           "warnings": []}}
    text = get_format("markdown").render(view).decode("utf-8")
    assert "Fidelity against real images: coverage 0.93" in text
