"""``guard gate`` end to end (real report.json files, real policies), and the JUnit, SARIF and terminal views."""

from __future__ import annotations

import io
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from synfundus_guard.audit.base import Finding
from synfundus_guard.cli.main import app
from synfundus_guard.cli.render import render_report
from synfundus_guard.policies.evaluate import IMAGE_CHECKS, gate_report, image_result
from synfundus_guard.formats.junit import to_junit
from synfundus_guard.release.report import write_report
from synfundus_guard.formats.sarif import SARIF_SCHEMA, SarifFormat, to_sarif

from tests.report_data import INTERNAL, PUBLIC, audited, image, membership

SARIF_LEVELS = {"none", "note", "warning", "error"}


def gate(*args: str):
    return CliRunner().invoke(app, ["gate", *map(str, args)])


@pytest.fixture
def faces_report(tmp_path) -> Path:
    """An audit under the public policy: 49 clean images, one with a face (blocked under public)."""
    images = [image(f"img_{i:03d}.png") for i in range(49)] + [image("face.png", faces="flag")]
    return write_report(audited(images, membership=membership(0.55)), tmp_path / "audit")


# --- the command ----------------------------------------------------------------------------------------------


def test_gate_is_registered():
    assert "gate" in [c.name for c in app.registered_commands]


def test_gate_fails_with_exit_1_and_writes_ci_files(faces_report, tmp_path):
    junit, sarif = tmp_path / "ci" / "junit.xml", tmp_path / "ci" / "results.sarif"
    result = gate(faces_report, "--policy", "public", "--junit", junit, "--sarif", sarif)
    assert result.exit_code == 1, result.output
    assert "violation: 1 of 50 images failed (2.00%; policy limit 0.00%)" in result.stdout
    assert "FAIL: 1 violation of policy 'public'" in result.stdout
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite.get("failures") == "2"  # face.png and failed-fraction
    assert [r["ruleId"] for r in json.loads(sarif.read_text())["runs"][0]["results"]] == [
        "SFG-FACES", "SFG-RELEASE-FAILED-FRACTION"]
    assert sorted(p.name for p in junit.parent.iterdir()) == ["junit.xml", "results.sarif"]  # no temp files left


def test_gate_reapplies_another_policys_actions(faces_report):
    result = gate(faces_report.parent, "--policy", "internal")  # the folder works too
    assert result.exit_code == 0, result.output
    assert "PASS: the release meets policy 'internal'" in result.stdout
    assert "note: the audit ran under policy 'public'" in result.stdout


def test_gate_passes_a_clean_report(tmp_path):
    path = write_report(audited([image("a.png"), image("b.png")], membership=membership(0.5)), tmp_path)
    result = gate(path, "--policy", "public")
    assert result.exit_code == 0 and result.stderr == ""
    assert "PASS" in result.stdout and "membership-auc" in result.stdout


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "error: report not found: {path}"),
        ("{not json", "error: {path}: not valid JSON (Expecting property name enclosed in double quotes at line 1)"),
        ('{"schema": "other/v9", "images": []}', "error: not a synfundus-guard report (expected schema "
                                                 "'synfundus-guard/report/v1')"),
        ("scores", "error: malformed report: images[0]: scores must map names to finite numbers"),
    ],
    ids=["missing", "not-json", "wrong-schema", "wrong-types"],
)
def test_bad_report_is_one_line_and_exit_2(tmp_path, content, message):
    path = tmp_path / "report.json"
    if content == "scores":
        report = audited([image("a.png")])
        report.images[0].scores = {"memorization.score": "high"}
        write_report(report, tmp_path)
    elif content is not None:
        path.write_text(content, encoding="utf-8")
    result = gate(path, "--policy", "public")
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [message.format(path=path)]
    assert result.stdout == "" and "Traceback" not in result.output


def test_unwritable_ci_file_is_exit_2(faces_report, tmp_path):
    folder = tmp_path / "taken"
    folder.mkdir()
    result = gate(faces_report, "--policy", "internal", "--junit", folder)
    assert result.exit_code == 2 and len(result.stderr.splitlines()) == 1 and "Traceback" not in result.output


def test_deeply_nested_report_is_one_line_and_exit_2(tmp_path):
    path = tmp_path / "report.json"
    path.write_text('{"a":' * 200_000 + "1" + "}" * 200_000, encoding="utf-8")
    junit = tmp_path / "ci" / "junit.xml"
    result = gate(path, "--policy", "public", "--junit", junit)
    assert result.exit_code == 2 and result.stdout == "" and "Traceback" not in result.output
    assert result.stderr.splitlines() == [f"error: {path}: JSON nested deeper than 64 levels"]
    assert not (tmp_path / "ci").exists()


def test_failed_sarif_write_removes_the_junit_this_run_wrote(faces_report, tmp_path):
    ci = tmp_path / "ci"
    ci.mkdir()
    (ci / "notes.txt").write_text("mine")
    blocked = ci / "results.sarif"
    blocked.mkdir()  # SARIF cannot be written: a folder holds its name
    junit = ci / "new" / "junit.xml"
    result = gate(faces_report, "--policy", "public", "--junit", junit, "--sarif", blocked)
    assert result.exit_code == 2 and result.stdout == ""
    assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith("error: ")
    assert sorted(p.name for p in ci.iterdir()) == ["notes.txt", "results.sarif"], "junit and its folder are removed"
    assert (ci / "notes.txt").read_text() == "mine" and not any(blocked.iterdir())


def test_every_ci_file_is_rendered_before_any_is_written(faces_report, tmp_path, monkeypatch):
    def broken(*_args):
        raise ValueError("cannot render")

    monkeypatch.setattr(SarifFormat, "render", broken)
    junit, sarif = tmp_path / "junit.xml", tmp_path / "results.sarif"
    result = gate(faces_report, "--policy", "public", "--junit", junit, "--sarif", sarif)
    assert result.exit_code == 2
    assert result.stderr.splitlines() == ["error: internal error: ValueError: cannot render "
                                          "(run with --debug for the traceback)"]
    assert not junit.exists() and not sarif.exists()


def test_same_path_for_junit_and_sarif_is_a_usage_error(faces_report, tmp_path):
    out = tmp_path / "ci.out"
    result = gate(faces_report, "--policy", "public", "--junit", out, "--sarif", out)
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [f"error: --junit and --sarif name the same file: {out}"]
    assert not out.exists()


# --- JUnit ----------------------------------------------------------------------------------------------------


def test_junit_cases_counts_and_escaping():
    odd = 'a<b>&"q\'\x01\x1b.png'
    images = [image("ok.png"), image(odd, memorization="flag", text="error"), image("face.png", INTERNAL, faces="flag")]
    report, verdict = gate_report(audited(images), INTERNAL)
    root = ET.fromstring(to_junit(report, verdict).encode("utf-8"))
    assert root.tag == "testsuites"
    (suite,) = root.findall("testsuite")
    assert suite.get("name") == "synfundus-guard"
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases if c.get("classname") == "images"] == ["ok.png", "a<b>&\"q'\\x01\\x1b.png",
                                                                               "face.png"]
    release = {c.get("name"): c for c in cases if c.get("classname") == "release"}
    assert list(release) == ["failed-fraction", "membership", "membership-auc", "membership-tpr-at-1pct-fpr",
                             "membership-tpr-at-01pct-fpr", "differential-privacy"]
    failure = cases[1].find("failure")
    assert failure.get("message") == "memorization: score 0.97 > 0.90; text check could not run: OSError: cannot read"
    assert failure.text.splitlines() == ["memorization: score 0.97 > 0.90",
                                         "text check could not run: OSError: cannot read"]
    assert cases[0].find("failure") is None and cases[2].find("failure") is None
    assert cases[2].find("system-out").text == "warning: faces: score 0.97 > 0.90"
    # membership was not run although the policy enables it: a failure (fail closed); its limits and DP (not
    # required) are skipped cases -> 4 skipped
    assert all(release[n].find("skipped") is not None for n in list(release)[2:])
    assert release["failed-fraction"].find("failure") is not None  # 1 of 3 > 1 %
    assert "opt out explicitly" in release["membership"].find("failure").get("message")
    counts = {k: suite.get(k) for k in ("tests", "failures", "errors", "skipped")}
    assert counts == {"tests": "9", "failures": "3", "errors": "0", "skipped": "4"}
    assert {p.get("name"): p.get("value") for p in suite.find("properties")}["policy"] == "internal"


def test_junit_lists_required_checks_not_run_as_failures(tmp_path):
    images = [image_result("a.png", [Finding("memorization", False)], PUBLIC)]
    report, verdict = gate_report(audited(images, membership=membership(0.5)), PUBLIC)
    assert verdict.verdict == "fail"
    path = tmp_path / "j.xml"
    path.write_text(to_junit(report, verdict))
    cases = ET.parse(path).getroot().iter("testcase")
    failed = {c.get("name") for c in cases if c.get("classname") == "checks" and c.find("failure") is not None}
    assert failed == {"vessels", "text", "faces", "metadata"}


# --- SARIF ----------------------------------------------------------------------------------------------------


def test_sarif_structure_rules_and_results(tmp_path):
    images = [image("ok.png"), image("dir/near copy.png", memorization="flag", vessels="flag"),
              image("face.png", INTERNAL, faces="flag"), image("broken.png", faces="error")]
    report, verdict = gate_report(audited(images, membership=membership(0.9, point=0.8)), INTERNAL)
    path = tmp_path / "r.sarif"
    path.write_text(json.dumps(to_sarif(report, verdict)))
    log = json.loads(path.read_text())
    assert log["$schema"] == SARIF_SCHEMA and log["version"] == "2.1.0" and len(log["runs"]) == 1
    run = log["runs"][0]
    driver = run["tool"]["driver"]
    assert driver["name"] == "synfundus-guard" and driver["version"] and driver["informationUri"].startswith("https://")
    rule_ids = [r["id"] for r in driver["rules"]]
    assert len(set(rule_ids)) == len(rule_ids) and rule_ids[:5] == [f"SFG-{n.upper()}" for n in IMAGE_CHECKS]
    for rule in driver["rules"]:
        assert rule["shortDescription"]["text"] and rule["defaultConfiguration"]["level"] in SARIF_LEVELS
    assert driver["rules"][rule_ids.index("SFG-FACES")]["defaultConfiguration"]["level"] == "warning"
    results = run["results"]
    for result in results:
        assert result["message"]["text"] and result["level"] in SARIF_LEVELS
        assert rule_ids[result["ruleIndex"]] == result["ruleId"]
    located = [(r["ruleId"], r["level"], r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"])
               for r in results if "locations" in r]
    near = "dir/near%20copy.png"
    assert located == [("SFG-MEMORIZATION", "error", near), ("SFG-VESSELS", "error", near),
                       ("SFG-FACES", "warning", "face.png"), ("SFG-FACES", "error", "broken.png")]
    assert results[0]["locations"][0]["physicalLocation"]["artifactLocation"]["uriBaseId"] == "RELEASE"
    assert results[0]["properties"]["scores"] == {"memorization.score": 0.97}
    assert results[0]["message"]["text"] == "memorization: score 0.97 > 0.90"
    release = [r for r in results if "locations" not in r]
    assert [r["ruleId"] for r in release] == ["SFG-RELEASE-FAILED-FRACTION", "SFG-RELEASE-MEMBERSHIP-AUC"]
    assert [r["message"]["text"] for r in release] == list(verdict.violations)
    assert run["properties"]["verdict"] == "fail"


def test_sarif_of_a_passing_release_has_no_results():
    report, verdict = gate_report(audited([image("a.png")], membership=membership(0.5)), PUBLIC)
    log = to_sarif(report, verdict)
    assert log["runs"][0]["results"] == [] and json.dumps(log, allow_nan=False)


# --- terminal -------------------------------------------------------------------------------------------------


def _rendered(report, verdict, **kwargs) -> str:
    console = Console(file=io.StringIO(), width=160, record=True, color_system=None)
    render_report(report, verdict, console=console, **kwargs)
    return console.export_text()


def test_render_escapes_file_names_and_limits_rows():
    images = [image(f"[bold red]x{i}\x1b[2J.png", memorization="flag") for i in range(5)] + [image("ok.png")]
    report, verdict = gate_report(audited(images, membership=membership(0.5)), PUBLIC)
    text = _rendered(report, verdict, max_rows=2)
    assert "[bold red]x0\\x1b[2J.png" in text and "[bold red]x1\\x1b[2J.png" in text
    assert "x2" not in text and "... and 3 more flagged images (see report.json)" in text
    assert "\x1b" not in text
    assert "Images audited" in text and "FAIL: 1 violation of policy 'public'" in text
    assert "memorization.score=0.97" in text
    # memorization row: action, flagged, errors, blocked, warned
    assert re.search(r"memorization\s+│\s+block\s+│\s+5\s+│\s+0\s+│\s+5\s+│\s+0\s", text)


def test_render_pass_line_and_release_checks():
    report, verdict = gate_report(audited([image("a.png")], membership=membership(0.5)), PUBLIC)
    text = _rendered(report, verdict)
    assert text.rstrip().endswith("PASS: the release meets policy 'public'")
    assert "Flagged images" not in text and "membership-auc" in text and "not required by the policy" in text


@pytest.mark.parametrize("images", [[], {}])
def test_a_report_whose_images_were_removed_is_refused(tmp_path, images):
    """Dropping the failing images from a report (or making the list an object) must not turn it into a pass."""
    report = audited([image("a.png", memorization="flag"), image("b.png")])
    report.summary = {"n_images": 2}
    path = write_report(report, tmp_path / "r")
    doc = json.loads(path.read_text())
    doc["images"] = images
    path.write_text(json.dumps(doc))
    res = gate(path, "--policy", "public")
    assert res.exit_code == 2, res.output
    assert "malformed report" in res.output and "Traceback" not in res.output
