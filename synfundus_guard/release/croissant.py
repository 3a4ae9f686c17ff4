"""Croissant 1.1 metadata (``croissant.json``) for a release, with the Responsible-AI (RAI 1.0) vocabulary.

Dataset hubs and loaders (``mlcroissant``, TFDS, Hugging Face) read ``croissant.json`` to learn what a folder
holds: a FileObject for ``metadata.jsonl``, a FileSet for the images, and one RecordSet ``images`` joining
each image file to its metadata row (file name, image, then seed, labels, scores, verdict ... as present). The
RAI part says what a reader of synthetic medical images needs: the images were sampled from a generative model
through the guarded sampler, which checks ran on every image, the model's public facts (fingerprint,
architecture, resolution, DP ε and δ where trained with DP), and the limits of all that.

The document is a pure function of the manifest (and an optional training card): no creation time, so a
resumed run writes the same bytes as an uninterrupted one. It never names training data: generator facts come
from the manifest's ``fingerprints.model`` (:meth:`~synfundus_guard.generation.model.LoadedModel.public_info`)
and :meth:`~synfundus_guard.generation.card.TrainingCard.public_summary`, which hold no file names, paths or
patient ids; the only file names are the release's own. ``croissant.json`` is in the manifest's
``ALLOWED_EXTRA``: allowed beside the images, not hashed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path, PurePosixPath
from typing import Any

from ..errors import ManifestError
from ..fsutil import atomic_write_text
from .croissant_rai import rai_properties
from .manifest import METADATA_NAME, read_manifest, render_metadata

CROISSANT_NAME = "croissant.json"
CONFORMS_TO = ["http://mlcommons.org/croissant/1.1", "http://mlcommons.org/croissant/RAI/1.0"]
CONTEXT: dict[str, Any] = {
    "@language": "en", "@vocab": "https://schema.org/", "arrayShape": "cr:arrayShape", "citeAs": "cr:citeAs",
    "column": "cr:column", "conformsTo": "dct:conformsTo", "containedIn": "cr:containedIn",
    "cr": "http://mlcommons.org/croissant/", "rai": "http://mlcommons.org/croissant/RAI/",
    "data": {"@id": "cr:data", "@type": "@json"}, "dataType": {"@id": "cr:dataType", "@type": "@vocab"},
    "dct": "http://purl.org/dc/terms/", "description": {"@container": "@language"},
    "equivalentProperty": "cr:equivalentProperty", "examples": {"@id": "cr:examples", "@type": "@json"},
    "extract": "cr:extract", "field": "cr:field", "fileProperty": "cr:fileProperty", "fileObject": "cr:fileObject",
    "fileSet": "cr:fileSet", "format": "cr:format", "includes": "cr:includes", "isArray": "cr:isArray",
    "isLiveDataset": "cr:isLiveDataset", "jsonPath": "cr:jsonPath", "key": "cr:key", "md5": "cr:md5",
    "name": {"@container": "@language"}, "parentField": "cr:parentField", "path": "cr:path",
    "recordSet": "cr:recordSet", "references": "cr:references", "regex": "cr:regex", "repeated": "cr:repeated",
    "replace": "cr:replace", "samplingRate": "cr:samplingRate", "sc": "https://schema.org/",
    "separator": "cr:separator", "source": "cr:source", "subField": "cr:subField", "transform": "cr:transform",
}
"""The Croissant 1.1 ``@context``, as ``mlcroissant`` writes it for 1.1 documents."""
MIME_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".tif": "image/tiff",
              ".tiff": "image/tiff", ".bmp": "image/bmp", ".webp": "image/webp"}
_FILES, _RECORDS = "image-files", "images"
_META = {"fileObject": {"@id": METADATA_NAME}}


def _rows(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``metadata.jsonl`` rows as written (Parquet-safe), so the schema describes what loaders see."""
    return [json.loads(line) for line in render_metadata(manifest).decode("utf-8").splitlines()]


def _data_type(values: list[Any]) -> str | None:
    """The Croissant type holding every value (None: a nested value, not described)."""
    kinds = {type(v) for v in values if v is not None}
    if kinds == {bool}:
        return "sc:Boolean"
    if kinds <= {int}:
        return "sc:Integer" if kinds else "sc:Text"
    if kinds <= {int, float}:
        return "sc:Float"
    return "sc:Text" if kinds <= {str, int, float, bool} else None


class _Ids:
    """Unique, whitespace-free ``@id``\\ s for fields named after arbitrary metadata columns."""

    def __init__(self) -> None:
        self.used: set[str] = set()

    def __call__(self, *parts: str) -> str:
        base = "/".join(re.sub(r"[^A-Za-z0-9._-]", "_", p) or "_" for p in parts)
        uid, i = base, 1
        while uid in self.used:
            i += 1
            uid = f"{base}_{i}"
        self.used.add(uid)
        return uid


def _column_field(ids: _Ids, column: str, values: list[Any]) -> dict[str, Any] | None:
    """A field for one metadata column: scalars, lists of scalars, or objects of scalars (one subfield each)."""
    present = [v for v in values if v is not None]
    field: dict[str, Any] = {"@type": "cr:Field", "@id": ids(_RECORDS, column), "name": column}
    if present and all(isinstance(v, dict) for v in present):
        subs = []
        for key in sorted({k for v in present for k in v}):
            kind = _data_type([v.get(key) for v in present])
            if kind is None or "'" in key or "\\" in key:
                continue  # nested, or a key JSONPath would need escapes for: left to metadata.jsonl
            subs.append({"@type": "cr:Field", "@id": ids(_RECORDS, column, key), "name": key, "dataType": kind,
                         "source": {**_META, "extract": {"column": column}, "transform": {"jsonPath": f"$['{key}']"}}})
        return {**field, "subField": subs} if subs else None
    if present and all(isinstance(v, list) for v in present):
        kind = _data_type([item for v in present for item in v])
        field["isArray"] = True
    else:
        kind = _data_type(present)
    if kind is None:
        return None
    return {**field, "dataType": kind, "source": {**_META, "extract": {"column": column}}}


def _record_set(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``images`` RecordSet: each image file joined to its metadata row by file name."""
    ids = _Ids()
    key = ids(_RECORDS, "file_name")
    fields = [
        {"@type": "cr:Field", "@id": key, "name": "file_name", "dataType": "sc:Text",
         "description": "Path of the image relative to the release folder.",
         "source": {"fileSet": {"@id": _FILES}, "extract": {"fileProperty": "fullpath"},
                    "transform": {"regex": "^(.*)$"}},
         "references": {**_META, "extract": {"column": "file_name"}}},
        {"@type": "cr:Field", "@id": ids(_RECORDS, "image"), "name": "image", "dataType": "sc:ImageObject",
         "source": {"fileSet": {"@id": _FILES}, "extract": {"fileProperty": "content"}}},
    ]
    columns = sorted({k for row in rows for k in row} - {"file_name"})
    fields += [f for c in columns if (f := _column_field(ids, c, [row.get(c) for row in rows])) is not None]
    return {"@type": "cr:RecordSet", "@id": _RECORDS, "name": _RECORDS, "key": {"@id": key},
            "description": "One record per released image: the image and its per-image fields from "
                           f"{METADATA_NAME}.", "field": fields}


def _distribution(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    names = [f["file_name"] for f in manifest["files"]]
    suffixes = sorted({PurePosixPath(n).suffix for n in names})
    nested = any("/" in n for n in names)
    includes = [f"*{s}" for s in suffixes] + ([f"**/*{s}" for s in suffixes] if nested else [])
    formats = sorted({MIME_TYPES.get(s.lower(), "application/octet-stream") for s in suffixes})
    return [
        {"@type": "cr:FileObject", "@id": METADATA_NAME, "name": METADATA_NAME, "contentUrl": METADATA_NAME,
         "encodingFormat": "application/jsonlines", "sha256": manifest["metadata"]["sha256"],
         "description": "Per-image fields, one JSON object per line (Hugging Face imagefolder convention)."},
        {"@type": "cr:FileSet", "@id": _FILES, "name": _FILES, "encodingFormat": formats, "includes": includes,
         "description": f"The {len(names)} released images, listed with their sha256 in manifest.json."},
    ]


def build_croissant(*, manifest: dict[str, Any], card: Any = None) -> dict[str, Any]:
    """The Croissant JSON-LD document for a release whose manifest is ``manifest`` (see module docstring).

    ``card`` is the model's :class:`~synfundus_guard.generation.card.TrainingCard` when at hand; only its public
    facts are used. Raises :class:`ManifestError` for a manifest without files or a metadata hash.
    """
    files, meta = manifest.get("files"), manifest.get("metadata")
    if not files or not isinstance(meta, dict) or not isinstance(meta.get("sha256"), str):
        raise ManifestError("cannot describe the release in Croissant: the manifest has no files or metadata hash")
    root = str(manifest.get("root_sha256", ""))
    doc: dict[str, Any] = {
        "@context": CONTEXT, "@type": "sc:Dataset", "conformsTo": CONFORMS_TO,
        "name": f"synfundus-guard release {root[:12]}".strip(),
        "description": f"{len(files)} images sealed by synfundus-guard; manifest.json pins them (root_sha256 "
                       f"{root}) and `guard verify` checks them.",
        "keywords": ["synthetic data", "medical imaging", "privacy"], "isLiveDataset": False,
        "distribution": _distribution(manifest), "recordSet": [_record_set(_rows(manifest))],
    }
    return {**doc, **rai_properties(manifest=manifest, card=card)}


def written_by_guard(path: Path) -> bool:
    """Whether the Croissant file at ``path`` is one guard wrote (its ``name`` says so); False when unreadable."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and str(doc.get("name", "")).startswith("synfundus-guard release")


def write_croissant(release_dir: Path, *, manifest: dict[str, Any] | None = None,
                    card: Any = None) -> Path | None:
    """Write ``croissant.json`` into ``release_dir`` atomically; returns its path, or None when the folder holds
    a ``croissant.json`` that guard did not write (a hand-made card is never overwritten).

    ``manifest`` defaults to the release's own (read and validated). Raises :class:`ManifestError` for a missing
    or malformed manifest or when the file cannot be written.
    """
    root = Path(release_dir)
    path = root / CROISSANT_NAME
    if (path.exists() or path.is_symlink()) and not written_by_guard(path):
        return None
    manifest = manifest if manifest is not None else read_manifest(root)
    try:
        doc = build_croissant(manifest=manifest, card=card)
        atomic_write_text(path, json.dumps(doc, indent=2, ensure_ascii=False, allow_nan=False) + "\n")
    except (TypeError, ValueError) as exc:  # NaN or non-JSON values in a manifest read from disk
        raise ManifestError(f"cannot describe the release in Croissant: {exc}") from None
    except OSError as exc:
        raise ManifestError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path
