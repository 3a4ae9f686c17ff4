"""Walk image containers and list the metadata they carry, without decoding pixels.

Each walker returns one short, public label per metadata item found (``"PNG tEXt chunk"``,
``"JPEG APP1 (Exif)"``): the *kind* of item, never its content, since the content is what may name a patient.
Container structure that is not metadata (pixel data, palettes, transparency, Huffman and quantisation tables)
is not listed. Anything the walkers cannot parse raises :class:`ValueError`; the caller fails closed.

A file holding more than one frame (animated GIF, WebP or PNG, multi-page TIFF, MPO) is also reported, whatever
its format or name (a GIF renamed ``.png`` is sniffed by its bytes): a release image is one picture, and the
other frames are a hiding place that image loaders and checks, which decode frame 1, never look at. Such files
are refused rather than checked frame by frame, here and in :func:`~synfundus_guard.data.images.decode_image`.
"""

from __future__ import annotations

import io
import struct
import warnings

from PIL import Image

from ...data.images import frame_count

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_ALLOWED = frozenset({b"IHDR", b"PLTE", b"IDAT", b"IEND", b"tRNS"})
"""Chunks that carry pixels or their decoding (tRNS is transparency). Every other chunk is reported: text,
time, EXIF, ICC, and even rendering hints (gAMA, sRGB, pHYs) that :func:`strip_metadata` also removes."""

TIFF_BASELINE = frozenset({
    254, 255, 256, 257, 258, 259, 262, 263, 264, 265, 266, 273, 274, 277, 278, 279, 280, 281, 282, 283, 284,
    290, 291, 296, 317, 320, 322, 323, 324, 325, 338, 339, 340, 341, 347, 529, 530, 531, 532,
})
"""TIFF tags that describe the pixel layout (sizes, strips, tiles, compression, photometric, resolution,
colour map, sample format). Tags such as ImageDescription, Make, Model, Software, DateTime, Artist,
HostComputer, Copyright, the Exif/GPS IFDs, XMP, IPTC and ICC are reported."""

WEBP_ALLOWED = frozenset({b"VP8 ", b"VP8L", b"VP8X", b"ALPH", b"ANIM", b"ANMF"})


def sniff_format(data: bytes) -> str:
    """``"png"``, ``"jpeg"``, ``"tiff"``, ``"webp"`` or ``"other"`` from the first bytes."""
    if data.startswith(PNG_SIGNATURE):
        return "png"
    if data.startswith(b"\xff\xd8"):
        return "jpeg"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return "other"


def png_items(data: bytes) -> list[str]:
    """Metadata chunks of a PNG file, plus any bytes after IEND."""
    items, pos = [], len(PNG_SIGNATURE)
    while True:
        if pos + 8 > len(data):
            raise ValueError("PNG ends before its IEND chunk")
        length, ctype = struct.unpack(">I4s", data[pos:pos + 8])
        end = pos + 12 + length
        if end > len(data):
            raise ValueError(f"PNG chunk {ctype!r} runs past the end of the file")
        if ctype not in PNG_ALLOWED:
            items.append(f"PNG {ctype.decode('latin-1')!r} chunk")
        pos = end
        if ctype == b"IEND":
            break
    if data[pos:].strip(b"\x00"):
        items.append(f"{len(data) - pos} bytes after PNG IEND")
    return items


def _app_label(marker: int, payload: bytes) -> str | None:
    """Label of an APPn/COM segment, or None for the two that only describe decoding (JFIF, Adobe)."""
    if marker == 0xFE:
        return "JPEG comment (COM)"
    n = marker - 0xE0
    if n == 0 and payload.startswith(b"JFIF\x00") and len(payload) >= 14 and payload[12] == payload[13] == 0:
        return None  # plain JFIF header: version and pixel density, no thumbnail
    if n == 14 and payload.startswith(b"Adobe"):
        return None  # colour-transform flag needed to decode the pixels
    ident = payload[:payload.find(b"\x00")] if b"\x00" in payload[:32] else payload[:8]
    name = ident.decode("latin-1", "replace").strip() or "?"
    return f"JPEG APP{n} ({name[:24]})"


def jpeg_items(data: bytes) -> list[str]:
    """Metadata segments (APPn other than plain JFIF/Adobe, COM) of a JPEG, plus bytes after EOI."""
    items, pos, n = [], 2, len(data)
    while True:
        while pos < n and data[pos] == 0xFF and pos + 1 < n and data[pos + 1] == 0xFF:
            pos += 1  # fill bytes
        if pos + 2 > n or data[pos] != 0xFF:
            raise ValueError("JPEG marker expected")
        marker = data[pos + 1]
        if marker == 0xD9:  # EOI
            pos += 2
            break
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            pos += 2
            continue
        if pos + 4 > n:
            raise ValueError("JPEG segment header truncated")
        seg_len = struct.unpack(">H", data[pos + 2:pos + 4])[0]
        payload = data[pos + 4:pos + 2 + seg_len]
        if 0xE0 <= marker <= 0xEF or marker == 0xFE:
            label = _app_label(marker, payload)
            if label:
                items.append(label)
        pos += 2 + seg_len
        if marker == 0xDA:  # start of scan: skip entropy-coded data up to the next real marker
            while True:
                nxt = data.find(b"\xff", pos)
                if nxt < 0 or nxt + 1 >= n:
                    raise ValueError("JPEG scan data has no end marker")
                if data[nxt + 1] == 0 or 0xD0 <= data[nxt + 1] <= 0xD7 or data[nxt + 1] == 0xFF:
                    pos = nxt + 1 if data[nxt + 1] == 0xFF else nxt + 2
                    continue
                pos = nxt
                break
    if data[pos:].strip(b"\x00"):
        items.append(f"{n - pos} bytes after JPEG EOI")
    return items


def tiff_items(data: bytes) -> list[str]:
    """Non-baseline tags of every page of a TIFF file."""
    items: list[str] = []
    with Image.open(io.BytesIO(data)) as im:
        for page in range(frame_count(im)):  # the page count itself is reported by frame_items
            im.seek(page)
            for tag in sorted(im.tag_v2.keys()):
                if tag not in TIFF_BASELINE:
                    items.append(f"TIFF tag {tag}")
    return sorted(set(items), key=items.index)


def webp_items(data: bytes) -> list[str]:
    """Metadata chunks (EXIF, XMP, ICC, unknown) of a WebP file."""
    items, pos = [], 12
    while pos + 8 <= len(data):
        ctype, length = struct.unpack("<4sI", data[pos:pos + 8])
        if ctype not in WEBP_ALLOWED:
            items.append(f"WebP {ctype.decode('latin-1')!r} chunk")
        pos += 8 + length + (length & 1)
    return items


def other_items(data: bytes) -> list[str]:
    """Metadata PIL exposes for other formats (BMP, GIF, ...): EXIF, ICC, XMP, comments."""
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        info = dict(im.info)
        exif = im.getexif()
    keys = {"exif", "icc_profile", "comment", "xmp", "XML:com.adobe.xmp", "extension"}
    items = [f"{im.format or 'image'} {k}" for k in sorted(keys & set(info)) if info[k]]
    if len(exif) and "exif" not in info:
        items.append(f"{im.format or 'image'} exif")
    return items


def frame_items(data: bytes) -> list[str]:
    """One item when the file holds more than one frame or page, whatever its format (see the module docstring)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the header alone is read here
        with Image.open(io.BytesIO(data)) as im:
            n, fmt = frame_count(im), im.format or "image"
    return [f"{fmt} with {n} frames (multi-frame image)"] if n > 1 else []


WALKERS = {"png": png_items, "jpeg": jpeg_items, "tiff": tiff_items, "webp": webp_items, "other": other_items}


def metadata_items(data: bytes) -> list[str]:
    """Every metadata item in an image file's bytes, and extra frames. Raises ValueError when it cannot be parsed."""
    try:
        return WALKERS[sniff_format(data)](data) + frame_items(data)
    except (struct.error, OSError, SyntaxError, EOFError, IndexError, Image.DecompressionBombError) as exc:
        raise ValueError(f"cannot parse image container ({exc})") from None
