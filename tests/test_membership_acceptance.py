"""Acceptance of membership inference on three trained tiny DDPMs (slow: about 15 minutes on 2 CPU cores).

Runs the scenarios of ``bench/bench_membership.py``: a memorizing model must be caught by the best white-box
attack (AUC >= 0.9); on a model trained briefly on many patients, and on a DP-trained one (epsilon <= 10), the
AUC confidence interval of every attack must cover 0.5. Run with ``--runslow``; ``GUARD_BENCH_WORK=DIR``
reuses the models the benchmark trained there.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]
BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_membership.py"



@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_membership", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return Path(os.environ.get("GUARD_BENCH_WORK") or tmp_path_factory.mktemp("bench-membership"))


def scenario(bench, name: str):
    return next(s for s in bench.SCENARIOS if s.name == name)


def test_memorizing_model_is_caught_by_a_white_box_attack(bench, work):
    result = bench.run_scenario(work, scenario(bench, "memorizing"), n_release=200, n_boot=200)
    image = result["sections"][0]["attacks"]
    best = max(m["auc"]["point"] for m in image.values() if m["family"] == "white-box")
    assert best >= 0.9, {n: m["auc"] for n, m in image.items()}


@pytest.mark.parametrize("name", ["many-patients", "dp"])
def test_private_enough_models_are_not_flagged(bench, work, name):
    result = bench.run_scenario(work, scenario(bench, name), n_release=200, n_boot=200)
    if name == "dp":
        assert result["epsilon"] <= 10
    for section in result["sections"]:
        for attack, m in section["attacks"].items():
            assert m["auc"]["lower"] <= 0.5 <= m["auc"]["upper"], (section["level"], attack, m["auc"])
