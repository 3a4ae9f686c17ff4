"""Per-image memo (data/memo.py): keyed by content, never by identity; cached arrays are read-only."""

from __future__ import annotations

import numpy as np
import pytest
from skimage import data as skdata

from synfundus_guard.audit.pixel_match import _equalised
from synfundus_guard.data.fov import detect_fov
from synfundus_guard.data.memo import content_key, per_image, pinned


def test_content_key_follows_pixels_dtype_and_shape_not_the_array() -> None:
    a = np.random.default_rng(0).random((8, 6, 3)).astype(np.float32)
    assert content_key(a) == content_key(a.copy()) == content_key(np.asfortranarray(a))
    b = a.copy()
    b[3, 2, 1] += 1e-6
    assert content_key(b) != content_key(a)
    assert content_key(a.astype(np.float64)) != content_key(a)
    assert content_key(a.reshape(6, 8, 3)) != content_key(a)
    assert content_key(np.zeros((0, 3), np.float32)) != content_key(np.zeros((3, 0), np.float32))


def test_per_image_computes_once_per_content_and_evicts_the_oldest() -> None:
    calls = []

    @per_image(maxsize=2)
    def f(img: np.ndarray) -> np.ndarray:
        calls.append(1)
        return img * 2

    x, y, z = (np.full((4, 4), v, np.float32) for v in (1, 2, 3))
    first = f(x)
    assert f(x.copy()) is first and len(calls) == 1
    with pytest.raises(ValueError):
        first[0, 0] = 5  # read-only: a caller cannot change what the next one gets
    x[0, 0] = 9  # changed in place: another key, computed again
    assert f(x)[0, 0] == 18 and len(calls) == 2
    f(y), f(z)  # evicts x
    f(x)
    assert len(calls) == 5
    f.cache_clear()
    f(z)
    assert len(calls) == 6


def test_pinned_images_are_hashed_once_read_only_and_released_after(monkeypatch) -> None:
    import hashlib

    from synfundus_guard.data import memo

    rng = np.random.default_rng(1)
    a, b = (rng.random((16, 16, 3)).astype(np.float32) for _ in range(2))
    b.setflags(write=False)  # a read-only image stays read-only after the block
    keys = {id(x): content_key(x) for x in (a, b)}
    hashed = []
    real = hashlib.sha256
    monkeypatch.setattr(memo.hashlib, "sha256", lambda data: hashed.append(1) or real(data))
    with pinned([a, b, a[2:]]):  # a view does not own its pixels: not pinned
        assert len(hashed) == 2
        for _ in range(3):
            assert content_key(a) == keys[id(a)] and content_key(b) == keys[id(b)]
        assert len(hashed) == 2  # found by identity
        with pytest.raises(ValueError):
            a[0, 0, 0] = 5.0  # read-only within the block: its key cannot go stale
        assert content_key(a.copy()) == keys[id(a)]  # an equal copy is hashed, and has the same key
        content_key(a[2:])
        assert len(hashed) == 4
    assert a.flags.writeable and not b.flags.writeable
    a[0, 0, 0] += 1.0  # changed after the block: another key again
    assert content_key(a) != keys[id(a)] and len(hashed) == 5


def test_cached_fov_and_equalisation_equal_the_computation() -> None:
    img = skdata.retina()[::4, ::4].astype(np.float32) / 255
    detect_fov.cache_clear()
    assert detect_fov(img) == detect_fov.__wrapped__(img) == detect_fov(img.copy())
    eq, disc, data = _equalised(img)
    ref, ref_disc, ref_data = _equalised.__wrapped__(img)
    assert disc == ref_disc and np.array_equal(eq, ref) and not eq.flags.writeable
    assert np.array_equal(data, ref_data) and not data.flags.writeable


def test_refine_pairs_adds_the_best_view_of_the_first_retrieved_candidates():
    """The pairs to refine: the best candidate-views of the coarse pass, then (each once) the best view of the
    candidates the search retrieved first, which a translation-only score can rank low; ``refine_each`` gives every
    candidate's best view."""
    from synfundus_guard.audit.memorization import CoarsePass, refine_pairs

    # slots are retrieval order; slot 4 holds the 3 best views, slot 0 (retrieved first) ranks last
    ranked = [((s, {}), pair) for s, pair in [
        (0.9, (4, 0, 0.0)), (0.8, (4, 1, 0.0)), (0.7, (4, 0, 6.0)), (0.6, (3, 0, 0.0)), (0.5, (2, 0, 0.0)),
        (0.4, (1, 0, 0.0)), (0.35, (3, 1, 0.0)), (0.3, (0, 2, 0.0)), (0.2, (0, 0, 0.0))]]
    coarse = CoarsePass(order=[10, 11, 12, 13, 14], spectra=np.zeros((5, 1)), ranked=ranked)
    top3 = [(4, 0, 0.0), (4, 1, 0.0), (4, 0, 6.0)]
    assert refine_pairs(coarse, 3) == top3
    assert refine_pairs(coarse, 3, first_retrieved=2) == top3 + [(0, 2, 0.0), (1, 0, 0.0)]
    assert refine_pairs(coarse, 3, refine_each=True) == top3 + [(3, 0, 0.0), (2, 0, 0.0), (1, 0, 0.0), (0, 2, 0.0)]
    # a first-retrieved candidate whose best view is already among the best is refined once
    assert refine_pairs(coarse, 1, first_retrieved=9) == [(4, 0, 0.0), (0, 2, 0.0), (1, 0, 0.0), (2, 0, 0.0),
                                                          (3, 0, 0.0)]


@pytest.mark.parametrize("m", [8, 16])
def test_shift_window_is_the_inverse_fft_at_the_searched_shifts(m):
    """The correlation window by matrix products equals the full inverse real FFT cut to shifts -m..m."""
    from scipy import fft as sfft

    from synfundus_guard.audit.pixel_match import SKETCH_SIDE, shift_window

    rng = np.random.default_rng(m)
    a, b = (rng.normal(size=(5, SKETCH_SIDE, SKETCH_SIDE)).astype(np.float32) for _ in range(2))
    products = sfft.rfft2(a) * np.conj(sfft.rfft2(b))
    wrapped = np.r_[SKETCH_SIDE - m: SKETCH_SIDE, 0: m + 1]
    full = sfft.irfft2(products, s=(SKETCH_SIDE, SKETCH_SIDE))[:, wrapped][:, :, wrapped]
    window = shift_window(products, m)
    assert window.shape == (5, 2 * m + 1, 2 * m + 1)
    assert np.abs(window - full).max() <= 1e-6 * np.abs(full).max()
