"""The SARIF that ``guard gate --sarif`` and ``report.sarif`` carry validates against the official SARIF 2.1.0 schema.

Code-scanning dashboards (GitHub, GitLab, Azure DevOps) reject or silently drop logs that break the schema, so a
structural test of our own is not enough. ``tests/data/sarif-schema-2.1.0.json`` is the OASIS SARIF 2.1.0 (errata01
OS) schema, byte for byte ``sarif-2.1/schema/sarif-schema-2.1.0.json`` of github.com/oasis-tcs/sarif-spec at commit
e0583813964ec43cea53b6b531b402866095ed1f (git blob 0f58372b), OASIS IPR Policy (RF on RAND), see that repo's LICENSE.md.
It is vendored: nothing is fetched at test time (its ``$ref``s are all local).
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path
from urllib.parse import unquote

import pytest
from jsonschema.validators import validator_for

from synfundus_guard.audit.base import Finding
from synfundus_guard.formats.interface import ReportView
from synfundus_guard.formats.sarif import SarifFormat, to_sarif
from synfundus_guard.policies.evaluate import IMAGE_CHECKS, gate_report, image_result
from tests.report_data import INTERNAL, PUBLIC, audited, image, membership

SCHEMA_PATH = Path(__file__).parent / "data" / "sarif-schema-2.1.0.json"
SCHEMA_SHA256 = "c3b4bb2d6093897483348925aaa73af03b3e3f4bd4ca38cef26dcb4212a2682e"
SCHEMA = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
VALIDATOR_CLASS = validator_for(SCHEMA)  # the Draft the schema declares (draft-04 for the OASIS file)
VALIDATOR = VALIDATOR_CLASS(SCHEMA, format_checker=VALIDATOR_CLASS.FORMAT_CHECKER)
# RFC 3986 relative-ref with no query or fragment: unreserved, pct-encoded, sub-delims, ":", "@", "/". (jsonschema's
# "uri-reference" format check needs an optional package, so the characters are checked here.)
URI_PATH = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/]|%[0-9A-F]{2})*")
HOSTILE_NAMES = ["dir/near copy.png", "ünïcödé/网膜 眼底.png", "ctrl\x01\x1b[2J\x7f.png", "../escape.png",
                 "a/../../b.png", "C:weird:name.png", "q?x=1#frag%20.png", 'a<b>&"q\'.png', "tab\tnew\nline.png",
                 "back\\slash.png"]


# --- validation -----------------------------------------------------------------------------------------------


def schema_errors(log: dict) -> list[str]:
    """Every schema violation in ``log``, one line each (empty when valid), so a failure shows them all."""
    return sorted(f"/{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in VALIDATOR.iter_errors(log))


def sarif(images, policy=PUBLIC, **release_checks) -> dict:
    """The SARIF log of a gated report; asserts it validates, both as ``to_sarif`` returns it and as rendered."""
    report, verdict = gate_report(audited(images, policy, **release_checks), policy)
    log = to_sarif(report, verdict)
    assert schema_errors(log) == []
    rendered = json.loads(SarifFormat().render(ReportView(report=report, verdict=verdict)))
    assert rendered == log and schema_errors(rendered) == []
    return log


def results(log: dict) -> list[tuple[str, str, str | None]]:
    """(ruleId, level, artifact uri or None) per result."""
    out = []
    for r in log["runs"][0]["results"]:
        uri = r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] if "locations" in r else None
        out.append((r["ruleId"], r["level"], uri))
    return out


def test_vendored_schema_is_the_oasis_file_and_a_valid_schema():
    assert hashlib.sha256(SCHEMA_PATH.read_bytes()).hexdigest() == SCHEMA_SHA256, "vendored schema was modified"
    assert SCHEMA["id"].startswith("https://docs.oasis-open.org/sarif/sarif/v2.1.0/")
    assert VALIDATOR_CLASS.__name__ == "Draft4Validator"
    VALIDATOR_CLASS.check_schema(SCHEMA)


def test_clean_release_validates_with_no_results():
    log = sarif([image("a.png"), image("b.png")], membership=membership(0.5))
    assert log["runs"][0]["results"] == [] and log["runs"][0]["properties"]["verdict"] == "pass"


@pytest.mark.parametrize("policy", [PUBLIC, INTERNAL], ids=["public", "internal"])
@pytest.mark.parametrize("check", IMAGE_CHECKS)
def test_each_flagged_check_validates(check, policy):
    log = sarif([image("ok.png", policy), image("bad.png", policy, **{check: "flag"})], policy,
                membership=membership(0.5))
    rule = f"SFG-{check.upper()}"
    assert (rule, "bad.png") in [(r, uri) for r, _, uri in results(log)]
    levels = {r["id"]: r["defaultConfiguration"]["level"] for r in log["runs"][0]["tool"]["driver"]["rules"]}
    assert levels[rule] in {"error", "warning", "note"}


@pytest.mark.parametrize("check", IMAGE_CHECKS)
def test_an_errored_check_validates_as_an_error(check):
    log = sarif([image("broken.png", INTERNAL, **{check: "error"})], INTERNAL, membership=membership(0.5))
    assert (f"SFG-{check.upper()}", "error", "broken.png") in results(log)


def test_every_check_flagged_and_errored_at_once_validates():
    images = [image("all.png", **{c: "flag" for c in IMAGE_CHECKS}),
              image("err.png", **{c: "error" for c in IMAGE_CHECKS}), image("ok.png")]
    log = sarif(images, membership=membership(0.9, point=0.8))
    assert len(results(log)) == 2 * len(IMAGE_CHECKS) + 2  # + failed-fraction and membership-auc


def test_hostile_file_names_validate_as_rfc3986_relative_paths():
    log = sarif([image(name, memorization="flag") for name in HOSTILE_NAMES], membership=membership(0.5))
    uris = [uri for rule, _, uri in results(log) if rule == "SFG-MEMORIZATION"]
    assert len(uris) == len(HOSTILE_NAMES)
    # would point outside the release (or, with a backslash, may on Windows): no location at all
    escaping = {"../escape.png", "a/../../b.png", "back\\slash.png"}
    for name, uri in zip(HOSTILE_NAMES, uris):
        if name in escaping:
            assert uri is None
            continue
        assert URI_PATH.fullmatch(uri), f"{name!r} -> {uri!r} is not an RFC 3986 path"
        assert ":" not in uri.split("/")[0], f"{uri!r} would parse as a URI scheme"
        assert unquote(uri) == name  # the dashboard shows the real file name
    named = [r["properties"]["file_name"] for r in log["runs"][0]["results"] if r["ruleId"] == "SFG-MEMORIZATION"]
    assert named == HOSTILE_NAMES


def test_membership_and_coverage_violations_validate():
    auc = sarif([image("a.png")], INTERNAL, membership=membership(0.9, point=0.8))
    assert ("SFG-RELEASE-MEMBERSHIP-AUC", "error", None) in results(auc)
    not_run = sarif([image("a.png")], PUBLIC)  # the public policy requires membership inference
    assert ("SFG-RELEASE-MEMBERSHIP", "error", None) in results(not_run)
    partial = sarif([image_result("a.png", [Finding("memorization", False)], PUBLIC)], membership=membership(0.5))
    assert {r for r, _, _ in results(partial)} == {f"SFG-COVERAGE-{c.upper()}" for c in IMAGE_CHECKS[1:]}


def _level_fatal(log):
    log["runs"][0]["results"][0]["level"] = "fatal"


def _no_message(log):
    del log["runs"][0]["results"][0]["message"]


def _unknown_result_key(log):
    log["runs"][0]["results"][0]["severity"] = "high"


def _wrong_version(log):
    log["version"] = "2.0.0"


def _negative_rule_index(log):
    log["runs"][0]["results"][0]["ruleIndex"] = -2


def _no_driver_name(log):
    del log["runs"][0]["tool"]["driver"]["name"]


@pytest.mark.parametrize("break_it", [_level_fatal, _no_message, _unknown_result_key, _wrong_version,
                                      _negative_rule_index, _no_driver_name])
def test_the_validator_rejects_a_broken_log(break_it):
    """Guards against a vacuous pass (a wrong Draft, an empty schema): each breakage is caught."""
    log = sarif([image("face.png", faces="flag")], membership=membership(0.5))
    broken = copy.deepcopy(log)
    break_it(broken)
    assert schema_errors(broken), f"{break_it.__name__} was not rejected"
    if break_it is _level_fatal:
        assert schema_errors(broken) == ["/runs/0/results/0/level: 'fatal' is not one of "
                                         "['none', 'note', 'warning', 'error']"]
