"""FAISS index kinds: exact by default, ``auto`` exact up to EXACT_MAX images and IVF-PQ above; approximate indexes
find what exact search finds."""

from __future__ import annotations

import json

import faiss
import numpy as np
import pytest

from synfundus_guard.data.folder import scan_folder, write_image_folder
from synfundus_guard.data.phantom import PhantomPatient, render_visit
from synfundus_guard.embed.cache import ArrayCache
from synfundus_guard.embed.registry import DEFAULT_SPEC, embedder_from_spec
from synfundus_guard.errors import InputError
from synfundus_guard.index.store import (EXACT_MAX, IVF_NPROBE, IVFPQ_K_FACTOR, IVFPQ_MIN, build_index, index_kind,
                                         ivf_lists, ivf_nprobe, make_faiss, resolve_kind)


def test_index_kinds_and_ivf_lists():
    kinds = ("auto", "flat", "ivf", "hnsw", "ivfpq")
    assert [index_kind(k) for k in kinds] == list(kinds)
    assert ivf_lists(1_000_000) == 4000 and ivf_lists(10) == 10 and ivf_lists(1) == 1
    assert ivf_lists(1_000_000, "ivfpq") == 1000 and ivf_nprobe("ivfpq", 1000) == 160
    assert ivf_nprobe("ivf", 4000) == IVF_NPROBE and ivf_nprobe("ivf", 10) == 10
    with pytest.raises(InputError, match="unknown index kind 'lsh'"):
        index_kind("lsh")


def test_auto_searches_exactly_up_to_exact_max_and_with_ivfpq_above():
    assert resolve_kind("auto", EXACT_MAX) == "flat" and resolve_kind("auto", EXACT_MAX + 1) == "ivfpq"
    assert resolve_kind("flat", 10 * EXACT_MAX) == "flat"  # an explicit kind is kept
    from synfundus_guard.audit import vessel_search  # the vessel search switches lower (its exact search costs more)
    assert vessel_search.EXACT_MAX < EXACT_MAX
    assert resolve_kind("auto", vessel_search.EXACT_MAX, vessel_search.EXACT_MAX) == "flat"
    assert resolve_kind("auto", vessel_search.EXACT_MAX + 1, vessel_search.EXACT_MAX) == "ivfpq"
    big = make_faiss(128, "auto", 1_000_000)
    assert isinstance(big, faiss.IndexRefineFlat) and big.k_factor == IVFPQ_K_FACTOR
    ivf = faiss.extract_index_ivf(big)
    assert ivf.nlist == 1000 and ivf.nprobe == 160
    assert isinstance(make_faiss(128, "auto", EXACT_MAX), faiss.IndexFlatIP)
    with pytest.raises(InputError, match=f"at least {IVFPQ_MIN} training images"):
        resolve_kind("ivfpq", IVFPQ_MIN - 1)


@pytest.fixture(scope="module")
def train(tmp_path_factory):
    root = tmp_path_factory.mktemp("kind")
    write_image_folder(root / "train", [(f"p{p:03d}.png", render_visit(PhantomPatient.from_seed(8, p), visit=0,
                                                                         size=64, seed=8)[0], f"I{p}", f"P{p}")
                                        for p in range(80)])
    return root


@pytest.mark.parametrize("kind", ["ivf", "ivfpq"])
def test_ivf_index_finds_the_exact_neighbours_and_keeps_its_search_settings_after_loading(train, tmp_path, kind):
    cache = ArrayCache(tmp_path / "features.sqlite")
    try:
        built = {k: build_index(train_dir=train / "train", out_dir=tmp_path / k, cache=cache, kind=k,
                                embedder=embedder_from_spec(DEFAULT_SPEC)) for k in ("auto", kind)}
    finally:
        cache.close()
    assert json.loads((tmp_path / "auto" / "meta.json").read_text())["kind"] == "flat"  # 80 images: exact
    assert json.loads((tmp_path / kind / "meta.json").read_text())["kind"] == kind
    ivf = faiss.extract_index_ivf(built[kind].faiss_index)  # as loaded from its folder
    assert ivf.nlist == ivf_lists(80, kind) and ivf.nprobe == ivf_nprobe(kind, ivf.nlist)
    if kind == "ivfpq":
        assert built[kind].faiss_index.k_factor == IVFPQ_K_FACTOR
    queries = np.asarray(built["auto"].faiss_index.reconstruct_n(0, 80))
    (exact_sims, exact), (approx_sims, approx) = (built[k].search(queries, 5) for k in ("auto", kind))
    assert (approx[:, 0] == np.arange(80)).all()  # every training image finds itself
    overlap = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(exact, approx)])
    assert overlap >= 0.9, overlap
    both = exact == approx  # where the same neighbour is returned, ivfpq's re-ranking gives its exact similarity
    np.testing.assert_allclose(approx_sims[both], exact_sims[both], atol=1e-5)


def test_index_built_in_worker_processes_equals_one_built_here(train, tmp_path):
    """Templates computed by two spawned workers, some taken from the cache, are the ones one process computes."""
    def emb():
        return embedder_from_spec(DEFAULT_SPEC)  # fresh: a build fits the embedder's projection in place

    here = ArrayCache(tmp_path / "here.sqlite")
    par = ArrayCache(tmp_path / "par.sqlite")
    try:
        one = build_index(train_dir=train / "train", out_dir=tmp_path / "one", cache=here, embedder=emb(), workers=1)
        first = scan_folder(train / "train")[:20]
        build_index(records=first, out_dir=tmp_path / "warm", cache=par, embedder=emb(), workers=1)  # warms 20
        two = build_index(train_dir=train / "train", out_dir=tmp_path / "two", cache=par, embedder=emb(), workers=2,
                          batch_size=8)
    finally:
        here.close()
        par.close()
    assert one.size == two.size == 80
    np.testing.assert_array_equal(one.sketches, two.sketches)
    np.testing.assert_array_equal(one.vessels, two.vessels)
    q = one.faiss_index.reconstruct_n(0, one.size)
    np.testing.assert_allclose(q, two.faiss_index.reconstruct_n(0, two.size), atol=1e-6)


def test_calibration_in_worker_processes_equals_one_made_here(train, tmp_path):
    """Holdout scores computed by two spawned workers (each loading the index from its folder) are the ones one
    process computes, in the same order."""
    import shutil

    from synfundus_guard.index.calibrate import calibrate

    write_image_folder(tmp_path / "holdout", [(f"h{p:03d}.png", render_visit(PhantomPatient.from_seed(9, p), visit=0,
                                                                             size=64, seed=9)[0], f"H{p}", f"Q{p}")
                                              for p in range(24)])
    holdout = scan_folder(tmp_path / "holdout")
    cache = ArrayCache(tmp_path / "features.sqlite")
    try:
        index = build_index(train_dir=train / "train", out_dir=tmp_path / "ix", cache=cache,
                            embedder=embedder_from_spec(DEFAULT_SPEC))
    finally:
        cache.close()
    here = calibrate(index, holdout, k=5, batch_size=8, workers=1)
    shutil.rmtree(tmp_path / "ix" / "calibration")  # not from the cache: computed again, in workers
    there = calibrate(index, holdout, k=5, batch_size=8, workers=2)
    for name in ("embedding_sims", "pixel_nccs", "vessel_scores", "vessel_margins"):
        np.testing.assert_allclose(getattr(here, name), getattr(there, name), atol=1e-6)
        assert len(getattr(here, name)) == 24
