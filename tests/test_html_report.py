"""The HTML report in a real headless browser: an audit with planted copies, revisits, a stamp and a face.

Chromium comes from the system packages (``apt-get install chromium``; ``.ci/run`` installs it) and is driven
through Playwright's Python client, which ships its own driver and never downloads a browser. The test checks
what a reader would see: the verdict, every inline image decoded, the plots, no console error, no request
leaving the page; and that the public page names no training image or patient while the private page does.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from skimage import data as skdata

from synfundus_guard.audit.identity.overlays import draw_text, paste_face
from synfundus_guard.cli.main import run
from synfundus_guard.data.images import encode_png
from synfundus_guard.data.phantom import PhantomPatient, render_visit
from synfundus_guard.fsutil import atomic_write_bytes
from tests.guard_data import SEED, SIZE, make_dataset

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
POLICY = Path(__file__).parent / "policies" / "public_without_membership.yaml"
REVISITS = ((2, 2), (10, 2))
"""(train patient, unseen visit): other visits of training patients, found by the vessel check, not the copy check."""
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
               "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("html")
    ds = make_dataset(root, patients=30, novel=6, copies=2)
    release = ds["leaky"]
    base = render_visit(PhantomPatient.from_seed(SEED + 500, 40), visit=0, size=SIZE, seed=SEED + 500)[0]
    for p, v in REVISITS:
        img = render_visit(PhantomPatient.from_seed(SEED, p), visit=v, size=SIZE, seed=SEED)[0]
        atomic_write_bytes(release / f"synthetic_revisit_{p}.png", encode_png(img))
    stamp, _ = draw_text(base, "PAT 12345 2024-03-01", font="pil-default", size=12, position="bottom-left",
                         light=True, colour=(255, 255, 255))
    atomic_write_bytes(release / "synthetic_stamp.png", encode_png(stamp))
    face = paste_face(base, skdata.lfw_subset()[60], side=70, top=20, left=30)
    atomic_write_bytes(release / "synthetic_face.png", encode_png(face))
    out = root / "report"
    code = run(["audit", "--release", str(release), "--train", str(ds["train"]), "--holdout", str(ds["holdout"]),
                "--policy", str(POLICY), "--out", str(out), "--format", "markdown", "--format", "sarif"])
    assert code == 1
    return {**ds, "out": out, "report": json.loads((out / "report.json").read_text())}


def _training_names(ds: dict) -> set[str]:
    names = {p.name for p in ds["train"].iterdir()}
    names |= set(re.findall(r"(?:IMG|PAT)-\d{3}(?:-\d)?", (ds["train"] / "labels.csv").read_text()))
    return {n for n in names if n != "labels.csv"}


def test_every_planted_leak_is_flagged_and_both_pages_are_written(audited):
    flagged = {img["file_name"]: img["checks"] for img in audited["report"]["images"] if img["verdict"] == "fail"}
    assert flagged["synthetic_face.png"]["faces"] == "flag" and flagged["synthetic_stamp.png"]["text"] == "flag"
    assert all(flagged[f"synthetic_revisit_{p}.png"]["vessels"] == "flag" for p, _ in REVISITS)
    copies = [n for n in flagged if flagged[n]["memorization"] == "flag"]
    assert len(copies) >= audited["n_copies"]
    out = audited["out"]
    assert (out / "report.html").stat().st_mode & 0o077 != 0o000  # public: the usual mode
    assert (out / "private" / "report.html").stat().st_mode & 0o777 == 0o600
    assert {p.name for p in out.iterdir()} >= {"report.json", "report.html", "report.md", "report.sarif", "private"}


def test_public_files_name_no_training_image_or_patient(audited):
    names = _training_names(audited)
    assert len(names) > 30
    for public in ("report.html", "report.md", "report.sarif", "report.json"):
        text = (audited["out"] / public).read_text()
        leaked = sorted(n for n in names if n in text)
        assert not leaked, f"{public} names {leaked[:3]}"
    private = (audited["out"] / "private" / "report.html").read_text()
    assert any(n in private for n in names), "the private page shows which training image each copy matches"


def _open(page, path: Path) -> dict:
    problems: list[str] = []
    requests: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("request", lambda r: requests.append(r.url))
    page.goto(path.as_uri())
    page.wait_for_load_state("load")
    images = page.evaluate("Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.alt])")
    return {"problems": problems, "external": [u for u in requests if not u.startswith(("data:", "file:"))],
            "images": images, "text": page.inner_text("body"), "svgs": page.locator("svg").count()}


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium); .ci/run does")
def test_pages_render_in_a_real_browser(audited, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            public = _open(page, audited["out"] / "report.html")
            page.screenshot(path=str(tmp_path / "public.png"), full_page=True)
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            private = _open(page, audited["out"] / "private" / "report.html")
        finally:
            browser.close()
    n_failed = sum(img["verdict"] == "fail" for img in audited["report"]["images"])
    for seen in (public, private):
        assert seen["problems"] == [] and seen["external"] == []
        assert seen["images"] and all(done and width > 0 for done, width, _ in seen["images"])
    assert "Release FAILS policy 'public-without-membership'" in public["text"]
    assert f"{n_failed} of {len(audited['report']['images'])} images withheld" in public["text"]
    assert sum(alt == "pixelated: withheld image" for *_, alt in public["images"]) == n_failed
    assert public["svgs"] >= 5  # a histogram per score (memorization x2, vessels, text, faces x2)
    assert "holdout photos of new patients" in public["text"]  # the plain-word reasons
    assert "PRIVATE" in private["text"] and "difference" in private["text"]
    assert "vessels vs train_p002_v" in private["text"]  # the revisit, beside a training visit of its patient
    assert "faces: dlib red, Haar blue" in private["text"] and "burned-in text rows" in private["text"]
    assert (tmp_path / "public.png").stat().st_size > 10_000
