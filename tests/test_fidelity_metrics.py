"""Fidelity metrics against their reference implementations (torchmetrics, clean-fid, prdc) on identical
features, and the behaviour the references do not cover: authenticity, directions, bootstrap, warnings."""

from __future__ import annotations

from typing import Iterator

import faiss
import numpy as np
import pytest
import torch
from cleanfid.fid import frechet_distance as cleanfid_fd
from prdc import compute_prdc
from threadpoolctl import threadpool_limits
from torchmetrics.image.fid import FrechetInceptionDistance, _compute_fid
from torchmetrics.image.kid import poly_mmd as tm_poly_mmd

from synfundus_guard.errors import InputError
from synfundus_guard.fidelity.metrics import (METRIC_DIRECTIONS, authenticity, fidelity_metrics, frechet_distance,
                                              kernel_distance, poly_mmd, prdc)

REL = 1e-4


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Tiny matrices: on the shared 2-core machine, spinning BLAS/OpenMP threads only slow them down."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    with threadpool_limits(1):
        yield
    faiss.omp_set_num_threads(before)


def feature_sets() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    real = rng.normal(size=(300, 16)).astype(np.float32)
    fake = rng.normal(size=(400, 16)).astype(np.float32)
    shifted = (rng.normal(size=(400, 16)) * rng.uniform(0.5, 2.0, 16) + 0.7).astype(np.float32)
    # Inception-like: non-negative, far from the origin, where float32 |x|^2 - 2xy + |y|^2 loses digits
    relu = np.maximum(rng.normal(3.0, 2.0, size=(350, 16)), 0).astype(np.float32)
    return {"same": (real, fake), "shifted": (real, shifted), "relu": (relu, np.abs(fake) * 2 + 1)}


class Identity(torch.nn.Module):
    num_features = 16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


@pytest.mark.parametrize("case", ["same", "shifted", "relu"])
def test_fd_matches_torchmetrics_and_cleanfid(case: str) -> None:
    real, fake = feature_sets()[case]
    r64, f64 = real.astype(np.float64), fake.astype(np.float64)
    moments = (r64.mean(0), np.cov(r64, rowvar=False), f64.mean(0), np.cov(f64, rowvar=False))
    ours = frechet_distance(real, fake)
    assert ours == pytest.approx(float(cleanfid_fd(*moments)), rel=REL)
    assert ours == pytest.approx(_compute_fid(*(torch.from_numpy(m) for m in moments)).item(), rel=REL)
    metric = FrechetInceptionDistance(feature=Identity())  # the public metric, fed the features themselves
    metric.update(torch.from_numpy(r64), real=True)
    metric.update(torch.from_numpy(f64), real=False)
    assert ours == pytest.approx(metric.compute().item(), rel=REL)


def test_fd_with_fewer_samples_than_dimensions() -> None:
    """Rank-deficient covariances: the eigenvalue route needs no epsilon retry (sqrtm's may be singular)."""
    rng = np.random.default_rng(7)
    real, fake = rng.normal(size=(10, 16)), rng.normal(size=(12, 16)) + 0.5
    moments = (real.mean(0), np.cov(real, rowvar=False), fake.mean(0), np.cov(fake, rowvar=False))
    ours = frechet_distance(real, fake)
    assert np.isfinite(ours) and ours > 0
    assert ours == pytest.approx(_compute_fid(*(torch.from_numpy(m) for m in moments)).item(), rel=REL)


@pytest.mark.parametrize("case", ["same", "shifted", "relu"])
def test_poly_mmd_matches_torchmetrics(case: str) -> None:
    real, fake = feature_sets()[case]
    fake = fake[: len(real)]  # torchmetrics' estimator assumes equal subset sizes
    ref = tm_poly_mmd(torch.from_numpy(real.astype(np.float64)), torch.from_numpy(fake.astype(np.float64)))
    assert poly_mmd(real, fake) == pytest.approx(ref.item(), rel=REL)


def test_kernel_distance_aggregates_subsets_as_torchmetrics() -> None:
    real, fake = feature_sets()["shifted"]
    rng, scores = np.random.default_rng(3), []
    for _ in range(5):  # the same seeded draws, scored by torchmetrics
        r, f = real[rng.choice(300, 100, replace=False)], fake[rng.choice(400, 100, replace=False)]
        scores.append(tm_poly_mmd(torch.from_numpy(r.astype(np.float64)), torch.from_numpy(f.astype(np.float64))))
    scores_t = torch.stack(scores)
    mean, std = kernel_distance(real, fake, subsets=5, subset_size=100, seed=3)
    assert mean == pytest.approx(scores_t.mean().item(), rel=REL)
    assert std == pytest.approx(scores_t.std(unbiased=False).item(), rel=REL)
    # subset_size is capped at the smaller set instead of failing
    assert kernel_distance(real, fake, subsets=2, subset_size=1000) == kernel_distance(real, fake, subsets=2,
                                                                                       subset_size=300)


def prdc_cases() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    cases = feature_sets()
    real, fake = cases["same"]
    rng = np.random.default_rng(1)
    cases["copies"] = (real, np.vstack([real[:150], fake[:150]]))  # exact ties between sets
    # mode collapse: every fake inside very many real balls, past the first 32-candidate search
    # (in 64-D almost every real point's k-NN ball reaches the centre)
    cases["collapsed"] = (rng.normal(size=(300, 64)).astype(np.float32),
                          (rng.normal(size=(200, 64)) * 0.05).astype(np.float32))
    return cases


@pytest.mark.parametrize("case", ["same", "shifted", "relu", "copies", "collapsed"])
@pytest.mark.parametrize("k", [1, 5])
def test_prdc_matches_package(case: str, k: int, capsys: pytest.CaptureFixture[str]) -> None:
    real, fake = prdc_cases()[case]
    ref = compute_prdc(real, fake, nearest_k=k)
    ours = prdc(real, fake, k=k)
    assert ours.keys() == ref.keys()
    for name in ref:
        assert ours[name] == pytest.approx(float(ref[name]), rel=REL, abs=1e-12), name
    if case == "collapsed":
        assert ours["density"] * k > 32  # more balls than the first search returns: it was widened


def test_authenticity_flags_copies_and_passes_fresh_samples() -> None:
    rng = np.random.default_rng(2)
    train = rng.normal(size=(500, 8))
    assert authenticity(train, train[:200]) == 0.0
    assert authenticity(train, train[:200] + rng.normal(size=(200, 8)) * 1e-3) == 0.0  # near-copies
    # fresh draws: unauthentic only where the sample and its nearest training point are mutual neighbours
    assert authenticity(train, rng.normal(size=(500, 8))) > 0.5
    # a training image present twice: its copy has distance 0 = the gap between the twins; still a copy
    twins = np.vstack([train, train[:1]])
    assert authenticity(twins, train[:1]) == 0.0


def test_directions() -> None:
    rng = np.random.default_rng(4)
    centres = rng.normal(size=(10, 8)) * 6
    real = centres[rng.integers(0, 10, 600)] + rng.normal(size=(600, 8))
    diverse = centres[rng.integers(0, 10, 600)] + rng.normal(size=(600, 8))
    collapsed = centres[rng.integers(0, 2, 600)] + rng.normal(size=(600, 8))
    good, bad = prdc(real, diverse), prdc(real, collapsed)
    assert bad["coverage"] < good["coverage"] - 0.3 and bad["recall"] < good["recall"] - 0.3
    assert frechet_distance(real, diverse + 1.0) > frechet_distance(real, diverse)
    assert not METRIC_DIRECTIONS["fd"] and not METRIC_DIRECTIONS["kd"]
    assert all(METRIC_DIRECTIONS[m] for m in ("precision", "recall", "density", "coverage", "authenticity"))


def test_fidelity_metrics_intervals_and_warnings() -> None:
    real, fake = feature_sets()["same"]
    out = fidelity_metrics(real, fake, train=real, n_boot=20, seed=5)
    assert set(out) == set(METRIC_DIRECTIONS) | {"n_real", "n_fake", "dim", "warnings", "higher_is_better"}
    assert out["higher_is_better"] == METRIC_DIRECTIONS
    assert (out["n_real"], out["n_fake"], out["dim"]) == (300, 400, 16)
    for name in METRIC_DIRECTIONS:
        assert out[name]["lower"] <= out[name]["upper"], name
    for name in ("precision", "recall", "density", "coverage", "authenticity"):
        assert out[name]["lower"] <= out[name]["point"] <= out[name]["upper"], name
    assert out["fd"]["point"] == pytest.approx(frechet_distance(real, fake))
    assert out["kd"]["point"] == pytest.approx(kernel_distance(real, fake, seed=5)[0])
    assert out["precision"]["point"] == prdc(real, fake)["precision"]
    text = " ".join(out["warnings"])
    assert "FD from only 300 samples" in text and "KD subsets hold 300 samples" in text and "differ in size" in text
    without_train = fidelity_metrics(real, fake, n_boot=20, seed=5)
    assert without_train["higher_is_better"] == {k: v for k, v in METRIC_DIRECTIONS.items() if k != "authenticity"}
    assert {k: v for k, v in without_train.items() if k != "higher_is_better"} == {
        k: v for k, v in out.items() if k not in ("authenticity", "higher_is_better")}


def test_fidelity_metrics_no_warnings_at_adequate_size() -> None:
    rng = np.random.default_rng(6)
    real, fake = rng.normal(size=(1000, 4)), rng.normal(size=(1000, 4))
    out = fidelity_metrics(real, fake, n_boot=0)
    assert out["warnings"] == [] and out["recall"]["lower"] is None and "authenticity" not in out


@pytest.mark.parametrize("real, fake, match", [
    (np.zeros(10), np.zeros((10, 2)), "N x D"),
    (np.zeros((10, 2)), np.zeros((10, 3)), "differ in dimension"),
    (np.full((10, 2), np.nan), np.zeros((10, 2)), "NaN"),
    (np.zeros((3, 2)), np.zeros((10, 2)), "at least 6 samples"),
])
def test_bad_input_is_an_input_error(real: np.ndarray, fake: np.ndarray, match: str) -> None:
    with pytest.raises(InputError, match=match):
        prdc(real, fake, k=5)
