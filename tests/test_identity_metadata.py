"""Metadata stripping and the re-reading metadata check (PNG, JPEG, TIFF, WebP, GIF)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms, PngImagePlugin

from synfundus_guard.audit.base import Candidate, run_checks
from synfundus_guard.audit.identity import MetadataCheck, strip_metadata
from synfundus_guard.audit.identity._containers import metadata_items
from synfundus_guard.data.images import encode_png
from synfundus_guard.errors import ImageError

SECRET = "DOE^JOHN 1234567"


@pytest.fixture(scope="module")
def rgb() -> Image.Image:
    return Image.fromarray((np.random.default_rng(0).random((40, 52, 3)) * 255).astype(np.uint8))


def _save(im: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _exif() -> Image.Exif:
    exif = Image.Exif()
    exif[0x010E], exif[0x0132] = SECRET, "2020:01:01 10:00:00"
    return exif


def _planted(rgb: Image.Image) -> dict[str, bytes]:
    info = PngImagePlugin.PngInfo()
    info.add_text("Patient", SECRET)
    info.add_itxt("Comment", SECRET, zip=True)
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    return {
        "png-text": _save(rgb, "PNG", pnginfo=info), "png-exif": _save(rgb, "PNG", exif=_exif()),
        "png-icc": _save(rgb, "PNG", icc_profile=icc), "png-dpi": _save(rgb, "PNG", dpi=(300, 300)),
        "png-trailing": _save(rgb, "PNG") + SECRET.encode(),
        "jpeg-exif-comment": _save(rgb, "JPEG", exif=_exif(), comment=SECRET.encode()),
        "jpeg-icc": _save(rgb, "JPEG", icc_profile=icc), "jpeg-trailing": _save(rgb, "JPEG") + b"xyz",
        "jpeg-progressive-exif": _save(rgb, "JPEG", progressive=True, exif=_exif()),
        "tiff-description": _save(rgb, "TIFF", description=SECRET), "webp-exif": _save(rgb, "WEBP", exif=_exif()),
        "gif-comment": _save(rgb, "GIF", comment=SECRET.encode()),
    }


def test_every_planted_item_is_found_and_stripped(rgb: Image.Image) -> None:
    for name, data in _planted(rgb).items():
        assert metadata_items(data), name
        clean = strip_metadata(data)
        assert clean.startswith(b"\x89PNG"), name
        assert metadata_items(clean) == [], name
        assert SECRET.encode() not in clean


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "TIFF", "WEBP", "BMP", "GIF"])
def test_clean_files_have_no_items(rgb: Image.Image, fmt: str) -> None:
    assert metadata_items(_save(rgb, fmt)) == []


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA", "I;16", "P"])
def test_strip_keeps_pixels_and_mode(mode: str) -> None:
    rng = np.random.default_rng(1)
    if mode == "I;16":
        im = Image.fromarray((rng.random((20, 30)) * 65535).astype(np.uint16))
    else:
        im = Image.fromarray((rng.random((20, 30, 4)) * 255).astype(np.uint8), "RGBA").convert(mode)
    kw = {"transparency": 3} if mode == "P" else {}
    out = Image.open(io.BytesIO(strip_metadata(_save(im, "PNG", **kw))))
    assert out.mode == im.mode
    assert np.array_equal(np.asarray(out), np.asarray(im))
    if mode == "P":
        assert out.info.get("transparency") == 3


def test_strip_applies_exif_orientation(rgb: Image.Image) -> None:
    exif = _exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    out = Image.open(io.BytesIO(strip_metadata(_save(rgb, "PNG", exif=exif))))
    assert out.size == (rgb.height, rgb.width)
    assert np.array_equal(np.asarray(out), np.asarray(rgb.transpose(Image.Transpose.ROTATE_270)))


def test_strip_refuses_non_images() -> None:
    with pytest.raises(ImageError):
        strip_metadata(b"not an image at all")


def test_check_rereads_files(tmp_path: Path, rgb: Image.Image) -> None:
    clean_path = tmp_path / "clean.png"
    clean_path.write_bytes(encode_png(np.asarray(rgb, np.float32) / 255))
    dirty_path = tmp_path / "dirty.jpg"
    dirty_path.write_bytes(_planted(rgb)["jpeg-exif-comment"])
    broken = tmp_path / "broken.png"
    broken.write_bytes(clean_path.read_bytes()[:60])
    img = np.zeros((40, 52, 3), np.float32)
    batch = [Candidate("clean.png", img, clean_path), Candidate("dirty.jpg", img, dirty_path),
             Candidate("memory.png", img, None), Candidate("gone.png", img, tmp_path / "gone.png"),
             Candidate("broken.png", img, broken)]
    clean, dirty, memory, gone, bad = MetadataCheck().check_batch(batch)
    assert not clean.flagged and clean.scores == {"metadata.chunks": 0.0}
    assert dirty.flagged and dirty.scores["metadata.chunks"] == 2
    assert "Exif" in dirty.reasons[0] and SECRET not in dirty.reasons[0]
    assert not memory.flagged and memory.scores == {"metadata.chunks": 0.0}
    assert gone.flagged and gone.error
    assert bad.flagged and bad.error


def test_check_runs_through_the_fail_closed_runner(tmp_path: Path, rgb: Image.Image) -> None:
    path = tmp_path / "a.png"
    path.write_bytes(_planted(rgb)["png-text"])
    [[finding]] = run_checks([MetadataCheck()], [Candidate("a.png", np.zeros((4, 4, 3), np.float32), path)])
    assert finding.check == "metadata" and finding.flagged


# -- multi-frame files: any format, any name, flagged; never reduced to frame 1 ---------------------------------


def _animated(rgb: Image.Image, fmt: str) -> bytes:
    """Frame 1 is black; frame 2 is the image to hide (as a training image would be)."""
    return _save(Image.new("RGB", rgb.size), fmt, save_all=True, append_images=[rgb])


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "PNG", "TIFF"])
def test_multi_frame_files_are_flagged(rgb: Image.Image, fmt: str) -> None:
    data = _animated(rgb, fmt)
    assert Image.open(io.BytesIO(data)).n_frames == 2
    assert f"{fmt} with 2 frames (multi-frame image)" in metadata_items(data)
    with pytest.raises(ImageError, match=r"multi-frame image \(2 frames\)"):
        strip_metadata(data)


def test_check_flags_multi_frame_files_whatever_their_name(tmp_path: Path, rgb: Image.Image) -> None:
    names = {"gif-as.png": "GIF", "anim.webp": "WEBP", "apng.png": "PNG", "pages.tif": "TIFF"}
    for name, fmt in names.items():
        (tmp_path / name).write_bytes(_animated(rgb, fmt))
    still = tmp_path / "still.png"
    still.write_bytes(encode_png(np.asarray(rgb, np.float32) / 255))
    img = np.zeros((40, 52, 3), np.float32)
    batch = [Candidate(n, img, tmp_path / n) for n in [*names, "still.png"]]
    *multi, single = MetadataCheck().check_batch(batch)
    for finding, fmt in zip(multi, names.values()):
        assert finding.flagged and not finding.error and finding.scores["metadata.chunks"] >= 1
        assert f"{fmt} with 2 frames (multi-frame image)" in finding.reasons[0]
    assert not single.flagged and single.scores == {"metadata.chunks": 0.0}


def test_audit_refuses_a_release_image_with_a_hidden_frame(tmp_path: Path, rgb: Image.Image) -> None:
    from typer.testing import CliRunner

    from synfundus_guard.cli.main import app

    release = tmp_path / "release"
    release.mkdir()
    (release / "a.png").write_bytes(encode_png(np.asarray(rgb, np.float32) / 255))
    (release / "b.png").write_bytes(_animated(rgb, "GIF"))  # a GIF named .png
    policy = tmp_path / "metadata-only.yaml"
    policy.write_text("name: metadata-only\ndescription: metadata only\nmax_failed_fraction: 0.0\n"
                      "memorization: {enabled: false}\nmembership: {enabled: false}\nidentity:\n"
                      "  vessels: {enabled: false}\n  text: {enabled: false}\n  faces: {enabled: false}\n"
                      "  metadata: {enabled: true, action: block}\n")
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["audit", "--release", str(release), "--policy", str(policy), "--out", str(out)])
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert res.exit_code == 2 and "Traceback" not in res.output and isinstance(res.exception, SystemExit)
    assert errors == [f"error: {release / 'b.png'}: multi-frame image (2 frames); only single-frame images are "
                      "supported"]
    assert not (out / "report.json").exists() and not (release / "manifest.json").exists()
