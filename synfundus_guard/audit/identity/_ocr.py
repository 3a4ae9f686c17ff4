"""Optional OCR with the tesseract command-line engine, and fuzzy matching of identifiers in its output.

tesseract is a system program, not a Python package: ``apt-get install -y tesseract-ocr`` (Debian/Ubuntu).
:func:`tesseract_path` is the one availability flag; tests monkeypatch it. Only crops around text rows the
structural detector found are read, so OCR costs nothing on clean images.
"""

from __future__ import annotations

import io
import re
import shutil
import subprocess

import numpy as np
from PIL import Image

from ...errors import CheckError, MissingDependencyError

INSTALL_LINE = "apt-get install -y tesseract-ocr"
TIMEOUT_S = 20.0
_CONFUSABLE = str.maketrans({"O": "0", "Q": "0", "I": "1", "L": "1", "|": "1", "S": "5", "B": "8", "Z": "2"})


def tesseract_path() -> str | None:
    """Path of the tesseract binary, or None when it is not installed."""
    return shutil.which("tesseract")


def require_tesseract() -> str:
    """The tesseract path; raises :class:`MissingDependencyError` with the install line when it is missing."""
    path = tesseract_path()
    if path is None:
        raise MissingDependencyError(f"OCR engine tesseract is not installed ({INSTALL_LINE})")
    return path


def read_line(crop: np.ndarray, *, light: bool, binary: str) -> str:
    """OCR one text row: ``crop`` is a single channel in [0, 1]; ``light`` says the text is lighter than its
    background. The crop is contrast-stretched, made dark-on-white, upscaled to ~40 px letters and padded.
    Raises :class:`CheckError` when tesseract fails."""
    g = 1.0 - crop if light else crop
    g = (g - g.min()) / max(float(np.ptp(g)), 1e-6)
    scale = max(1, int(np.ceil(60 / max(crop.shape[0], 1))))
    pil = Image.fromarray((g * 255 + 0.5).astype(np.uint8))
    pil = pil.resize((pil.width * scale, pil.height * scale), Image.LANCZOS)
    canvas = Image.new("L", (pil.width + 20, pil.height + 20), 255)
    canvas.paste(pil, (10, 10))
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    try:
        run = subprocess.run([binary, "stdin", "stdout", "--psm", "7", "-l", "eng"], input=buf.getvalue(),
                             capture_output=True, timeout=TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CheckError(f"tesseract failed: {exc}") from None
    if run.returncode != 0:
        msg = run.stderr.decode("utf-8", "replace").strip().splitlines()
        raise CheckError(f"tesseract failed: {msg[-1] if msg else 'exit ' + str(run.returncode)}")
    return run.stdout.decode("utf-8", "replace").strip()


def normalise(text: str) -> str:
    """Upper-case letters and digits only, with OCR-confusable letters folded onto digits (O->0, I->1 ...)."""
    return re.sub(r"[^A-Z0-9]", "", text.upper().translate(_CONFUSABLE))


def _edit_distance_in(needle: str, hay: str) -> int:
    """Fewest edits that turn ``needle`` into some substring of ``hay`` (Sellers' approximate matching)."""
    prev = [0] * (len(hay) + 1)
    for i, ch in enumerate(needle, start=1):
        cur = [i] + [0] * len(hay)
        for j, hc in enumerate(hay, start=1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ch != hc))
        prev = cur
    return min(prev)


MIN_IDENTIFIER = 4
"""Blocklist entries shorter than this (after normalising) are ignored: they match too much by chance."""


def match_identifier(ocr_text: str, blocklist: list[str]) -> str | None:
    """The normalised blocklist entry found in ``ocr_text`` with the fewest edits, allowing one edit per five
    characters (ties: the first in ``blocklist``). Ids that differ in one digit both match a misread; the one
    reported is the closest, so the private report names the identifier the text most likely spells."""
    hay = normalise(ocr_text)
    best, best_cost = None, None
    for entry in blocklist:
        if len(entry) < MIN_IDENTIFIER:
            continue
        cost = _edit_distance_in(entry, hay)
        if cost <= len(entry) // 5 and (best_cost is None or cost < best_cost):
            best, best_cost = entry, cost
            if cost == 0:
                break
    return best
