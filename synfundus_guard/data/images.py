"""Loading images from disk into one canonical in-memory form.

Every loader returns ``float32`` RGB arrays of shape ``(H, W, 3)`` with values in ``[0, 1]``, whatever the file
held: 8- or 16-bit, grey, RGB, RGBA (composited onto black, the fundus background) or palette. Any failure is an
:class:`~synfundus_guard.errors.ImageError` with a one-line message naming the file.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import ImageError, InputError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")
MIN_SIDE = 32
"""Smaller images carry too little structure for any check to be meaningful; they are refused."""
MAX_PIXELS = 64_000_000
"""Decompression-bomb guard: larger images are refused rather than loaded."""


def is_image_file(path: Path) -> bool:
    """True when the file name has a supported image extension."""
    return path.suffix.lower() in IMAGE_EXTENSIONS


def list_images(folder: Path, *, recursive: bool = True) -> list[Path]:
    """Return the image files under ``folder``, sorted, as paths relative to ``folder``.

    Hidden files and folders (names starting with ``.``) are skipped. Raises :class:`InputError` when the
    folder does not exist, is not a folder, or holds no image.
    """
    folder = Path(folder)
    if not folder.exists():
        raise InputError(f"folder not found: {folder}")
    if not folder.is_dir():
        raise InputError(f"not a folder: {folder}")
    pattern = "**/*" if recursive else "*"
    found = []
    for p in folder.glob(pattern):
        rel = p.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if p.is_file() and is_image_file(p):
            found.append(rel)
    if not found:
        raise InputError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {folder}")
    return sorted(found, key=lambda r: r.as_posix())


def _to_float_rgb(im: Image.Image, name: str) -> np.ndarray:
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        arr = np.asarray(im, dtype=np.float32) / 65535.0
        return np.repeat(arr[..., None], 3, axis=2)
    if mode == "I":
        arr = np.asarray(im, dtype=np.float32)
        scale = 65535.0 if arr.max(initial=0) > 255 else 255.0
        arr = np.clip(arr / scale, 0, 1)
        return np.repeat(arr[..., None], 3, axis=2)
    if mode == "F":
        arr = np.asarray(im, dtype=np.float32)
        if not np.isfinite(arr).all():  # NaN would pass nanmin/nanmax and poison every later step
            raise ImageError(f"{name}: image holds non-finite values")
        lo, hi = float(arr.min()), float(arr.max())
        if not (lo >= 0.0 and hi <= 1.0):  # float images already in [0, 1] are kept as they are
            arr = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
        return np.repeat(arr[..., None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        arr = np.asarray(im, dtype=np.float32) / 255.0
        return arr[..., :3] * arr[..., 3:4]
    if mode != "RGB":
        im = im.convert("RGB")
    return np.asarray(im, dtype=np.float32) / 255.0


def decode_image(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode image bytes into a float32 RGB array in [0, 1]. Raises :class:`ImageError`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                if im.width * im.height > MAX_PIXELS:
                    raise ImageError(f"{name}: image too large ({im.width}x{im.height})")
                im.load()
                arr = _to_float_rgb(im, name)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image file (format not recognised)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"{name}: image too large (more than {MAX_PIXELS} pixels)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{name}: corrupt or truncated image ({exc})") from None
    h, w = arr.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise ImageError(f"{name}: image too small ({w}x{h}); at least {MIN_SIDE}x{MIN_SIDE} pixels needed")
    return np.ascontiguousarray(arr, dtype=np.float32)


def load_image(path: Path) -> np.ndarray:
    """Load one image file as float32 RGB in [0, 1]. Raises :class:`ImageError` naming the file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return decode_image(data, str(path))


def to_uint8(img: np.ndarray) -> np.ndarray:
    """Convert a float image in [0, 1] to uint8 with rounding."""
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def encode_png(img: np.ndarray) -> bytes:
    """Encode a float RGB image as a PNG with no ancillary metadata chunks."""
    buf = io.BytesIO()
    Image.fromarray(to_uint8(img)).save(buf, format="PNG", optimize=False)
    return buf.getvalue()
