"""Field-of-view detection, the pixel embedder's invariances, the array cache and the open_clip embedder."""

from __future__ import annotations

import json

import numpy as np
import pytest
from skimage import data as skdata

from synfundus_guard.audit.pixel_match import QuerySketch, make_sketch
from synfundus_guard.data.fov import Fov, canonical_crop, crop_coverage, detect_fov, resize_image
from synfundus_guard.data.perturb import FAMILIES, affine, random_copy
from synfundus_guard.data.phantom import PhantomPatient, render_visit
from synfundus_guard.embed.cache import ArrayCache
from synfundus_guard.embed.pixel import PixelEmbedder
from synfundus_guard.embed.registry import embedder_from_spec
from synfundus_guard.errors import InputError


@pytest.fixture(scope="module")
def retina() -> np.ndarray:
    return resize_image(skdata.retina().astype(np.float32) / 255.0, 320, 320)


def test_fov_of_real_photo_is_a_centred_disc(retina):
    fov = detect_fov(retina)
    assert fov.is_disc
    assert abs(fov.cx - 160) < 4 and abs(fov.cy - 160) < 4
    assert 150 < fov.radius < 165


def test_fov_follows_a_shifted_and_cropped_frame(retina):
    shifted = affine(retina, dx=12, dy=-9, angle=0, scale=1.0)
    fov = detect_fov(shifted)
    assert fov.is_disc
    assert abs(fov.cx - (detect_fov(retina).cx + 12)) < 2
    assert abs(fov.cy - (detect_fov(retina).cy - 9)) < 2


def test_images_without_a_dark_disc_use_the_whole_frame():
    camera = np.repeat(skdata.camera()[..., None], 3, axis=2).astype(np.float32) / 255.0
    fov = detect_fov(camera)
    assert not fov.is_disc
    assert canonical_crop(camera, fov, 48).shape == (48, 48, 3)


def test_crop_coverage_marks_the_canonical_pixels_that_hold_image_data():
    """A field of view wider than the frame and a padded whole-frame image leave black fill in the canonical crop;
    the coverage mask is exactly where a white image's crop is white, and nothing of the fill."""
    for shape, fov in (((256, 256, 3), Fov(127.5, 127.5, 137.0, True)),  # a field cut by all four edges
                       ((256, 256, 3), Fov(90.0, 150.0, 110.0, True)),  # shifted off two edges
                       ((200, 300, 3), Fov(149.5, 99.5, 150.0, False)),  # padded to a square
                       ((256, 256, 3), Fov(127.5, 127.5, 100.0, True))):  # wholly inside: no fill
        white = canonical_crop(np.ones(shape, np.float32), fov, 96)[..., 0]
        covered = crop_coverage(shape, fov, 96)
        np.testing.assert_array_equal(covered, white > 0.99)
        assert np.all(white[~covered] == 0)
    assert not crop_coverage((256, 256, 3), Fov(127.5, 127.5, 137.0, True), 96).all()


def test_pixel_embedder_is_invariant_to_copy_transforms_and_separates_patients():
    emb = PixelEmbedder(dim=16)
    imgs = [render_visit(PhantomPatient.from_seed(3, p), visit=0, size=128, seed=3)[0] for p in range(24)]
    emb.fit(emb.features(imgs))
    base = emb.project(emb.features(imgs))
    rng = np.random.default_rng(0)
    for fam in FAMILIES:
        copy, _ = random_copy(imgs[5], rng, family=fam)
        views = emb.project(emb.features([copy], views=True))[0]  # (V, D)
        sims = views @ base.T
        assert int(np.argmax(sims.max(axis=0))) == 5, fam


def test_sketch_alignment_scores_copies_high_and_other_patients_low(retina):
    rng = np.random.default_rng(1)
    sketch = make_sketch(retina)
    copy, params = random_copy(retina, rng, family="combined")
    q = QuerySketch(copy)
    flip = bool(params.get("flip", 0))
    best = max(q.score(sketch, orientation=4 if flip else 0, angle=a)[0] for a in (-8.0, -4.0, 0.0, 4.0, 8.0))
    other = render_visit(PhantomPatient.from_seed(1, 1), visit=0, size=320, seed=1)[0]
    worst = max(QuerySketch(other).score(sketch, orientation=o, angle=a)[0] for o in range(8) for a in (-4.0, 0.0, 4.0))
    assert best > 0.85
    assert worst < 0.5


def test_array_cache_roundtrip_and_key_separation(tmp_path):
    cache = ArrayCache(tmp_path / "c.sqlite")
    cache.put_many("fp1", {"a": np.arange(3, dtype=np.float32)})
    assert set(cache.get_many("fp1", ["a", "b"])) == {"a"}
    assert cache.get_many("fp2", ["a"]) == {}
    np.testing.assert_array_equal(cache.get_many("fp1", ["a"])["a"], np.arange(3))
    cache.close()
    assert set(ArrayCache(tmp_path / "c.sqlite").get_many("fp1", ["a"])) == {"a"}


def test_unknown_embedder_specs_are_input_errors():
    with pytest.raises(InputError):
        embedder_from_spec("resnet")
    with pytest.raises(InputError):
        embedder_from_spec("openclip:ViT-B-32")


def test_openclip_embedder_loads_a_local_checkpoint(tmp_path, retina):
    import open_clip
    import torch

    cfg = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
        "text_cfg": {"context_length": 16, "vocab_size": 1000, "width": 32, "heads": 2, "layers": 1},
    }
    cfg_dir = tmp_path / "cfg"
    cfg_dir.mkdir()
    (cfg_dir / "tiny-guard-test.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(cfg_dir)
    torch.manual_seed(0)
    model = open_clip.create_model("tiny-guard-test", pretrained=None)
    ckpt = tmp_path / "tiny.pt"
    torch.save({"state_dict": model.state_dict()}, ckpt)

    emb = embedder_from_spec(f"openclip:tiny-guard-test:{ckpt}")
    feats = emb.features([retina, retina[:, ::-1]], views=True)
    assert feats.shape == (2, 2, 32)
    proj = emb.project(feats)
    np.testing.assert_allclose(np.linalg.norm(proj, axis=-1), 1.0, rtol=1e-5)
    # the mirrored view of the mirrored image is the original
    np.testing.assert_allclose(proj[1, 1], proj[0, 0], atol=1e-5)
    assert emb.feature_fingerprint().startswith("openclip:tiny-guard-test:sha256:")
    with pytest.raises(InputError):
        embedder_from_spec(f"openclip:tiny-guard-test:{tmp_path / 'missing.pt'}")


def test_query_views_equal_features_of_each_transformed_image() -> None:
    """The 40 query views are computed from 5 rotations oriented 8 ways; that must equal embedding each
    transformed image directly (orientation commutes with the feature pipeline)."""
    from synfundus_guard.data.fov import ORIENTATIONS, orient, rotate_scale
    from synfundus_guard.embed.pixel import VIEW_ANGLES, PixelEmbedder

    emb = PixelEmbedder()
    img = render_visit(PhantomPatient.from_seed(1, 0), visit=0, size=128)[0]
    canon, mask = emb._canonical(img)
    fast = np.stack(emb._views(canon, mask))
    direct = np.stack([emb._view_features(rotate_scale(orient(canon, o), a) if a else orient(canon, o), mask)
                       for o in range(ORIENTATIONS) for a in VIEW_ANGLES])
    assert fast.shape == direct.shape == (40, fast.shape[1])
    # equal up to the warp's sub-pixel grid (OpenCV places samples to 1/32 px, so rotating a mirrored image is
    # the mirrored rotation to within that): each view's two unit-norm blocks agree to a cosine of 1 - 1e-5
    np.testing.assert_allclose(fast, direct, atol=5e-3)
    assert np.min(np.sum(fast * direct, axis=1)) / 2 > 1 - 1e-5


def test_fov_morphology_on_opencv_equals_scipy_which_defined_it() -> None:
    from scipy import ndimage as ndi

    from synfundus_guard.data import fov as F

    rng = np.random.default_rng(8)
    for shape in [(9, 9), (64, 97), (200, 150)]:
        for q in (0.3, 0.5, 0.8):
            smooth = ndi.gaussian_filter(rng.random(shape), 1.5)
            mask = smooth > np.quantile(smooth, q)
            assert np.array_equal(F._open(mask, 2), ndi.binary_opening(mask, iterations=2))
            assert np.array_equal(F._erode(mask), ndi.binary_erosion(mask))
            assert np.array_equal(F._fill_holes(mask), ndi.binary_fill_holes(mask))
            labels, n = ndi.label(mask)
            if n:
                sizes = ndi.sum(mask, labels, index=np.arange(1, n + 1))
                assert np.array_equal(F._largest_region(mask), labels == 1 + int(np.argmax(sizes)))
    twins = np.zeros((20, 40), bool)
    twins[5:10, 25:30] = twins[12:17, 5:10] = True  # equal areas: scipy keeps the first in raster order
    assert F._largest_region(twins)[5:10, 25:30].all()
    assert F._largest_region(np.zeros((5, 5), bool)) is None
    img = np.random.default_rng(1).random((30, 20, 3)).astype(np.float32)
    assert np.array_equal(F._luminance(img), img.mean(axis=2))


def test_batched_alignment_equals_one_full_correlation_per_view(retina) -> None:
    """score_many (views batched, SciPy FFTs, only the searched shifts read) against the definition: each view
    warped and tapered alone, numpy's full inverse FFT of its cross-power, the best value within max_shift."""
    from synfundus_guard.audit.pixel_match import COARSE, SKETCH_SIDE, _tapered_spectra, sketch_spectra
    from synfundus_guard.data.fov import orient, rotate_scale

    rng = np.random.default_rng(4)
    others = [render_visit(PhantomPatient.from_seed(2, p), visit=0, size=160, seed=2)[0] for p in range(2)]
    sketches = np.stack([make_sketch(im) for im in (retina, *others)])
    q = QuerySketch(random_copy(retina, rng, family="geometric")[0])
    pairs = [(0, 0, 0.0), (1, 4, -4.0), (2, 0, 8.0), (0, 0, 4.0)]
    for grid in (COARSE, q.grid):
        got = q.score_many(sketch_spectra(sketches), pairs, grid=grid)
        m = grid.max_shift
        for (j, o, a), (score, t) in zip(pairs, got):
            best = (-np.inf, None)
            for da in grid.angles:
                for s in grid.scales:
                    view = orient(q.base, o)
                    view = view if (a + da == 0 and s == 1) else rotate_scale(view, a + da, s)
                    spec = _tapered_spectra(view[None], q.is_disc)[0]
                    corr = np.fft.irfft2(spec * np.conj(np.fft.rfft2(sketches[j].astype(np.float32))),
                                         s=(SKETCH_SIDE, SKETCH_SIDE))
                    for dy in range(-m, m + 1):
                        for dx in range(-m, m + 1):
                            if corr[dy, dx] > best[0]:
                                best = (corr[dy, dx], (a + da, s, dx, dy))
            assert score == pytest.approx(best[0], abs=1e-5)
            assert (t["orientation"], t["angle"], t["scale"], t["dx"], t["dy"]) == pytest.approx((o, *best[1]))
            assert score == pytest.approx(q.score(sketches[j], orientation=o, angle=a, grid=grid)[0], abs=1e-6)


def test_tapered_spectra_are_the_zero_mean_unit_norm_tapered_maps(retina) -> None:
    """The normalisation (computed in pixel space) against its definition: each tapered map with its mean removed
    and scaled to unit norm, then transformed (numpy's FFT, double precision)."""
    from synfundus_guard.audit.pixel_match import _FULL_TAPER, _TAPER, SKETCH_SIDE, _tapered_spectra

    rng = np.random.default_rng(7)
    q = QuerySketch(retina, kind="vessel")
    maps = np.stack([q.base, rng.standard_normal((SKETCH_SIDE,) * 2).astype(np.float32) + 3.0,
                     np.full((SKETCH_SIDE,) * 2, 0.5, np.float32), np.zeros((SKETCH_SIDE,) * 2, np.float32)])
    for is_disc, taper in ((True, _TAPER), (False, _FULL_TAPER)):
        got = _tapered_spectra(maps, is_disc)
        assert got.dtype == np.complex64
        for m, spec in zip(maps, got):
            x = m.astype(np.float64) * taper
            x -= x.mean()
            norm = np.linalg.norm(x)
            want = np.fft.rfft2(x / norm) if norm > 1e-6 else np.zeros_like(spec)
            assert np.abs(spec - want).max() <= 1e-5 * max(np.abs(want).max(), 1.0)


def test_orient_contiguous_is_orient() -> None:
    """OpenCV's flip and rotate give orient's pixels, contiguous, for every orientation (square or not)."""
    from synfundus_guard.data.fov import orient, orient_contiguous

    rng = np.random.default_rng(9)
    for shape in [(96, 96), (96, 80), (5, 7)]:
        img = rng.standard_normal(shape).astype(np.float32)
        for o in range(8):
            got = orient_contiguous(img, o)
            assert got.flags.c_contiguous and np.array_equal(got, orient(img, o)), (shape, o)
