"""The CSV report format: one row per image, every score a column, spreadsheet formulas defused."""

from __future__ import annotations

import csv
import io

from synfundus_guard.audit.base import Finding
from synfundus_guard.formats import OutputFormat, ReportView, get_format
from synfundus_guard.policies.evaluate import evaluate_release, image_result
from synfundus_guard.policies.schema import load_policy
from synfundus_guard.results import Report

PUBLIC = load_policy("public")


def test_csv_rows_scores_and_formula_guard():
    names = ["ok.png", "=HYPERLINK(\"http://evil\").png", "face.png"]
    images = [image_result(n, [Finding("faces", n == "face.png", ("face detected",) if n == "face.png" else (),
                                       {"faces.dlib": 1.5 if n == "face.png" else -10.0})], PUBLIC) for n in names]
    report = Report(policy=PUBLIC.fingerprint(), embedder={}, images=images, verdict="pending")
    view = ReportView(report, evaluate_release(report, PUBLIC))
    assert OutputFormat("csv") is OutputFormat.CSV
    text = get_format(OutputFormat.CSV).render(view).decode("utf-8")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [r["file_name"] for r in rows] == ["ok.png", "'=HYPERLINK(\"http://evil\").png", "face.png"]
    face = rows[2]
    assert face["verdict"] == "fail" and face["flagged_checks"] == "faces" and face["reasons"] == "faces: face detected"
    assert float(face["faces.dlib"]) == 1.5 and float(rows[0]["faces.dlib"]) == -10.0
