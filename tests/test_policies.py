"""Policy files: the shipped tiers load, malformed ones are rejected with every problem listed."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from synfundus_guard.cli.main import app
from synfundus_guard.errors import PolicyError
from synfundus_guard.policies.schema import (MAX_POLICY_BYTES, Action, Bound, load_policy, load_shipped_policy,
                                             parse_policy)
from synfundus_guard.policies import shipped
from synfundus_guard.policies.shipped import shipped_policy_names, shipped_policy_text
from synfundus_guard.results import ImageResult, Report
from synfundus_guard.release.report import write_report

SHIPPED_DATA = Path(shipped.__file__).resolve().parent / "data"
"""Where the shipped policies sit in a checkout (an installed wheel is tested in test_wheel_policies.py)."""

BROKEN = """\
name: broken
colour: blue
max_failed_fraction: 1.5
memorization:
  k: ten
  action: stop
  radius: 3
identity:
  faces: {enabled: "yes", quantile: -0.1}
  vessels: 7
membership:
  bound: median
  max_auc: 2
generation:
  max_epsilon: 0
  require_dp: 1
"""
# Every problem in BROKEN, by the path it is reported under, with a word the message must contain.
BROKEN_PROBLEMS = {
    "colour": "unknown key",
    "max_failed_fraction": "[0, 1]",
    "memorization.k": "expected int",
    "memorization.action": "not one of block, warn",
    "memorization.radius": "unknown key",
    "identity.faces.enabled": "expected bool",
    "identity.faces.quantile": "[0, 1]",
    "identity.vessels": "expected a mapping",
    "membership.bound": "not one of point, lower, upper",
    "membership.max_auc": "[0, 1]",
    "generation.max_epsilon": "> 0",
    "generation.require_dp": "expected bool",
}


def test_shipped_public_policy_is_strict():
    policy = load_policy("public")
    assert policy.name == "public"
    assert policy.max_failed_fraction == 0.0
    assert policy.membership.bound is Bound.POINT  # with the power rule: see policies/evaluate.py
    assert policy.membership.max_tpr_at_1pct_fpr == 0.05
    assert all(getattr(policy.identity, n).action is Action.BLOCK for n in ("vessels", "text", "faces", "metadata"))
    assert len(policy.sha256) == 64 and policy.source == "shipped:public"


def test_shipped_internal_policy_warns_on_faces():
    policy = load_policy("internal")
    assert policy.name == "internal"
    assert policy.identity.faces.action is Action.WARN
    assert policy.membership.bound is Bound.POINT
    assert policy.membership.max_auc == 0.75 and policy.max_failed_fraction == 0.01
    assert policy.sha256 != load_policy("public").sha256


def test_every_problem_is_listed():
    with pytest.raises(PolicyError) as info:
        parse_policy(BROKEN, source="broken.yaml")
    problems = info.value.problems
    assert {p.split(":")[0] for p in problems} == set(BROKEN_PROBLEMS)
    assert len(problems) == len(BROKEN_PROBLEMS)
    for path, word in BROKEN_PROBLEMS.items():
        (line,) = [p for p in problems if p.startswith(f"{path}:")]
        assert word in line, line
    assert info.value.source == "broken.yaml"


def test_missing_name_is_listed_beside_other_problems():
    with pytest.raises(PolicyError) as info:
        parse_policy("description: no name\nmax_failed_fraction: -1\n")
    assert info.value.problems == ["max_failed_fraction: -1.0 must be in [0, 1]", "name: required"]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("name: x\nmemorization: [a, b\n", "not valid YAML at line 3"),
        ("", "name: required"),
        ("# only a comment\n", "name: required"),
        ("- public\n- internal\n", "policy: expected a mapping, got list"),
        ("name: 3\n", "name: expected str, got int 3"),
        ("name:\n", "name: must not be empty"),
    ],
    ids=["invalid-yaml", "empty-file", "comment-only", "list-at-top", "name-not-a-string", "name-empty"],
)
def test_malformed_document(text, problem):
    with pytest.raises(PolicyError) as info:
        parse_policy(text)
    assert info.value.problems == [problem]


def test_missing_policy_file(tmp_path):
    with pytest.raises(PolicyError) as info:
        load_policy(tmp_path / "nope.yaml")
    assert info.value.problems == ["file not found"]


@pytest.mark.parametrize("action", list(Action))
def test_every_action_parses(action):
    text = f"name: t\nmemorization: {{action: {action.value}}}\nidentity: {{text: {{action: {action.value}}}}}\n"
    policy = parse_policy(text)
    assert policy.memorization.action is action and policy.identity.text.action is action


@pytest.mark.parametrize("bound", list(Bound))
def test_every_bound_parses(bound):
    assert parse_policy(f"name: t\nmembership: {{bound: {bound.value}}}\n").membership.bound is bound


def _report_dir(tmp_path: Path) -> Path:
    report = Report(policy={"name": "public", "sha256": "0" * 64}, embedder={},
                    images=[ImageResult("a.png", "pass", checks={"memorization": "pass"})], verdict="pass")
    write_report(report, tmp_path / "audit")
    return tmp_path / "audit"


def test_gate_prints_every_policy_problem_and_exits_2(tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text(BROKEN, encoding="utf-8")
    result = CliRunner().invoke(app, ["gate", str(_report_dir(tmp_path)), "--policy", str(bad)])
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    assert lines[0] == f"error: invalid policy {bad}:"
    assert [line.split(":")[0] for line in lines[1:]] == [f"  - {path}" for path in BROKEN_PROBLEMS]
    assert "Traceback" not in result.output and result.stdout == ""


def test_gate_with_missing_policy_exits_2(tmp_path):
    result = CliRunner().invoke(app, ["gate", str(_report_dir(tmp_path)), "--policy", str(tmp_path / "no.yaml")])
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [f"error: invalid policy {tmp_path / 'no.yaml'}:", "  - file not found"]


# --- bounded YAML: hostile policy files are refused before anything is built ------------------------------------


def _alias_bomb(levels: int = 9) -> str:
    """Nine aliases of nine items per level: 9^9 (~4 * 10^8) nodes once expanded ("billion laughs")."""
    lines = ["name: bomb", "a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def test_alias_bomb_is_refused_at_once(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(_alias_bomb(), encoding="utf-8")
    start = time.perf_counter()
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    assert time.perf_counter() - start < 0.5
    assert info.value.problems == ["line 2: YAML anchors and aliases are not allowed in policies (found 'a0')"]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("name: x\ndescription: &d hello\n", "line 2: YAML anchors and aliases are not allowed"),
        ("name: x\nmemorization: " + "[" * 20 + "]" * 20 + "\n", "line 2: nested deeper than 16 levels"),
        ("name: x\n" + "".join("  " * i + f"k{i}:\n" for i in range(30)), "line 18: nested deeper than 16 levels"),
        ("name: x\nm: " + "[" * 100_000 + "\n", "nested deeper than 16 levels at line 2"),
        ("name: x\nmemorization: {k: " + "9" * 5000 + "}\n", "not valid YAML (Exceeds the limit"),
        ("name: !!python/object/apply:os.system [ls]\n", "not valid YAML at line 1"),
    ],
    ids=["anchor", "deep-flow", "deep-block", "libyaml-depth", "huge-integer", "python-tag"],
)
def test_hostile_yaml_is_one_problem(text, problem):
    with pytest.raises(PolicyError) as info:
        parse_policy(text, source="hostile.yaml")
    (only,) = info.value.problems
    assert only.startswith(problem), only


def test_policy_file_size_is_capped(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_bytes(b"name: big\n" + b"# padding\n" * (MAX_POLICY_BYTES // 10))
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    assert info.value.problems == [f"file too large (more than {MAX_POLICY_BYTES} bytes)"]
    with pytest.raises(PolicyError, match="file too large"):
        parse_policy(path.read_text(), source=str(path))


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
def test_endless_policy_file_reads_only_up_to_the_cap():
    with pytest.raises(PolicyError) as info:
        load_policy(Path("/dev/zero"))
    assert info.value.problems == [f"file too large (more than {MAX_POLICY_BYTES} bytes)"]


def test_gate_with_alias_bomb_policy_exits_2_fast(tmp_path):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(_alias_bomb(), encoding="utf-8")
    junit = tmp_path / "junit.xml"
    start = time.perf_counter()
    args = ["gate", str(_report_dir(tmp_path)), "--policy", str(bomb), "--junit", str(junit)]
    result = CliRunner().invoke(app, args)
    assert time.perf_counter() - start < 1.0
    assert result.exit_code == 2 and "Traceback" not in result.output and result.stdout == ""
    problem = "line 2: YAML anchors and aliases are not allowed in policies (found 'a0')"
    assert result.stderr.splitlines() == [f"error: invalid policy {bomb}:", f"  - {problem}"]
    assert not junit.exists()


# --- shipped policies by name ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../policies/public", "public/../../x", "", "a" * 100, "public.yaml", "data/public"])
def test_shipped_policy_names_cannot_reach_outside(name):
    with pytest.raises(PolicyError, match=r"not a shipped policy name \(shipped: internal, public\)"):
        shipped_policy_text(name)


def test_shipped_policy_names_resolve(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert shipped_policy_names() == ("internal", "public")
    with pytest.raises(PolicyError) as info:
        load_policy("secret")
    assert info.value.problems == ["no such file, and no shipped policy of that name (shipped: internal, public)"]
    by_path = load_policy(SHIPPED_DATA / "public.yaml")  # the same bytes by name and by path: the same policy
    assert by_path.sha256 == load_policy("public").sha256 and by_path.source == str(SHIPPED_DATA / "public.yaml")


def test_a_file_named_like_a_shipped_policy_wins_over_the_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "public").write_text("name: mine\n", encoding="utf-8")
    assert load_policy("public").name == "mine" and load_policy("public").source == "public"
    assert load_shipped_policy("public").name == "public"  # library code that means the shipped one says so
    (tmp_path / "internal").mkdir()  # a folder is not a policy file: the name still means the shipped one
    assert load_policy("internal").source == "shipped:internal"


def test_missing_policy_path_points_at_the_shipped_name(tmp_path):
    with pytest.raises(PolicyError) as info:
        load_policy(tmp_path / "policies" / "public.yaml")  # the repository-root path of old releases
    assert info.value.problems == ["file not found (the shipped policy is loaded by its name: public)"]


def test_gate_takes_a_shipped_policy_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    report = str(_report_dir(tmp_path))
    judged = CliRunner().invoke(app, ["gate", report, "--policy", "public"])
    assert judged.exit_code == 1  # judged (this bare report ran no identity checks), not refused as input
    assert load_policy("public").sha256[:12] in judged.stdout
    result = CliRunner().invoke(app, ["gate", report, "--policy", "secret"])
    assert result.exit_code == 2 and result.stdout == ""
    problem = "no such file, and no shipped policy of that name (shipped: internal, public)"
    assert result.stderr.splitlines() == ["error: invalid policy secret:", f"  - {problem}"]
