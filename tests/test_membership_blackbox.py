"""Black-box membership attacks on releases: planted leaks are found, clean releases are not flagged."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import multivariate_normal

from synfundus_guard.audit.membership.blackbox import (MIN_RELEASE, _log_kde, density_ratio_scores,
                                                       nearest_synthetic_scores, score_release)
from synfundus_guard.audit.membership.run import membership_report, score_membership
from synfundus_guard.data.folder import scan_folder
from synfundus_guard.data.images import encode_png, load_image
from synfundus_guard.data.phantom import generate_phantom
from synfundus_guard.data.split import write_split
from synfundus_guard.embed.cache import ArrayCache
from synfundus_guard.embed.pixel import PixelEmbedder
from synfundus_guard.errors import InputError
from synfundus_guard.fsutil import atomic_write_bytes


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """Members (train), non-members (holdout) and third-party patients, 12 patients x 2 visits each."""
    root = tmp_path_factory.mktemp("bb")
    generate_phantom(root / "all", patients=36, visits=2, size=64, seed=5)
    first = write_split(root / "all", root / "s1", holdout_fraction=1 / 3, seed=0)
    second = write_split(first.train_dir, root / "s2", holdout_fraction=0.5, seed=0)
    return {"train": second.train_dir, "holdout": first.holdout_dir, "third": second.holdout_dir, "root": root}


def write_release(out: Path, images: list[np.ndarray]) -> Path:
    for i, img in enumerate(images):
        atomic_write_bytes(out / f"s{i:04d}.png", encode_png(img))
    return out


def test_release_with_copies_of_members_is_caught(folders):
    rng = np.random.default_rng(0)
    copies = [np.clip(load_image(r.path) + rng.normal(0, 0.01, (64, 64, 3)), 0, 1).astype(np.float32)
              for r in scan_folder(folders["train"])]  # every member image, slightly noisy
    others = [load_image(r.path) for r in scan_folder(folders["third"])]
    release = write_release(folders["root"] / "leaky", copies + others)
    scores = score_membership(train_dir=folders["train"], holdout_dir=folders["holdout"], release_dir=release)
    image, patient = membership_report(scores, n_boot=50)
    assert set(image["attacks"]) == {"nearest-synthetic", "density-ratio"}
    near = image["attacks"]["nearest-synthetic"]
    assert near["family"] == "black-box" and near["direction"] == "published"
    assert near["auc"]["point"] >= 0.9 and near["auc"]["lower"] > 0.5
    assert patient["attacks"]["nearest-synthetic"]["auc"]["point"] >= 0.9
    assert image["attacks"]["density-ratio"]["auc"]["point"] > 0.5


def test_release_of_other_patients_is_not_flagged(folders):
    release = folders["root"] / "clean"
    shutil.copytree(folders["third"], release)
    (release / "labels.csv").unlink()
    scores = score_membership(train_dir=folders["train"], holdout_dir=folders["holdout"], release_dir=release)
    for section in membership_report(scores, n_boot=50):
        for name, m in section["attacks"].items():
            assert m["auc"]["lower"] <= 0.5 <= m["auc"]["upper"], (section["level"], name, m["auc"])


def test_too_small_a_release_is_refused(folders, tmp_path):
    imgs = [load_image(r.path) for r in scan_folder(folders["third"])[: MIN_RELEASE - 1]]
    with pytest.raises(InputError, match=f"at least {MIN_RELEASE} images; .* has {MIN_RELEASE - 1}"):
        score_release(release_dir=write_release(tmp_path / "r", imgs), queries=scan_folder(folders["train"]),
                      reference=scan_folder(folders["holdout"]), embedder=PixelEmbedder())


def test_features_come_from_the_cache_on_a_second_run(folders):
    class CountingEmbedder(PixelEmbedder):
        calls = 0

        def features(self, images, *, views=False):
            CountingEmbedder.calls += len(images)
            return super().features(images, views=views)

    cache = ArrayCache(None)
    kw = dict(release_dir=folders["third"], queries=scan_folder(folders["train"]),
              reference=scan_folder(folders["holdout"]), embedder=CountingEmbedder(), cache=cache)
    first = score_release(**kw)
    n = CountingEmbedder.calls
    assert n == 24 + 24 + 24  # release, queries, reference: each image embedded once
    second = score_release(**kw)
    assert CountingEmbedder.calls == n
    for name in first.scores:
        np.testing.assert_array_equal(first.scores[name], second.scores[name])


def test_kde_matches_a_direct_gaussian_mixture():
    rng = np.random.default_rng(1)
    points, queries, h = rng.normal(size=(50, 3)), rng.normal(size=(7, 3)), 0.6
    direct = np.log(np.mean([multivariate_normal(p, h**2 * np.eye(3)).pdf(queries) for p in points], axis=0))
    np.testing.assert_allclose(_log_kde(queries, points, h), direct, rtol=1e-10)


def test_density_ratio_never_scores_a_patient_against_their_own_images():
    rng = np.random.default_rng(2)
    synth, ref = rng.normal(size=(200, 5)), rng.normal(size=(40, 5))
    ref_pat = [f"r{i // 2}" for i in range(40)]
    queries, query_pat = np.vstack([ref[:2], rng.normal(size=(6, 5))]), ["r0", "r0"] + [f"m{i}" for i in range(6)]
    base = density_ratio_scores(synth, ref, ref_pat, queries, query_pat, dim=5)
    moved = ref.copy()
    moved[:2] += 100.0  # patient r0's own reference images: they must not enter r0's scores
    again = density_ratio_scores(synth, moved, ref_pat, queries, query_pat, dim=5)
    np.testing.assert_allclose(again[:2], base[:2])
    assert not np.allclose(again[2:], base[2:])  # members scored against r0's half do see the change


def test_nearest_synthetic_prefers_exact_copies():
    rng = np.random.default_rng(3)
    synth = rng.normal(size=(100, 20))
    queries = np.vstack([synth[:5] + rng.normal(0, 0.01, (5, 20)), rng.normal(size=(5, 20))])
    sims = nearest_synthetic_scores(synth, queries, dim=10)
    assert sims[:5].min() > sims[5:].max() and sims[:5].min() > 0.99
