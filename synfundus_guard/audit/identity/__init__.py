"""Identity-leak filters: retinal vessel biometrics, burned-in text, faces and file metadata.

Each filter is a :class:`~synfundus_guard.audit.base.Check` whose ``name`` matches its section of the policy
(``identity.vessels``, ``identity.text``, ``identity.faces``, ``identity.metadata``):

* vessel biometrics live in :mod:`synfundus_guard.audit.vessels` (templates stored in the training index);
* :class:`TextCheck` -- burned-in text; with a blocklist of training identifiers, OCR (tesseract) finds them;
* :class:`FaceCheck` -- a frontal face (dlib's detector, OpenCV's Haar cascades);
* :class:`MetadataCheck` -- a released file carries metadata; :func:`strip_metadata` removes it.

Public reasons and scores never name a training image or patient; such evidence goes to ``Finding.private``.
"""

from ._textdetect import TextOptions, TextRow, detect_text
from .faces import FaceCheck, FaceOptions, detect_faces
from .metadata import MetadataCheck, strip_metadata
from .text import TextCheck

CHECK_NAMES = ("vessels", "text", "faces", "metadata")
"""Names of the identity checks, as used in policies and reports."""

__all__ = [
    "CHECK_NAMES", "FaceCheck", "FaceOptions", "MetadataCheck", "TextCheck", "TextOptions", "TextRow",
    "detect_faces", "detect_text", "strip_metadata",
]
