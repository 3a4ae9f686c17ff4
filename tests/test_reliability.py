"""Reliability of the audit path: fail closed when a check misbehaves, never destroy a folder the tool did not
make, seal a release only after its report is written, and keep private artefacts owner-only."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path
from typing import Sequence

import numpy as np
import pytest
from typer.testing import CliRunner

from synfundus_guard.audit.base import Candidate, Check, Finding, run_checks
from synfundus_guard.cli.main import app
from synfundus_guard.index.calibrate import MIN_HOLDOUT, calibrate, tail_quantile
from synfundus_guard.policies.evaluate import image_result
from synfundus_guard.policies.schema import Policy
from tests.guard_data import make_dataset

runner = CliRunner()
POLICY = str(Path(__file__).resolve().parent / "policies" / "public_without_membership.yaml")
"""public.yaml without membership inference: these releases (3-10 images) are too small for a membership test."""


# -- fail closed ---------------------------------------------------------------------------------------------

class _Misbehaving(Check):
    """A real check object that does one wrong thing; named ``faces`` so the policy blocks its flags."""

    name = "faces"

    def __init__(self, how: str) -> None:
        self.how = how

    def check_batch(self, batch: Sequence[Candidate]) -> list[Finding]:
        if self.how == "raise":
            raise RuntimeError("detector crashed\nsecond line")
        if self.how == "short":
            return [Finding(check=self.name, flagged=False)] * (len(batch) - 1)
        value = {"nan": float("nan"), "inf": float("inf")}[self.how]
        return [Finding(check=self.name, flagged=False, scores={"faces.score": value}) for _ in batch]


def _batch(n: int = 3) -> list[Candidate]:
    rng = np.random.default_rng(0)
    return [Candidate(f"s{i}.png", rng.random((40, 40, 3), dtype=np.float32)) for i in range(n)]


@pytest.mark.parametrize("how, reason", [("raise", "RuntimeError: detector crashed"),
                                         ("short", "returned 2 findings for 3 images"),
                                         ("nan", "non-finite score faces.score"),
                                         ("inf", "non-finite score faces.score")])
def test_a_misbehaving_check_fails_every_image_closed(how: str, reason: str) -> None:
    per_image = run_checks([_Misbehaving(how)], _batch())
    assert len(per_image) == 3
    policy = Policy(name="p")
    for name, findings in zip("012", per_image):
        (finding,) = findings
        assert finding.flagged and finding.error is not None and reason in finding.error
        assert "\n" not in finding.reasons[0]  # one line, even from a multi-line exception
        result = image_result(f"s{name}.png", findings, policy)
        assert result.verdict == "fail" and result.checks["faces"] != "pass"


def test_a_crashing_check_does_not_stop_the_others() -> None:
    class Fine(Check):
        name = "text"

        def check_batch(self, batch: Sequence[Candidate]) -> list[Finding]:
            return [Finding(check=self.name, flagged=False, scores={"text.rows": 0.0}) for _ in batch]

    per_image = run_checks([_Misbehaving("raise"), Fine()], _batch(2))
    assert [[f.check for f in fs] for fs in per_image] == [["faces", "text"]] * 2
    assert all(fs[1].flagged is False and fs[1].error is None for fs in per_image)


# -- thresholds ----------------------------------------------------------------------------------------------

def test_tail_quantile_is_empirical_where_the_sample_resolves_it() -> None:
    x = np.linspace(0.1, 0.9, 101)
    assert tail_quantile(x, 0.5) == pytest.approx(0.5)
    assert tail_quantile(x, 0.99) == pytest.approx(float(np.quantile(x, 0.99)))


def test_tail_quantile_extrapolates_beyond_the_sample_but_never_below_its_maximum_nor_to_one() -> None:
    rng = np.random.default_rng(1)
    x = 1.0 - np.exp(-rng.gumbel(2.0, 0.3, size=50))  # similarities whose -log(1-s) is Gumbel(2, 0.3)
    t999 = tail_quantile(x, 0.999)
    assert x.max() <= t999 < 1.0
    # the fitted tail quantile is close to the true one of the law the sample came from
    true = 1.0 - np.exp(-(2.0 - 0.3 * np.log(-np.log(0.999))))
    assert abs(t999 - true) < 0.02
    assert tail_quantile(x, 0.9999) >= t999  # monotone in q
    assert tail_quantile(x, 1.0) == pytest.approx(float(x.max()))
    flat = np.full(30, 0.4)  # no spread: the maximum is the only defensible threshold
    assert tail_quantile(flat, 0.999) == pytest.approx(0.4)


# -- audits on real folders ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("rel"), patients=2 * MIN_HOLDOUT // 2 + 2, novel=3, copies=1)


def _args(ds, release: Path, out: Path, *extra: str, holdout: Path | None = None) -> list[str]:
    return ["audit", "--release", str(release), "--train", str(ds["train"]), "--holdout",
            str(holdout or ds["holdout"]), "--policy", POLICY, "--out", str(out), "--cache-dir",
            str(ds["root"] / "cache"), *extra]


def _release(ds, tmp_path: Path) -> Path:
    return Path(shutil.copytree(ds["clean"], tmp_path / "release"))


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_holdout_below_the_minimum_is_refused(ds, tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    for p in sorted(ds["holdout"].glob("*.png"))[: MIN_HOLDOUT - 1]:
        shutil.copy(p, small / p.name)
    res = runner.invoke(app, _args(ds, _release(ds, tmp_path), tmp_path / "out", holdout=small))
    assert res.exit_code == 2, res.output
    assert f"at least {MIN_HOLDOUT} are needed" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "out").exists() and not (tmp_path / "release" / "manifest.json").exists()


def test_calibrate_refuses_a_small_holdout_directly(ds, tmp_path):
    from synfundus_guard.data.folder import scan_folder
    from synfundus_guard.errors import InputError

    with pytest.raises(InputError, match=f"at least {MIN_HOLDOUT}"):
        calibrate(None, scan_folder(ds["holdout"])[: MIN_HOLDOUT - 1], k=3)  # refused before the index is used


@pytest.mark.parametrize("where", ["user_folder", "release"])
def test_index_option_never_deletes_a_folder_it_did_not_make(ds, tmp_path, where):
    release = _release(ds, tmp_path)
    if where == "release":
        target = release
    else:
        target = tmp_path / "my_files"
        target.mkdir()
        (target / "thesis.docx").write_bytes(b"years of work")
        (target / "sub").mkdir()
        (target / "sub" / "data.csv").write_text("a,b\n")
    before = _snapshot(target)
    res = runner.invoke(app, _args(ds, release, tmp_path / "out", "--index", str(target)))
    assert res.exit_code == 2, res.output
    assert "not a guard index" in res.output and "Traceback" not in res.output
    assert _snapshot(target) == before
    assert not (target / "records.json").exists()
    assert not target.with_name(target.name + ".building").exists()


def test_a_foreign_building_folder_is_not_removed(ds, tmp_path):
    index = tmp_path / "idx"
    foreign = tmp_path / "idx.building"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    res = runner.invoke(app, _args(ds, _release(ds, tmp_path), tmp_path / "out", "--index", str(index)))
    assert res.exit_code == 2 and "was not made by guard" in res.output
    assert (foreign / "keep.txt").read_text() == "mine"


def test_index_and_private_report_are_owner_only_and_reused(ds, tmp_path):
    index = tmp_path / "idx"
    release = _release(ds, tmp_path)
    res = runner.invoke(app, _args(ds, release, tmp_path / "out", "--index", str(index)))
    assert res.exit_code == 0, res.output
    for p in [index, *index.rglob("*")]:
        mode = stat.S_IMODE(p.stat().st_mode)
        assert mode & 0o077 == 0, f"{p} is {oct(mode)}"
    assert stat.S_IMODE((index / "records.json").stat().st_mode) == 0o600
    assert stat.S_IMODE(index.stat().st_mode) == 0o700
    # an existing index of the same training set is reused (not rebuilt, not deleted)
    again = runner.invoke(app, _args(ds, release, tmp_path / "out", "--index", str(index)))
    assert again.exit_code == 0, again.output


def test_same_images_under_other_patient_ids_do_not_share_an_index(ds, tmp_path):
    index = tmp_path / "idx"
    release = _release(ds, tmp_path)
    assert runner.invoke(app, _args(ds, release, tmp_path / "o1", "--index", str(index),
                                    "--no-manifest")).exit_code == 0
    renamed = Path(shutil.copytree(ds["train"], tmp_path / "train2"))
    lines = (renamed / "labels.csv").read_text().splitlines()
    (renamed / "labels.csv").write_text("\n".join([lines[0], *(ln.replace("PAT-", "Q-") for ln in lines[1:])]) + "\n")
    args = _args(ds, release, tmp_path / "o2", "--index", str(index), "--no-manifest")
    args[args.index("--train") + 1] = str(renamed)
    res = runner.invoke(app, args)
    assert res.exit_code == 2 and "other file names or patient ids" in res.output
    # through the cache (no --index) the two sets get two indexes, each naming its own patients
    for train in (ds["train"], renamed):
        a = _args(ds, release, tmp_path / f"o-{train.name}", "--no-manifest")
        a[a.index("--train") + 1] = str(train)
        assert runner.invoke(app, a).exit_code == 0
    names = {json.dumps(sorted({r["patient_id"] for r in json.loads(p.read_text())}))
             for p in (ds["root"] / "cache" / "index").glob("*/records.json")}
    assert len(names) >= 2


def test_an_unwritable_out_leaves_the_release_unsealed(ds, tmp_path):
    if os.geteuid() == 0:
        out = tmp_path / "file-not-folder"
        out.write_text("x")  # root ignores modes: use an --out that cannot be a folder
    else:
        out = tmp_path / "ro"
        out.mkdir()
        os.chmod(out, 0o500)
    release = _release(ds, tmp_path)
    before = _snapshot(release)
    res = runner.invoke(app, _args(ds, release, out / "report"))
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    assert _snapshot(release) == before  # no manifest.json, no metadata.jsonl


def test_out_holding_user_files_is_refused_and_kept(ds, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    release = _release(ds, tmp_path)
    res = runner.invoke(app, _args(ds, release, out))
    assert res.exit_code == 2 and "holds no guard report" in res.output
    assert _snapshot(out) == {"notes.txt": b"mine"} and not (release / "manifest.json").exists()


def test_a_release_changed_during_the_audit_is_not_sealed(ds, tmp_path, monkeypatch):
    import synfundus_guard.audit.runner as runner_mod

    release = _release(ds, tmp_path)
    real = runner_mod.check_images

    def swap_after_checking(*a, **kw):
        out = real(*a, **kw)
        victim = sorted(release.glob("*.png"))[0]
        victim.write_bytes(next(iter(sorted(ds["train"].glob("*.png")))).read_bytes())
        return out

    monkeypatch.setattr(runner_mod, "check_images", swap_after_checking)
    res = runner.invoke(app, _args(ds, release, tmp_path / "out"))
    assert res.exit_code == 2 and "changed during the audit" in res.output
    assert not (release / "manifest.json").exists() and not (tmp_path / "out" / "report.json").exists()


def test_a_hidden_file_in_the_release_is_refused_before_the_checks(ds, tmp_path):
    """A hidden file is never sealed and verify reports it: an audit that sealed beside one would hand over a
    release that does not verify, so it refuses up front (and --no-manifest audits it as it is)."""
    release = _release(ds, tmp_path)
    (release / ".DS_Store").write_bytes(b"\x00\x01")
    res = runner.invoke(app, _args(ds, release, tmp_path / "out"))
    assert res.exit_code == 2 and ".DS_Store" in res.output and "Traceback" not in res.output
    assert not (release / "manifest.json").exists() and not (tmp_path / "out").exists()
    ok = runner.invoke(app, _args(ds, release, tmp_path / "out2", "--no-manifest"))
    assert ok.exit_code == 0, ok.output
