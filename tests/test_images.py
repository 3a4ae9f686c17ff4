"""Image loading and image folders: every supported encoding decodes to float32 RGB in [0, 1]; every bad input
raises the right GuardError subclass with one line that names the file."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from synfundus_guard.data.folder import read_labels, scan_folder
from synfundus_guard.data.images import decode_image, encode_png, list_images, load_image, to_uint8, walk_folder
from synfundus_guard.errors import ImageError, InputError

H, W = 40, 48


def _save(path: Path, im: Image.Image, fmt: str | None = None, **kw) -> Path:
    im.save(path, format=fmt, **kw)
    return path


def _png16_rgb(arr: np.ndarray) -> bytes:
    """A 16-bit RGB PNG written by hand (Pillow cannot write one)."""
    h, w, _ = arr.shape
    raw = b"".join(b"\x00" + arr[i].astype(">u2").tobytes() for i in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def _one_line_naming(exc: pytest.ExceptionInfo, path: Path) -> None:
    msg = str(exc.value)
    assert "\n" not in msg and str(path) in msg, msg


@pytest.fixture
def rgb() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (H, W, 3), dtype=np.uint8)


# --- decoding: every encoding ends as float32 (H, W, 3) in [0, 1] -------------------------------------------


def _check(img: np.ndarray) -> np.ndarray:
    assert img.shape == (H, W, 3) and img.dtype == np.float32 and img.flags.c_contiguous
    assert 0.0 <= img.min() and img.max() <= 1.0
    return img


@pytest.mark.parametrize("ext,fmt", [(".png", "PNG"), (".tif", "TIFF"), (".bmp", "BMP"), (".webp", "WEBP")])
def test_lossless_rgb_8bit(tmp_path, rgb, ext, fmt):
    kw = {"lossless": True} if fmt == "WEBP" else {}
    img = _check(load_image(_save(tmp_path / f"a{ext}", Image.fromarray(rgb), fmt, **kw)))
    assert np.array_equal(to_uint8(img), rgb)


@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_grey_8bit_is_replicated_to_rgb(tmp_path, rgb, ext):
    grey = rgb[..., 0]
    img = _check(load_image(_save(tmp_path / f"g{ext}", Image.fromarray(grey))))
    assert np.array_equal(img[..., 0], img[..., 2]) and np.array_equal(to_uint8(img)[..., 1], grey)


@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_grey_16bit_keeps_its_scale(tmp_path, ext):
    arr = np.linspace(0, 65535, H * W).astype(np.uint16).reshape(H, W)
    img = _check(load_image(_save(tmp_path / f"g16{ext}", Image.fromarray(arr))))
    np.testing.assert_allclose(img[..., 1], arr / 65535.0, atol=1e-6)


@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_dark_16bit_is_not_mistaken_for_8bit(tmp_path, ext):
    arr = np.full((H, W), 200, np.uint16)  # a very dark 16-bit image: max below 255
    img = _check(load_image(_save(tmp_path / f"d16{ext}", Image.fromarray(arr))))
    np.testing.assert_allclose(img, 200 / 65535.0, atol=1e-7)


def test_rgb_16bit_png(tmp_path):
    arr = np.zeros((H, W, 3), np.uint16)
    arr[..., 0], arr[..., 1], arr[..., 2] = 65535, 32768, 1000
    path = tmp_path / "rgb16.png"
    path.write_bytes(_png16_rgb(arr))
    img = _check(load_image(path))
    np.testing.assert_allclose(img[0, 0], arr[0, 0] / 65535.0, atol=1 / 255)


def test_rgba_is_composited_onto_black(tmp_path):
    arr = np.zeros((H, W, 4), np.uint8)
    arr[..., :3] = (200, 100, 50)
    arr[:, : W // 2, 3] = 255
    arr[:, W // 2 :, 3] = 0
    arr[0, 0, 3] = 128
    img = _check(load_image(_save(tmp_path / "a.png", Image.fromarray(arr, "RGBA"))))
    np.testing.assert_allclose(img[1, 0], np.array([200, 100, 50]) / 255, atol=1e-6)
    assert np.all(img[:, W // 2 :] == 0)  # transparent = fundus background (black)
    np.testing.assert_allclose(img[0, 0], np.array([200, 100, 50]) / 255 * 128 / 255, atol=1e-6)


def test_grey_with_alpha(tmp_path):
    arr = np.zeros((H, W, 2), np.uint8)
    arr[..., 0], arr[..., 1] = 180, 255
    arr[:5, :, 1] = 0
    img = _check(load_image(_save(tmp_path / "la.png", Image.fromarray(arr, "LA"))))
    assert np.all(img[:5] == 0) and np.allclose(img[5:], 180 / 255)


def test_palette_with_and_without_transparency(tmp_path, rgb):
    pal = Image.fromarray(rgb).quantize(colors=16)
    img = _check(load_image(_save(tmp_path / "p.png", pal)))
    assert np.array_equal(to_uint8(img), np.asarray(pal.convert("RGB")))
    index0 = np.asarray(pal) == 0
    pal.info["transparency"] = 0
    img_t = _check(load_image(_save(tmp_path / "pt.png", pal, transparency=0)))
    assert np.all(img_t[index0] == 0) and np.array_equal(img_t[~index0], img[~index0])


def test_bilevel(tmp_path):
    arr = np.zeros((H, W), bool)
    arr[:, :10] = True
    img = _check(load_image(_save(tmp_path / "b.png", Image.fromarray(arr))))
    assert np.all(img[:, :10] == 1) and np.all(img[:, 10:] == 0)


@pytest.mark.parametrize("mode", ["RGB", "L", "CMYK"])
def test_jpeg(tmp_path, mode):
    smooth = np.zeros((H, W, 3), np.uint8)
    smooth[..., 0] = np.linspace(40, 220, W)[None].astype(np.uint8)
    smooth[..., 1] = 90
    smooth[..., 2] = 60
    im = Image.fromarray(smooth).convert(mode)
    img = _check(load_image(_save(tmp_path / "a.jpg", im, "JPEG", quality=95)))
    expected = np.asarray(im.convert("RGB"), np.float32) / 255
    assert np.abs(img - expected).mean() < 0.02


def test_float_tiff_in_unit_range_is_kept(tmp_path):
    arr = np.full((H, W), 0.5, np.float32)
    arr[0, :] = 0.25
    img = _check(load_image(_save(tmp_path / "f.tif", Image.fromarray(arr))))
    np.testing.assert_allclose(img[..., 0], arr)


def test_float_tiff_outside_unit_range_is_rescaled(tmp_path):
    arr = np.linspace(-100, 3000, H * W, dtype=np.float32).reshape(H, W)
    img = _check(load_image(_save(tmp_path / "f.tif", Image.fromarray(arr))))
    assert img.min() == 0 and img.max() == 1


def test_float_tiff_with_nan_is_refused(tmp_path):
    arr = np.zeros((H, W), np.float32)
    arr[3, 3] = np.nan
    path = _save(tmp_path / "nan.tif", Image.fromarray(arr))
    with pytest.raises(ImageError, match="non-finite") as exc:
        load_image(path)
    _one_line_naming(exc, path)


def test_encode_png_round_trips_and_carries_no_metadata(rgb):
    img = rgb.astype(np.float32) / 255
    data = encode_png(img)
    assert np.array_equal(to_uint8(decode_image(data)), rgb)
    assert b"tEXt" not in data and b"tIME" not in data and b"eXIf" not in data


# --- bad image files: ImageError, one line, naming the file ---------------------------------------------------


def _png_bytes(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg_bytes(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.mark.parametrize("case,contents,match", [
    ("random bytes", lambda rgb: bytes(np.random.default_rng(1).integers(0, 256, 500, dtype=np.uint8)), "not an image"),
    ("text file", lambda rgb: b"hello, I am not a fundus photograph\n", "not an image"),
    ("empty file", lambda rgb: b"", "not an image"),
    ("png header then garbage", lambda rgb: _png_bytes(rgb)[:40] + b"\x00garbage" * 20, "not an image|corrupt"),
    ("png with corrupt pixel data", lambda rgb: _png_bytes(rgb)[:60] + b"\xff" * 200, "corrupt or truncated"),
    ("truncated png", lambda rgb: _png_bytes(rgb)[: len(_png_bytes(rgb)) // 2], "corrupt or truncated"),
    ("truncated jpeg", lambda rgb: _jpeg_bytes(rgb)[: len(_jpeg_bytes(rgb)) // 2], "corrupt or truncated"),
    ("too small", lambda rgb: _png_bytes(rgb[:16, :20]), r"too small \(20x16\)"),
])
def test_bad_image_files(tmp_path, rgb, case, contents, match):
    path = tmp_path / "bad image.png"
    path.write_bytes(contents(rgb))
    with pytest.raises(ImageError, match=match) as exc:
        load_image(path)
    _one_line_naming(exc, path)


def test_decompression_bomb_is_refused_as_too_large(tmp_path):
    data = _png16_rgb(np.zeros((1, 1, 3), np.uint16))
    ihdr = struct.pack(">IIBBBBB", 20000, 20000, 16, 2, 0, 0, 0)  # claims 400 megapixels
    data = data[:8] + struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)) + data[33:]
    path = tmp_path / "bomb.png"
    path.write_bytes(data)
    with pytest.raises(ImageError, match="too large") as exc:
        load_image(path)
    _one_line_naming(exc, path)


@pytest.mark.parametrize("kind", ["missing", "folder"])
def test_unreadable_paths(tmp_path, kind):
    path = tmp_path / "x.png"
    if kind == "folder":
        path.mkdir()
    with pytest.raises(ImageError, match="cannot read") as exc:
        load_image(path)
    _one_line_naming(exc, path)


# --- folders and labels.csv -----------------------------------------------------------------------------------


def _folder(tmp_path: Path, rgb: np.ndarray, names=("a.png", "sub/b.png", "c.jpg")) -> Path:
    root = tmp_path / "imgs"
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb).save(root / name)
    return root


def test_list_images_skips_hidden_and_non_images(tmp_path, rgb):
    root = _folder(tmp_path, rgb, names=("b.png", "a.PNG", "sub/c.tif", ".hidden.png", ".cache/d.png"))
    (root / "notes.txt").write_text("x")
    (root / "labels.csv").write_text("file_name\n")
    assert [p.as_posix() for p in list_images(root)] == ["a.PNG", "b.png", "sub/c.tif"]
    assert [p.as_posix() for p in list_images(root, recursive=False)] == ["a.PNG", "b.png"]


@pytest.mark.parametrize("kind,match", [("empty", "no images"), ("missing", "not found"), ("file", "not a folder")])
def test_unusable_folders_raise_input_error(tmp_path, kind, match):
    folder = tmp_path / "data"
    if kind == "empty":
        folder.mkdir()
        (folder / "readme.txt").write_text("no images here")
    elif kind == "file":
        folder.write_text("x")
    with pytest.raises(InputError, match=match) as exc:
        scan_folder(folder)
    assert not isinstance(exc.value, ImageError)
    _one_line_naming(exc, folder)


def test_scan_without_labels_treats_each_image_as_its_own_patient(tmp_path, rgb):
    records = scan_folder(_folder(tmp_path, rgb))
    assert [r.file_name for r in records] == ["a.png", "c.jpg", "sub/b.png"]
    assert [r.image_id for r in records] == ["a.png", "c.jpg", "sub/b.png"]
    assert len({r.patient_id for r in records}) == 3
    assert all(r.path.is_absolute() and r.path.is_file() for r in records)


def test_scan_joins_labels(tmp_path, rgb):
    root = _folder(tmp_path, rgb)
    (root / "labels.csv").write_text(
        "\ufefffile_name,image_id,patient_id,dr_grade\n a.png ,A,P1,2\nsub/b.png,B,P1,0\n", encoding="utf-8"
    )
    by_name = {r.file_name: r for r in scan_folder(root)}
    assert by_name["a.png"].image_id == "A" and by_name["a.png"].patient_id == "P1"
    assert by_name["a.png"].labels == {"dr_grade": "2"}
    assert by_name["c.jpg"].patient_id == "?c.jpg"  # not listed: default ids


@pytest.mark.parametrize("text,match", [
    ("image,patient_id\na.png,P1\n", "missing column"),
    ("", "missing column"),
    ("file_name,patient_id\na.png,P1\nmissing.png,P2\nalso-missing.png,P3\n",
     "lists missing image.*also-missing.png, missing.png"),
    ("file_name\na.png\na.png\n", "listed twice"),
    ("file_name,patient_id\n,P1\n", "line 2 has an empty file_name"),
])
def test_bad_labels_raise_input_error_naming_labels_csv(tmp_path, rgb, text, match):
    root = _folder(tmp_path, rgb)
    (root / "labels.csv").write_text(text, encoding="utf-8")
    with pytest.raises(InputError, match=match) as exc:
        scan_folder(root)
    _one_line_naming(exc, root / "labels.csv")


def test_labels_not_utf8(tmp_path, rgb):
    root = _folder(tmp_path, rgb)
    (root / "labels.csv").write_bytes("file_name,patient_id\na.png,Pé\n".encode("latin-1"))
    with pytest.raises(InputError, match="not a UTF-8") as exc:
        read_labels(root / "labels.csv")
    _one_line_naming(exc, root / "labels.csv")


def test_corrupt_image_in_folder_is_found_on_load(tmp_path, rgb):
    root = _folder(tmp_path, rgb)
    (root / "broken.png").write_bytes(_png_bytes(rgb)[:100])
    records = scan_folder(root)  # listing does not decode
    broken = next(r for r in records if r.file_name == "broken.png")
    with pytest.raises(ImageError) as exc:
        load_image(broken.path)
    _one_line_naming(exc, broken.path)


# --- multi-frame files are refused: frame 2 is a hiding place ---------------------------------------------------


def _frames(rgb: np.ndarray) -> list[Image.Image]:
    """A harmless first frame and a 'training image' second frame (different, so no encoder merges them)."""
    return [Image.fromarray(np.zeros_like(rgb)), Image.fromarray(rgb)]


@pytest.mark.parametrize("name,fmt", [("anim.gif", "GIF"), ("anim.webp", "WEBP"), ("anim.png", "PNG"),
                                      ("pages.tif", "TIFF"), ("gif-named.png", "GIF")])
def test_multi_frame_images_are_refused(tmp_path, rgb, name, fmt):
    first, hidden = _frames(rgb)
    path = _save(tmp_path / name, first, fmt, save_all=True, append_images=[hidden])
    with Image.open(path) as im:
        assert im.n_frames == 2  # the file really holds the training image as a second frame
    with pytest.raises(ImageError) as exc:
        load_image(path)
    assert str(exc.value) == f"{path}: multi-frame image (2 frames); only single-frame images are supported"
    with pytest.raises(ImageError, match=r"^upload: multi-frame image \(2 frames\)"):
        decode_image(path.read_bytes(), "upload")


@pytest.mark.parametrize("name,fmt", [("one.gif", "GIF"), ("one.webp", "WEBP"), ("one.png", "PNG"),
                                      ("one.tif", "TIFF")])
def test_single_frame_saved_with_save_all_still_loads(tmp_path, rgb, name, fmt):
    kw = {"lossless": True} if fmt == "WEBP" else {}
    path = _save(tmp_path / name, Image.fromarray(rgb), fmt, save_all=True, **kw)
    img = _check(load_image(path))
    if fmt != "GIF":  # GIF quantises to a palette
        assert np.array_equal(to_uint8(img), rgb)


# --- release folders: links are refused by name before anything is opened -------------------------------------


def test_release_listing_refuses_links(tmp_path, rgb):
    root = _folder(tmp_path, rgb, names=("a.png", "sub/b.png"))
    outside = _folder(tmp_path / "elsewhere", rgb, names=("patient.png",))
    (root / "z.png").symlink_to(outside / "patient.png")
    assert [p.as_posix() for p in list_images(root)] == ["a.png", "sub/b.png", "z.png"]  # training: followed
    with pytest.raises(InputError) as exc:
        list_images(root, follow_links=False)
    assert str(exc.value) == f"{root / 'z.png'}: symbolic link in a release folder; copy the file in instead " \
                             "(links are never followed)"
    (root / "z.png").unlink()
    (root / "sub" / "more").symlink_to(outside, target_is_directory=True)
    with pytest.raises(InputError, match="symbolic link") as exc:
        list_images(root, follow_links=False)
    _one_line_naming(exc, root / "sub" / "more")
    (root / "sub" / "more").unlink()
    (root / ".hidden.png").symlink_to(outside / "patient.png")  # hidden entries are skipped, never opened
    (root / "notes.txt").write_text("x")
    assert [p.as_posix() for p in list_images(root, follow_links=False)] == ["a.png", "sub/b.png"]
    assert [p.as_posix() for p in list_images(root, recursive=False, follow_links=False)] == ["a.png"]


def test_release_listing_of_unusable_folders(tmp_path, rgb):
    for folder, match in ((tmp_path / "missing", "folder not found"), (tmp_path / "x.png", "not a folder")):
        if folder.suffix:
            folder.write_bytes(b"x")
        with pytest.raises(InputError, match=match) as exc:
            list_images(folder, follow_links=False)
        _one_line_naming(exc, folder)
    root = tmp_path / "texts"
    root.mkdir()
    (root / "a.txt").write_text("not an image")
    with pytest.raises(InputError, match="no images"):
        list_images(root, follow_links=False)


def test_walk_folder_reports_kinds_without_following(tmp_path, rgb):
    import os

    root = _folder(tmp_path, rgb, names=("a.png", ".h/b.png"))
    (root / "link").symlink_to(tmp_path, target_is_directory=True)
    (root / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    os.mkfifo(root / "pipe.png")
    assert sorted(walk_folder(root)) == [(".h/b.png", "file"), ("a.png", "file"), ("dangling.png", "link"),
                                         ("link", "link"), ("pipe.png", "other")]
    assert sorted(walk_folder(root, hidden=False)) == [("a.png", "file"), ("dangling.png", "link"),
                                                       ("link", "link"), ("pipe.png", "other")]


@pytest.mark.parametrize("shape", [(17, 23), (17, 23, 1), (17, 23, 2), (17, 23, 3), (17, 23, 4), (1, 1, 3)])
def test_encode_png_is_lossless_for_every_channel_count(shape):
    img = np.random.default_rng(0).random(shape, dtype=np.float32)
    want = to_uint8(img)
    back = np.asarray(Image.open(io.BytesIO(encode_png(img))))
    np.testing.assert_array_equal(back, want[..., 0] if want.ndim == 3 and want.shape[2] == 1 else want)


GOLDEN_PNG_SHA256 = "e629c31c975ac2648927553bcc081e2da67afa088570e59a3884367d8e0670bf"
"""encode_png of the gradient below: one filter and the standard library's zlib give these bytes on any machine
(Pillow's zlib-ng gives bytes that depend on the CPU). A change here changes every phantom's data fingerprint,
and the built-in model's card with it."""


def test_encode_png_gives_the_same_bytes_for_the_same_pixels_on_every_machine():
    import hashlib

    x = np.linspace(0.0, 1.0, 48 * 64 * 3, dtype=np.float32).reshape(48, 64, 3) ** 2
    png = encode_png(x)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and Image.open(io.BytesIO(png)).info == {}
    assert hashlib.sha256(png).hexdigest() == GOLDEN_PNG_SHA256


def test_encode_png_refuses_what_is_not_an_image():
    for shape in [(0, 3, 3), (4, 4, 5), (3,)]:
        with pytest.raises(ValueError, match="cannot encode"):
            encode_png(np.zeros(shape, np.float32))
