"""Loading images from disk into one canonical in-memory form.

Every loader returns ``float32`` RGB arrays of shape ``(H, W, 3)`` with values in ``[0, 1]``, whatever the file
held: 8- or 16-bit, grey, RGB, RGBA (composited onto black, the fundus background) or palette. Any failure is an
:class:`~synfundus_guard.errors.ImageError` with a one-line message naming the file.

Multi-frame files (animated GIF, WebP or PNG, multi-page TIFF, MPO) are refused rather than checked frame by
frame: a training or release image is one picture, and every other frame is a place to hide one (a training
image in frame 2 of an animated GIF passed every check when only frame 1 was decoded). Refusing keeps "the
pixels that were checked" and "the pixels in the file" the same thing.

Folders are listed two ways. Training folders may be assembled with links (``list_images`` follows them, as
any image tool would); a release is a published artefact, so ``list_images(..., follow_links=False)`` and
:func:`walk_folder` never follow a link: a link inside a release is refused by name before any file is opened,
because its target can change after the checks ran, or point at a patient image outside the release.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
import zlib
from pathlib import Path
from typing import Iterator

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


def walk_folder(folder: Path, *, hidden: bool = True, recursive: bool = True) -> Iterator[tuple[str, str]]:
    """Yield ``(path relative to folder, kind)`` for every entry under ``folder``; no link is ever followed.

    ``kind`` is ``"file"`` (regular file), ``"link"`` (symbolic link to anything: listed, never followed or
    opened) or ``"other"`` (FIFO, socket, device: opening one can block forever). Folders are descended into,
    not yielded. ``hidden=False`` skips names starting with ``.`` (and does not enter such folders). Order is
    unspecified. Raises :class:`InputError` when a folder cannot be listed.
    """
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        try:
            with os.scandir(Path(folder) / rel_dir) as it:
                entries = list(it)
        except OSError as exc:
            raise InputError(f"cannot list {Path(folder) / rel_dir}: {exc.strerror or exc}") from None
        for entry in entries:
            if not hidden and entry.name.startswith("."):
                continue
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            if entry.is_symlink():
                yield rel, "link"
            elif entry.is_dir(follow_symlinks=False):
                if recursive:
                    stack.append(rel)
            else:
                yield rel, "file" if entry.is_file(follow_symlinks=False) else "other"


def _existing_folder(folder: Path) -> Path:
    folder = Path(folder)
    if not folder.exists():
        raise InputError(f"folder not found: {folder}")
    if not folder.is_dir():
        raise InputError(f"not a folder: {folder}")
    return folder


def _linked_images(folder: Path, recursive: bool) -> list[Path]:
    """Image files found by globbing (links to files are followed, as image tools do)."""
    found = []
    for p in folder.glob("**/*" if recursive else "*"):
        rel = p.relative_to(folder)
        if not any(part.startswith(".") for part in rel.parts) and p.is_file() and is_image_file(p):
            found.append(rel)
    return found


def _own_images(folder: Path, recursive: bool) -> list[Path]:
    """Image files that are regular files inside ``folder``; any visible link is refused before anything is opened."""
    found = []
    for rel, kind in walk_folder(folder, hidden=False, recursive=recursive):
        if kind == "link":
            raise InputError(f"{folder / rel}: symbolic link in a release folder; copy the file in instead "
                             "(links are never followed)")
        if kind == "file" and is_image_file(Path(rel)):
            found.append(Path(rel))
    return found


def list_images(folder: Path, *, recursive: bool = True, follow_links: bool = True) -> list[Path]:
    """Return the image files under ``folder``, sorted, as paths relative to ``folder``.

    Hidden files and folders (names starting with ``.``) are skipped. ``follow_links=False`` is for releases:
    a symbolic link anywhere in the (visible) tree raises :class:`InputError` naming it, before any file is
    opened. Raises :class:`InputError` when the folder does not exist, is not a folder, or holds no image.
    """
    folder = _existing_folder(folder)
    found = _linked_images(folder, recursive) if follow_links else _own_images(folder, recursive)
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


def frame_count(im: Image.Image) -> int:
    """Number of frames (pages) of an open image; 1 for formats that hold one picture."""
    return int(getattr(im, "n_frames", 1) or 1)


def _refuse_frames(im: Image.Image, name: str) -> None:
    """Raise for a multi-frame image: the extra frames would go unchecked (see the module docstring)."""
    n = frame_count(im)
    if n > 1:
        raise ImageError(f"{name}: multi-frame image ({n} frames); only single-frame images are supported")


def decode_image(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode image bytes into a float32 RGB array in [0, 1]. Raises :class:`ImageError`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                if im.width * im.height > MAX_PIXELS:
                    raise ImageError(f"{name}: image too large ({im.width}x{im.height})")
                _refuse_frames(im, name)
                im.load()
                arr = _to_float_rgb(im, name)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image file (format not recognised)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"{name}: image too large (more than {MAX_PIXELS} pixels)") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        raise ImageError(f"{name}: corrupt or truncated image ({exc})") from None
    h, w = arr.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise ImageError(f"{name}: image too small ({w}x{h}); at least {MIN_SIDE}x{MIN_SIDE} pixels needed")
    return np.ascontiguousarray(arr, dtype=np.float32)


def read_image_bytes(path: Path) -> bytes:
    """The bytes of one image file. Raises :class:`ImageError` naming the file when it cannot be read."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ImageError(f"{path}: cannot read ({exc.strerror or exc})") from None


def load_image(path: Path) -> np.ndarray:
    """Load one image file as float32 RGB in [0, 1]. Raises :class:`ImageError` naming the file."""
    return decode_image(read_image_bytes(path), str(path))


def to_uint8(img: np.ndarray) -> np.ndarray:
    """Convert a float image in [0, 1] to uint8 with rounding."""
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


_PNG_COLOUR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}
"""PNG colour type by channel count: grey, grey + alpha, RGB, RGBA."""


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def encode_png(img: np.ndarray) -> bytes:
    """Encode a float image in [0, 1] (grey ``(H, W)``, or ``(H, W, C)`` with 1-4 channels) as an 8-bit PNG with no
    ancillary metadata chunks, the same bytes on every machine.

    The same pixels always give the same bytes: every row uses PNG's "Up" filter and the standard library's
    zlib (level 6). Pillow's encoder compresses with zlib-ng, whose output depends on the CPU it runs on, so the
    same phantom had other bytes, and another data fingerprint, on another machine. Files are within ~3 % of
    Pillow's size and encode in about half its time.
    """
    a = to_uint8(np.asarray(img))
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[2] not in _PNG_COLOUR_TYPES or 0 in a.shape:
        raise ValueError(f"cannot encode an image of shape {a.shape} as PNG")
    h, w, ch = a.shape
    rows = a.reshape(h, w * ch)
    up = rows.copy()
    up[1:] -= rows[:-1]  # uint8: modulo 256, as the filter is defined
    raw = np.concatenate([np.full((h, 1), 2, np.uint8), up], axis=1).tobytes()  # filter type 2 ("Up") per row
    header = struct.pack(">IIBBBBB", w, h, 8, _PNG_COLOUR_TYPES[ch], 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(raw, 6))
            + _png_chunk(b"IEND", b""))
