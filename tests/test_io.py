"""Image reading/writing: round trips per mode and format, 16-bit exactness, orientation, broken files,
atomic writes and the never-overwrite-an-input rule. All images are generated in tmp_path."""

import io
import os
import struct
import warnings
import zlib

import numpy as np
import PIL.Image
import PIL.ImageOps
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowsr import io as fio
from flowsr.io import (
    IMAGE_EXTENSIONS,
    Image,
    ImageReadError,
    as_image,
    list_images,
    read_image,
    read_image_bytes,
    save_image,
    to_pil,
    write_image,
)

RNG = np.random.default_rng(0)


def _u8(h=5, w=7, c=3):
    return RNG.integers(0, 256, (h, w, c), dtype=np.uint8)


def _u16(h=5, w=7, c=3):
    return RNG.integers(0, 65536, (h, w, c), dtype=np.uint16)


def _chw(a, top):
    return torch.from_numpy(a.transpose(2, 0, 1).astype(np.float32) / top)


def _planes(image: Image, top: int) -> np.ndarray:
    """Image -> (H,W,C) integers, alpha appended."""
    t = image.rgb if image.alpha is None else torch.cat([image.rgb, image.alpha])
    return np.rint(t.permute(1, 2, 0).numpy() * top).astype(np.int64)


def _reference_png16(a, filters=(0, 1, 2, 3, 4), interlace=False) -> bytes:
    """Independent 16-bit PNG encoder using every filter type (and Adam7), byte by byte."""
    h, w, c = a.shape
    bpp = 2 * c

    def paeth(left, up, corner):
        p = left + up - corner
        pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
        return left if pa <= pb and pa <= pc else up if pb <= pc else corner

    def encode(img):
        rows = np.ascontiguousarray(img, dtype=">u2").view(np.uint8).reshape(img.shape[0], -1).astype(int)
        out, prev = bytearray(), np.zeros(rows.shape[1], int)
        for y, row in enumerate(rows):
            kind = filters[y % len(filters)]
            out.append(kind)
            for x, value in enumerate(row):
                left = row[x - bpp] if x >= bpp else 0
                corner = prev[x - bpp] if x >= bpp else 0
                pred = [0, left, prev[x], (left + prev[x]) // 2, paeth(left, prev[x], corner)][kind]
                out.append((value - pred) % 256)
            prev = row
        return bytes(out)

    passes = [(0, 0, 8, 8), (0, 4, 8, 8), (4, 0, 8, 4), (0, 2, 4, 4),  # Adam7 (y0, x0, dy, dx)
              (2, 0, 4, 2), (0, 1, 2, 2), (1, 0, 2, 1)]
    sub_images = [a[y::dy, x::dx] for y, x, dy, dx in passes] if interlace else [a]
    raw = b"".join(encode(s) for s in sub_images if s.size)

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", w, h, 16, {1: 0, 2: 4, 3: 2, 4: 6}[c], 0, 0, int(interlace))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
            + chunk(b"IEND", b""))


# -- round trips -----------------------------------------------------------------------------------
@pytest.mark.parametrize("bit_depth", [8, 16])
@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_png_round_trip_is_exact_and_keeps_mode(tmp_path, channels, bit_depth):
    a = _u8(c=channels) if bit_depth == 8 else _u16(c=channels)
    top = 255 if bit_depth == 8 else 65535
    colour = 1 if channels <= 2 else 3
    alpha = _chw(a, top)[colour:] if channels in (2, 4) else None
    write_image(tmp_path / "x.png", _chw(a, top)[:colour], alpha, bit_depth)
    image = read_image(tmp_path / "x.png")
    assert image.rgb.shape == (colour, 5, 7) and image.rgb.dtype == torch.float32
    assert (image.alpha is not None) == (channels in (2, 4))
    assert image.bit_depth == bit_depth and image.path == tmp_path / "x.png"
    np.testing.assert_array_equal(_planes(image, top), a)


def test_our_16bit_png_is_valid_for_pillow(tmp_path):
    grey, rgb = _u16(c=1), _u16(c=3)
    write_image(tmp_path / "g.png", _chw(grey, 65535), bit_depth=16)
    write_image(tmp_path / "c.png", _chw(rgb, 65535), bit_depth=16)
    with PIL.Image.open(tmp_path / "g.png") as im:
        assert im.mode == "I;16"
        np.testing.assert_array_equal(np.asarray(im), grey[..., 0])
    with PIL.Image.open(tmp_path / "c.png") as im:  # Pillow keeps the high byte of 16-bit colour
        np.testing.assert_array_equal(np.asarray(im), rgb >> 8)


def test_pillow_16bit_grey_png_is_exact(tmp_path):
    a = _u16(c=1)[..., 0]
    PIL.Image.fromarray(a).save(tmp_path / "g.png")
    image = read_image(tmp_path / "g.png")
    assert image.bit_depth == 16 and image.rgb.shape[0] == 1 and image.mode == "I;16"
    np.testing.assert_array_equal(_planes(image, 65535)[..., 0], a)


@pytest.mark.parametrize("interlace", [False, True])
@pytest.mark.parametrize("channels", [2, 3, 4])
def test_16bit_colour_png_all_filters_exact(tmp_path, channels, interlace):
    a = _u16(h=11, w=13, c=channels)
    data = _reference_png16(a, interlace=interlace)
    with PIL.Image.open(io.BytesIO(data)) as im:  # the reference encoder agrees with Pillow's decoder
        np.testing.assert_array_equal(np.asarray(im)[..., [0, 3] if channels == 2 else slice(None)], a >> 8)
    image = read_image_bytes(data, "c.png")
    assert image.bit_depth == 16 and not image.notes
    np.testing.assert_array_equal(_planes(image, 65535), a)


def test_16bit_rgb_colour_key_becomes_alpha():
    a = _u16(c=3)
    a[0, 0] = (1000, 2000, 3000)
    data = _reference_png16(a)
    trns = struct.pack(">HHH", 1000, 2000, 3000)
    chunk = struct.pack(">I", 6) + b"tRNS" + trns + struct.pack(">I", zlib.crc32(b"tRNS" + trns))
    data = data[:33] + chunk + data[33:]  # after the IHDR chunk
    image = read_image_bytes(data, "k.png")
    assert image.alpha is not None and image.alpha[0, 0, 0] == 0 and image.alpha.sum() == 5 * 7 - 1


@pytest.mark.parametrize("ext", [".jpg", ".webp", ".bmp", ".tif", ".tiff", ".JPEG"])
def test_other_formats_round_trip(tmp_path, ext):
    a = np.kron(_u8(h=4, w=4), np.ones((4, 4, 1), np.uint8))  # smooth enough for lossy codecs
    write_image(tmp_path / f"x{ext}", _chw(a, 255))
    image = read_image(tmp_path / f"x{ext}")
    assert image.rgb.shape == (3, 16, 16) and image.alpha is None
    error = np.abs(_planes(image, 255) - a)
    assert error.max() == 0 if ext in (".bmp", ".tif", ".tiff") else error.mean() < 16  # WebP is 4:2:0


def test_alpha_kept_in_webp_and_tiff_dropped_in_jpeg(tmp_path):
    a = _u8(c=4)
    rgb, alpha = _chw(a, 255)[:3], _chw(a, 255)[3:]
    write_image(tmp_path / "x.tif", rgb, alpha)
    np.testing.assert_array_equal(_planes(read_image(tmp_path / "x.tif"), 255), a)
    write_image(tmp_path / "x.webp", rgb, alpha)
    assert read_image(tmp_path / "x.webp").alpha is not None
    with pytest.warns(UserWarning, match="alpha dropped"):
        write_image(tmp_path / "x.jpg", rgb, alpha)
    assert read_image(tmp_path / "x.jpg").alpha is None


def test_16bit_to_jpeg_falls_back_to_8bit_and_grey_tiff_keeps_16(tmp_path):
    a = _u16(c=1)
    with pytest.warns(UserWarning, match="16-bit"):
        write_image(tmp_path / "x.jpg", _chw(a, 65535), bit_depth=16)
    write_image(tmp_path / "x.tif", _chw(a, 65535), bit_depth=16)
    image = read_image(tmp_path / "x.tif")
    assert image.bit_depth == 16
    np.testing.assert_array_equal(_planes(image, 65535), a)


# -- modes -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pillow(tmp_path, orientation):
    a = _u8(h=4, w=6)
    exif = PIL.Image.Exif()
    exif[0x0112] = orientation
    PIL.Image.fromarray(a).save(tmp_path / "o.png", exif=exif)
    image = read_image(tmp_path / "o.png")
    with PIL.Image.open(tmp_path / "o.png") as im:
        expected = np.asarray(PIL.ImageOps.exif_transpose(im))
    np.testing.assert_array_equal(_planes(image, 255), expected)


def test_jpeg_orientation_6_is_rotated_clockwise(tmp_path):
    a = np.zeros((32, 48, 3), np.uint8)
    a[:16, :16] = 255  # white block top-left as stored
    exif = PIL.Image.Exif()
    exif[0x0112] = 6
    PIL.Image.fromarray(a).save(tmp_path / "o.jpg", exif=exif, quality=95)
    rgb = read_image(tmp_path / "o.jpg").rgb
    assert rgb.shape == (3, 48, 32)  # displayed upright: 90 degrees clockwise, so the block is top-right
    assert rgb[:, :16, 16:].mean() > 0.9 and rgb[:, :16, :16].mean() < 0.1


def test_palette_with_and_without_transparency(tmp_path):
    p = PIL.Image.fromarray(RNG.integers(0, 4, (5, 7), dtype=np.uint8), mode="P")
    p.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255, 9, 9, 9])
    p.save(tmp_path / "p.png")
    image = read_image(tmp_path / "p.png")
    assert image.rgb.shape[0] == 3 and image.alpha is None and image.mode == "P"
    p.save(tmp_path / "pt.png", transparency=1)
    image = read_image(tmp_path / "pt.png")
    index = np.asarray(p)
    np.testing.assert_array_equal(image.alpha[0].numpy() == 0, index == 1)


def test_grey_transparency_key_and_bilevel(tmp_path):
    PIL.Image.fromarray(_u8(c=1)[..., 0]).save(tmp_path / "k.png", transparency=0)
    assert read_image(tmp_path / "k.png").alpha is not None
    PIL.Image.new("1", (7, 5), 1).save(tmp_path / "b.png")
    image = read_image(tmp_path / "b.png")
    assert image.rgb.shape == (1, 5, 7) and bool((image.rgb == 1).all())


def test_cmyk_becomes_rgb(tmp_path):
    PIL.Image.new("CMYK", (7, 5), (0, 255, 255, 0)).save(tmp_path / "c.jpg")  # pure red
    image = read_image(tmp_path / "c.jpg")
    assert image.mode == "CMYK" and image.rgb.shape == (3, 5, 7)
    assert torch.allclose(image.rgb.mean((1, 2)), torch.tensor([1.0, 0.0, 0.0]), atol=0.03)


def test_int32_and_float_modes(tmp_path):
    ints = RNG.integers(0, 65536, (5, 7)).astype(np.int32)
    PIL.Image.fromarray(ints).save(tmp_path / "i.tif")
    image = read_image(tmp_path / "i.tif")
    assert image.mode == "I" and image.bit_depth == 16 and not image.notes
    np.testing.assert_array_equal(_planes(image, 65535)[..., 0], ints)

    PIL.Image.fromarray(ints - 100_000).save(tmp_path / "neg.tif")
    image = read_image(tmp_path / "neg.tif")
    assert "rescaled" in image.notes[0] and image.rgb.min() == 0 and image.rgb.max() == 1

    floats = RNG.random((5, 7), dtype=np.float32)
    PIL.Image.fromarray(floats).save(tmp_path / "f.tif")
    image = read_image(tmp_path / "f.tif")
    assert image.mode == "F" and not image.notes
    np.testing.assert_allclose(image.rgb[0].numpy(), floats)

    PIL.Image.fromarray(floats * 1000 - 3).save(tmp_path / "big.tif")
    image = read_image(tmp_path / "big.tif")
    assert image.notes and np.isclose(image.rgb.min(), 0) and np.isclose(image.rgb.max(), 1)


def test_animated_gif_gives_first_frame_with_note(tmp_path):
    frames = [PIL.Image.new("RGB", (7, 5), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:], duration=100)
    image = read_image(tmp_path / "a.gif")
    assert image.notes == ["animated: first frame used"]
    assert torch.allclose(image.rgb.mean((1, 2)), torch.tensor([1.0, 0.0, 0.0]), atol=0.02)


# -- broken files ----------------------------------------------------------------------------------
def _png_bytes(a):
    buffer = io.BytesIO()
    PIL.Image.fromarray(a).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("content, problem", [
    (b"", "empty file"),
    (b"hello, I am text\n", "not an image file"),
    (_png_bytes(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8))[:600], "truncated or corrupt"),
])
def test_broken_files_raise_read_error_naming_the_file(tmp_path, content, problem):
    (tmp_path / "photo.png").write_bytes(content)
    with pytest.raises(ImageReadError, match=problem) as info:
        read_image(tmp_path / "photo.png")
    assert str(info.value).startswith(str(tmp_path / "photo.png") + ": ")
    assert "\n" not in str(info.value)


def test_missing_file_and_folder_raise_read_error(tmp_path):
    with pytest.raises(ImageReadError, match="cannot read file"):
        read_image(tmp_path / "missing.png")
    with pytest.raises(ImageReadError, match="cannot read file"):
        read_image(tmp_path)


def test_pixel_limit(tmp_path, monkeypatch):
    write_image(tmp_path / "x.png", torch.rand(3, 10, 10))
    with pytest.raises(ImageReadError, match="image too large: 100 pixels > limit 99"):
        read_image(tmp_path / "x.png", max_pixels=99)
    assert read_image(tmp_path / "x.png", max_pixels=100).rgb.shape == (3, 10, 10)
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 20)  # Pillow would refuse > 40 pixels
    with pytest.raises(ImageReadError, match="too large"):
        read_image(tmp_path / "x.png", max_pixels=30)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_image(tmp_path / "x.png", max_pixels=None).rgb.shape == (3, 10, 10)
        assert read_image(tmp_path / "x.png").rgb.shape == (3, 10, 10)
    assert PIL.Image.MAX_IMAGE_PIXELS == 20


def _samples() -> list[bytes]:
    out = [_png_bytes(_u8()), _png_bytes(_u16(c=1)[..., 0]), _reference_png16(_u16(c=4), interlace=True)]
    for fmt in ("JPEG", "GIF", "TIFF", "BMP", "WEBP"):
        buffer = io.BytesIO()
        PIL.Image.fromarray(_u8()).save(buffer, fmt)
        out.append(buffer.getvalue())
    return out


SAMPLES = _samples()


def _check_reads_or_raises(data):
    try:
        image = read_image_bytes(data, "fuzz.png")
    except ImageReadError as error:
        assert str(error).startswith("fuzz.png: ") and "\n" not in str(error)
    else:
        assert isinstance(image, Image) and 0 <= float(image.rgb.min()) <= float(image.rgb.max()) <= 1


@settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000))
def test_fuzz_random_bytes(data):
    _check_reads_or_raises(data)


@settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(SAMPLES), st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=8),
       st.integers(0, 10**6))
def test_fuzz_mutated_images(sample, edits, cut):
    data = bytearray(sample)
    for position, value in edits:
        data[position % len(data)] = value
    _check_reads_or_raises(bytes(data[: max(1, cut % (len(data) + 1))]))


# -- atomic writes and input protection -----------------------------------------------------------
def test_failed_write_leaves_target_untouched_and_no_temp_files(tmp_path, monkeypatch):
    target = tmp_path / "out.png"
    target.write_bytes(b"original")

    def fail(*args, **kwargs):
        raise OSError("disk full")

    for name in ("replace", "fsync"):
        with monkeypatch.context() as m:
            m.setattr(fio.os, name, fail)
            with pytest.raises(OSError, match="disk full"):
                write_image(target, torch.rand(3, 4, 4))
        assert target.read_bytes() == b"original"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]


def test_written_file_has_normal_permissions(tmp_path):
    write_image(tmp_path / "x.png", torch.rand(3, 4, 4))
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "x.png").stat().st_mode & 0o777 == 0o666 & ~umask


def test_write_refuses_inputs_and_existing_files(tmp_path):
    source = tmp_path / "in.png"
    write_image(source, torch.rand(3, 4, 4))
    before = source.read_bytes()
    os.link(source, tmp_path / "hardlink.png")
    (tmp_path / "sub").mkdir()
    for target in (source, tmp_path / "sub" / ".." / "in.png", tmp_path / "hardlink.png"):
        with pytest.raises(ValueError, match="refusing to overwrite an input"):
            write_image(target, torch.zeros(3, 4, 4), inputs=[str(source)])
    assert source.read_bytes() == before
    with pytest.raises(FileExistsError):
        write_image(source, torch.zeros(3, 4, 4), overwrite=False)
    with pytest.raises(ValueError, match="unsupported extension"):
        write_image(tmp_path / "x.gif", torch.zeros(3, 4, 4))
    write_image(tmp_path / "new" / "deeper" / "x.png", torch.zeros(1, 4, 4))  # parents created


def test_save_image_preserves_grey_alpha_and_16bit(tmp_path):
    a = _u16(c=2)
    write_image(tmp_path / "in.png", _chw(a, 65535)[:1], _chw(a, 65535)[1:], 16)
    image = read_image(tmp_path / "in.png")
    save_image(tmp_path / "out.png", image, inputs=[tmp_path / "in.png"])
    again = read_image(tmp_path / "out.png")
    assert again.bit_depth == 16 and again.rgb.shape[0] == 1 and again.alpha is not None
    np.testing.assert_array_equal(_planes(again, 65535), a)


# -- listing and Python API conversions ------------------------------------------------------------
def test_list_images(tmp_path):
    for name in ("b.PNG", "a.jpg", "c.txt", ".hidden.png", "d.tiff"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub.png").mkdir()
    assert [p.name for p in list_images(tmp_path)] == ["a.jpg", "b.PNG", "d.tiff"]
    explicit = list_images([tmp_path / "c.txt", str(tmp_path)])
    assert [p.name for p in explicit] == ["c.txt", "a.jpg", "b.PNG", "d.tiff"]
    assert ".png" in IMAGE_EXTENSIONS and ".tif" in IMAGE_EXTENSIONS


def test_as_image_accepts_numpy_torch_pil():
    a = _u8(c=3)
    from_numpy = as_image(a)
    assert from_numpy.bit_depth == 8 and from_numpy.rgb.shape == (3, 5, 7)
    np.testing.assert_array_equal(_planes(from_numpy, 255), a)
    np.testing.assert_array_equal(_planes(as_image(PIL.Image.fromarray(a)), 255), a)
    np.testing.assert_array_equal(_planes(as_image(_chw(a, 255)), 255), a)
    grey16 = as_image(_u16(c=1)[..., 0])
    assert grey16.bit_depth == 16 and grey16.mode == "I;16" and grey16.rgb.shape == (1, 5, 7)
    rgba = as_image(a[..., [0, 1, 2, 0]].astype(np.float32) / 255)
    assert rgba.alpha is not None and rgba.mode == "RGBA"
    assert as_image(rgba) is rgba
    with pytest.raises(ValueError, match=r"\[0,1\]"):
        as_image(a.astype(np.float32))
    with pytest.raises(ValueError):
        as_image(np.zeros((5, 7, 5), np.uint8))


def test_to_pil_modes():
    assert to_pil(torch.rand(3, 5, 7)).mode == "RGB"
    assert to_pil(torch.rand(1, 5, 7), torch.rand(1, 5, 7)).mode == "LA"
    image = as_image(_u16(c=1))
    pil = to_pil(image)
    assert pil.mode == "I;16" and pil.size == (7, 5)
    np.testing.assert_array_equal(np.asarray(pil), _planes(image, 65535)[..., 0])
    with pytest.raises(ValueError):
        Image(torch.rand(2, 5, 7))


def _camera_exif(orientation: int) -> bytes:
    exif = PIL.Image.Exif()
    exif[0x010F] = "FlowCam"  # Make
    exif[0x0112] = orientation
    exif.get_ifd(0x8769)[0x9003] = "2026:01:02 03:04:05"  # DateTimeOriginal, in the Exif sub-IFD
    return exif.tobytes()


@pytest.mark.parametrize("ext", ["png", "jpg", "webp", "tif"])
def test_exif_travels_to_every_format_with_its_orientation_reset(tmp_path, ext):
    source = tmp_path / "cam.jpg"
    PIL.Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 30, 3), np.uint8)).save(
        source, exif=_camera_exif(6))
    image = fio.read_image(source)
    assert image.rgb.shape == (3, 30, 20)  # orientation 6 applied on reading ...
    fio.write_image(tmp_path / f"out.{ext}", image.rgb, color=image.color)
    exif = PIL.Image.open(tmp_path / f"out.{ext}").getexif()
    assert exif.get(0x010F) == "FlowCam" and exif.get_ifd(0x8769).get(0x9003) == "2026:01:02 03:04:05"
    assert exif.get(0x0112) == 1  # ... so it is not applied twice


def test_quality_sets_jpeg_and_webp_compression_and_is_checked(tmp_path):
    rgb = torch.rand(3, 64, 64)
    for ext in ("jpg", "webp"):
        sizes = [fio.write_image(tmp_path / f"q{q}.{ext}", rgb, quality=q).stat().st_size for q in (30, 95)]
        assert sizes[0] < sizes[1]
    with pytest.raises(ValueError, match="quality must be an integer in 1..100"):
        fio.write_image(tmp_path / "bad.jpg", rgb, quality=0)
