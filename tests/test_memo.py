"""Per-image memo (data/memo.py): keyed by content, never by identity; cached arrays are read-only."""

from __future__ import annotations

import numpy as np
import pytest
from skimage import data as skdata

from synfundus_guard.audit.pixel_match import _equalised
from synfundus_guard.data.fov import detect_fov
from synfundus_guard.data.memo import content_key, per_image


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


def test_cached_fov_and_equalisation_equal_the_computation() -> None:
    img = skdata.retina()[::4, ::4].astype(np.float32) / 255
    detect_fov.cache_clear()
    assert detect_fov(img) == detect_fov.__wrapped__(img) == detect_fov(img.copy())
    eq, disc = _equalised(img)
    ref, ref_disc = _equalised.__wrapped__(img)
    assert disc == ref_disc and np.array_equal(eq, ref) and not eq.flags.writeable
