"""Per-image work done once, whichever check asks for it: a small cache keyed by an image's content.

Several checks start from the same facts about an image: the memorization check's embedder and its pixel stage,
the vessels check and the text check all find the field-of-view disc (~8 ms at 256 px), and the memorization
and vessels checks equalise the same canonical crop. Checks run one after the other over a batch
(:func:`~synfundus_guard.audit.base.run_checks`), so the first one pays and the others hit the cache.

The key is a SHA-256 digest of the pixels with their dtype and shape (0.5 ms for a 256 px float image), never the
array's identity: an array that is changed in place, or a new image that reuses a freed array's address, is
another key. Cached arrays are returned read-only, so a caller cannot change what the next caller gets.

Where one piece of code holds a batch of images that several cached functions will see (the checks of a batch,
the templates of a training image), :func:`pinned` hashes each once: within the block the images are read-only
and held, so an image is found by identity and its key is not recomputed (an audited image was hashed 5 times, a
training image 4).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from contextlib import contextmanager
from functools import wraps
from typing import Any, Callable, Iterable, Iterator, TypeVar

import numpy as np

T = TypeVar("T")


_PINNED: dict[int, tuple[np.ndarray, bytes]] = {}
"""id -> (the image, its key) of the images of the open :func:`pinned` blocks."""


def content_key(img: np.ndarray) -> bytes:
    """A digest of ``img``'s pixels, dtype and shape: equal for equal images, whatever array holds them."""
    pin = _PINNED.get(id(img))
    if pin is not None and pin[0] is img:
        return pin[1]
    a = np.ascontiguousarray(img)
    h = hashlib.sha256(a.data)
    h.update(f"|{a.dtype.str}|{a.shape}".encode())
    return h.digest()


@contextmanager
def pinned(images: Iterable[Any]) -> Iterator[None]:
    """Within the block, each of ``images`` that owns its pixels is hashed once: it is made read-only (its flag is
    restored afterwards) and held, and :func:`content_key` finds its key by identity. Arrays that do not own their
    pixels (views of another array, which could change through it) are hashed on every call, as outside."""
    added = []
    try:
        for img in images:
            if isinstance(img, np.ndarray) and img.flags.owndata and id(img) not in _PINNED:
                writeable = img.flags.writeable
                img.setflags(write=False)
                added.append((img, writeable))
                _PINNED[id(img)] = (img, content_key(img))
        yield
    finally:
        for img, writeable in added:
            _PINNED.pop(id(img), None)
            if writeable:
                img.setflags(write=True)


def _read_only(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        value.setflags(write=False)
    elif isinstance(value, tuple):
        for v in value:
            _read_only(v)
    return value


def per_image(maxsize: int) -> Callable[[Callable[[np.ndarray], T]], Callable[[np.ndarray], T]]:
    """Cache a function of one image by :func:`content_key`, keeping the ``maxsize`` most recent results.

    ``maxsize`` should cover a batch of images (checks pass through a whole batch before the next check runs);
    a miss only costs the recomputation. The wrapped function's ``cache_clear()`` empties the cache.
    """

    def wrap(fn: Callable[[np.ndarray], T]) -> Callable[[np.ndarray], T]:
        cache: OrderedDict[bytes, T] = OrderedDict()
        lock = threading.Lock()

        @wraps(fn)
        def cached(img: np.ndarray) -> T:
            key = content_key(img)
            with lock:
                if key in cache:
                    cache.move_to_end(key)
                    return cache[key]
            value = _read_only(fn(img))
            with lock:
                cache[key] = value
                while len(cache) > maxsize:
                    cache.popitem(last=False)
            return value

        cached.cache_clear = cache.clear  # type: ignore[attr-defined]
        return cached

    return wrap
