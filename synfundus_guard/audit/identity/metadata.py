"""File metadata: strip it before release, and prove it is gone by re-reading the released files.

Cameras and PACS exports write patient names, ids, dates, device serials and free-text comments into EXIF,
PNG text chunks, JPEG comments, XMP, IPTC and TIFF tags. :func:`strip_metadata` re-encodes the pixels alone
as a PNG. :class:`MetadataCheck` re-reads each released file and walks its container structure directly (PNG
chunks, JPEG segments, TIFF tags, WebP chunks), so metadata that an image library would silently skip is
still found.

ICC profiles are not kept: a profile is a free-form blob (description, copyright and device strings, creation
date) that can identify the site or camera. Instead the pixels are converted to sRGB first, so the colours look
the same without it. EXIF orientation is applied to the pixels before the tag is dropped.

Multi-frame files (animated GIF/WebP/PNG, multi-page TIFF) are flagged by the check and refused by
:func:`strip_metadata`, not reduced to their first frame: a release image is one picture, so a second frame is
either a mistake or a hiding place (a training image in frame 2 passed every pixel check, which decode frame 1).
Silently keeping frame 1 would hide that the file was not what it claimed to be.
"""

from __future__ import annotations

import io
from typing import Sequence

from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from ...data.images import frame_count
from ...errors import ImageError
from ..base import Candidate, Check, Finding
from ._containers import metadata_items

NAME = "metadata"
KEY_ITEMS = "metadata.chunks"
"""Public score: number of metadata items found in the file (0 = clean; lower is better)."""

_KEEP_MODES = {"1", "L", "LA", "P", "RGB", "RGBA", "I;16", "I;16B", "I;16L"}


def _to_srgb(im: Image.Image, icc: bytes) -> Image.Image:
    """Convert ``im`` from its embedded ICC profile to sRGB (RGB/RGBA images); other modes are returned as is."""
    if im.mode not in ("RGB", "RGBA"):
        return im
    try:
        src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        dst = ImageCms.createProfile("sRGB")
        return ImageCms.profileToProfile(im, src, dst, outputMode=im.mode)
    except (ImageCms.PyCMSError, OSError) as exc:
        raise ImageError(f"cannot apply the embedded ICC profile ({exc})") from None


def strip_metadata(data: bytes) -> bytes:
    """Re-encode an image file's pixels as a PNG with no ancillary chunks; returns the PNG bytes.

    Accepts any single-frame format PIL reads (PNG, JPEG, TIFF, WebP, BMP, ...); EXIF orientation
    and an ICC profile are applied to the pixels; bit depth and alpha are kept where PNG supports them (8/16-bit
    grey, RGB, RGBA, palette with transparency). The output holds only IHDR, PLTE, tRNS, IDAT and IEND.
    Raises :class:`ImageError` for data that is not a readable image or holds more than one frame.
    """
    try:
        with Image.open(io.BytesIO(data)) as src:
            if frame_count(src) > 1:
                raise ImageError(f"cannot strip metadata: multi-frame image ({frame_count(src)} frames); "
                                 "only single-frame images are supported")
            src.load()
            icc = src.info.get("icc_profile")
            im = ImageOps.exif_transpose(src) or src.copy()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        raise ImageError(f"cannot strip metadata: not a readable image ({exc})") from None
    if icc:
        im = _to_srgb(im, icc)
    if im.mode not in _KEEP_MODES:
        im = im.convert("RGBA" if "A" in im.mode or "transparency" in im.info else "RGB")
    transparency = im.info.get("transparency") if im.mode in ("P", "L", "RGB") else None
    clean = Image.frombytes(im.mode, im.size, im.tobytes())
    if im.mode == "P":
        clean.putpalette(im.getpalette() or [])
    kwargs = {} if transparency is None else {"transparency": transparency}
    buf = io.BytesIO()
    clean.save(buf, format="PNG", optimize=False, **kwargs)
    out = buf.getvalue()
    leftover = metadata_items(out)
    if leftover:  # defensive: the encoder must not have added anything
        raise ImageError(f"metadata left after stripping: {', '.join(leftover)}")
    return out


def inspect_file(data: bytes) -> Finding:
    """The metadata finding for one file's bytes (flagged when any metadata item is present)."""
    try:
        items = metadata_items(data)
    except ValueError as exc:
        msg = str(exc)
        return Finding(check=NAME, flagged=True, reasons=(f"metadata check could not run: {msg}",), error=msg)
    reasons = (f"file carries metadata: {', '.join(items[:8])}" + (" ..." if len(items) > 8 else ""),) if items else ()
    return Finding(check=NAME, flagged=bool(items), reasons=reasons, scores={KEY_ITEMS: float(len(items))})


class MetadataCheck(Check):
    """Flags released files that carry any metadata beyond their pixels.

    The candidate's file is re-read from disk (``Candidate.path``). An in-memory candidate (no path) has no
    file yet and passes with ``metadata.chunks = 0``: the release writer encodes it without metadata.
    """

    name = NAME

    def fingerprint(self) -> dict:
        return {"name": self.name, "png_allowed_chunks": "IHDR,PLTE,tRNS,IDAT,IEND"}

    def check_batch(self, batch: Sequence[Candidate]) -> list[Finding]:
        findings = []
        for cand in batch:
            if cand.path is None:
                findings.append(Finding(check=NAME, flagged=False, scores={KEY_ITEMS: 0.0}))
                continue
            try:
                data = cand.path.read_bytes()
            except OSError as exc:
                msg = f"cannot read {cand.file_name} ({exc.strerror or exc})"
                findings.append(Finding(check=NAME, flagged=True, reasons=(f"metadata check could not run: {msg}",),
                                        error=msg))
                continue
            findings.append(inspect_file(data))
        return findings
