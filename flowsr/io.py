"""Image files in and out: decoding with Pillow into float tensors, and atomic writes.

Every image becomes an :class:`Image`: colour (3,H,W) or grey (1,H,W) float32 in [0,1], an optional
alpha plane (1,H,W) in [0,1], and the bit depth to write it back with. Readers raise only
:class:`ImageReadError`, whose one-line message names the file and the problem.

16-bit colour: Pillow (up to 13 at least) has no 16-bit RGB mode; its PNG reader keeps only the high
byte of each 16-bit RGB/RGBA/LA sample. This module recovers the low byte by running Pillow's own
PNG decoder a second time with a little-endian raw mode, so 16-bit colour PNGs are read exactly, and
writes 16-bit PNGs (grey, grey+alpha, RGB, RGBA) with a small encoder of its own; the same
encoder streams large images band by band (:func:`write_image_rows`). Other 16-bit colour
files (TIFF) are read at 8-bit precision, with a note.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import stat
import struct
import tempfile
import threading
import warnings
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import PIL.Image
import torch

try:
    import fcntl
except ImportError:  # Windows: temporary files are not locked, and stale ones are not removed
    fcntl = None

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"})
READ_EXTENSIONS = IMAGE_EXTENSIONS | {".gif"}  # what a folder given to list_images yields
DEFAULT_MAX_PIXELS = 64 * 1024 * 1024  # below Pillow's own decompression-bomb limit (~179 MP)
TEMP_SUFFIX = ".flowsr.tmp"  # temporary files of atomic writes: .<name>.<random>.flowsr.tmp beside <name>

_READ_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF")
_WRITE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP",
                  ".tif": "TIFF", ".tiff": "TIFF", "": "PNG"}
_SAVE_OPTIONS = {"JPEG": {"quality": 95, "subsampling": 0}, "WEBP": {"quality": 95}}
# 16-bit colour PNG raw mode -> (raw mode yielding the low bytes, high-byte bands, low-byte bands)
_PNG16_LOW_BYTES = {"RGB;16B": ("RGB;16L", [0, 1, 2], [0, 1, 2]),
                    "RGBA;16B": ("RGBA;16L", [0, 1, 2, 3], [0, 1, 2, 3]),
                    "LA;16B": ("RGBA", [0, 3], [1, 3])}  # Pillow opens 16-bit LA as RGBA
_PILLOW_LIMIT_LOCK = threading.Lock()
_UMASK = os.umask(0)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK  # permissions of a new file, as open() gives them (temporary files get 0600)


class ImageReadError(Exception):
    """An image file could not be read; the message is one line: ``"<file>: <problem>"``."""


@dataclass(frozen=True)
class ColorInfo:
    """What the pixel values mean, carried from an input to its output unchanged so the colours stay.

    icc_profile: the ICC profile's bytes (PNG iCCP, JPEG/WebP/TIFF ICC), kept only when its colour
    space is that of the pixels ("RGB " for colour, "GRAY" for grey). gamma: PNG gAMA (e.g. 0.45455).
    chromaticity: PNG cHRM, 8 floats (white x, y, red x, y, green x, y, blue x, y). All None: sRGB.
    exif: the source's EXIF block (camera, date, GPS, ...; TIFF bytes with Pillow's ``Exif\\0\\0`` prefix), its
    orientation set to 1 since reading applies it; not about colour, but it travels with the pixels the same way.
    """

    icc_profile: bytes | None = None
    gamma: float | None = None
    chromaticity: tuple[float, ...] | None = None
    exif: bytes | None = None


@dataclass(eq=False)
class Image:
    """A decoded image.

    rgb: float32 (C,H,W) in [0,1], C=3 for colour, C=1 for greyscale.
    alpha: float32 (1,H,W) in [0,1] (1 = opaque), or None.
    bit_depth: 8 or 16, the precision of the source and of what :func:`save_image` writes.
    mode: the source's Pillow mode ("RGB", "L", "P", "I;16", ...). path: the source file, if any.
    notes: what was changed on reading, e.g. "animated: first frame used".
    color: the source's ICC profile / gamma / chromaticities, written back with the image.
    """

    rgb: torch.Tensor = field(repr=False)
    alpha: torch.Tensor | None = field(default=None, repr=False)
    bit_depth: int = 8
    mode: str = "RGB"
    path: Path | None = None
    notes: list[str] = field(default_factory=list)
    color: ColorInfo = field(default_factory=ColorInfo, repr=False)

    def __post_init__(self):
        if self.rgb.dim() != 3 or self.rgb.shape[0] not in (1, 3):
            raise ValueError(f"Image.rgb must be (1,H,W) or (3,H,W), got {tuple(self.rgb.shape)}")
        if self.alpha is not None and tuple(self.alpha.shape) != (1, *self.rgb.shape[1:]):
            raise ValueError(f"Image.alpha must be (1,H,W) = {(1, *self.rgb.shape[1:])}, "
                             f"got {tuple(self.alpha.shape)}")
        if self.bit_depth not in (8, 16):
            raise ValueError(f"Image.bit_depth must be 8 or 16, got {self.bit_depth}")


# -- reading ---------------------------------------------------------------------------------------
def read_image(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS, *,
               name: str | None = None) -> Image:
    """Read PNG, JPEG, WebP, BMP, TIFF (or GIF) into an :class:`Image` (see there for shapes/ranges).

    EXIF orientation is applied. Grey stays (1,H,W); alpha (RGBA, LA, palette transparency) is split
    off; palette and CMYK become RGB. 16-bit files (greyscale, and colour PNG) give values/65535 and
    ``bit_depth=16``. Pillow mode I (32-bit int) is divided by 65535 when its values fit in
    [0, 65535], F (float) is kept when it fits in [0, 1]; otherwise either is rescaled from its
    min..max to [0, 1] with a note. Animated files give their first frame with a note. The ICC
    profile, gamma and chromaticities are kept in ``color``.
    Only a regular file is opened (a FIFO or a device is refused without reading), its size is checked
    against :func:`max_file_bytes` and the header against ``max_pixels`` (None: no limits) before the
    pixels are decoded; the decoder reads the file as it goes, never the whole of it at once.
    Raises ImageReadError (only) for missing, empty, truncated, corrupt, non-image or too large files,
    and for files whose decode would take more memory than their declared size (see
    :func:`_check_tiff_layout`). ``name``: the file's name in messages (default: ``path``).
    """
    path = Path(path)
    name = str(path) if name is None else name
    try:
        handle = _open_regular_file(path)
    except OSError as error:
        raise ImageReadError(f"{name}: cannot read file ({error.strerror or error})") from error
    with handle:
        size = os.fstat(handle.fileno()).st_size
        if size == 0:
            raise ImageReadError(f"{name}: empty file")
        if max_pixels is not None and size > max_file_bytes(max_pixels):
            raise ImageReadError(f"{name}: file too large: {size} bytes > limit {max_file_bytes(max_pixels)} "
                                 f"for an image of at most {max_pixels} pixels (pass --allow-large to override)")
        return _decode(handle, name, max_pixels, path)


_RGB8_MODES = ("1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr")
RGB8_DECODE_BYTES_PER_PIXEL = 10  # read_rgb8's peak: Pillow's pixels (4 bytes) + their copy (3) + decoder buffers
# (measured 609 MB for an 8000x8000 PNG; the float decode of read_image took 2201 MB)


def read_rgb8(path: str | os.PathLike | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS, *,
              data: bytes | None = None, name: str | None = None) -> np.ndarray:
    """A file (``path``) or a file's bytes (``data``) as uint8 RGB (H,W,3), EXIF orientation applied, grey
    replicated, alpha dropped: what training crops are cut from. 8-bit files are converted by Pillow into
    one uint8 array (:data:`RGB8_DECODE_BYTES_PER_PIXEL` a pixel, not the 35 of a float decode);
    16-bit and float files go through :func:`read_image`. Same checks and ImageReadError as
    :func:`read_image`."""
    name = name or str(path)
    if data is None:
        path = Path(path)
        try:
            handle = _open_regular_file(path)
        except OSError as error:
            raise ImageReadError(f"{name}: cannot read file ({error.strerror or error})") from error
        size = os.fstat(handle.fileno()).st_size
    else:
        handle, size = io.BytesIO(data), len(data)
    with handle:
        if size == 0:
            raise ImageReadError(f"{name}: empty file")
        if max_pixels is not None and size > max_file_bytes(max_pixels):
            raise ImageReadError(f"{name}: file too large: {size} bytes > limit {max_file_bytes(max_pixels)}")
        try:
            with _pillow_limit(max_pixels):
                _check_tiff_layout(handle, name, max_pixels)
                im = PIL.Image.open(handle, formats=_READ_FORMATS)
                if max_pixels is not None and im.width * im.height > max_pixels:
                    raise ImageReadError(_too_large(name, im.width * im.height, max_pixels))
                if im.mode in _RGB8_MODES and ";16" not in _rawmode(im):
                    im.load()
                    orientation = _exif_orientation(im, [])
                    rgb = im.convert("RGB") if im.mode != "RGB" else im
                    pixels = np.asarray(rgb)  # a read-only array over a copy of Pillow's pixels
                    del im, rgb  # Pillow's own (4 bytes a pixel) go before the writable copy is made
                    return np.array(_orient(pixels, orientation))
        except ImageReadError:
            raise
        except PIL.UnidentifiedImageError as error:
            raise ImageReadError(f"{name}: not an image file (or not PNG/JPEG/WebP/BMP/TIFF/GIF)") from error
        except PIL.Image.DecompressionBombError as error:
            raise ImageReadError(_too_large(name, "more", max_pixels or 0)) from error
        except Exception as error:
            detail = " ".join(str(error).split()) or type(error).__name__
            raise ImageReadError(f"{name}: truncated or corrupt image ({detail})") from error
        handle.seek(0)
        image = _decode(handle, name, max_pixels, None)  # 16-bit, I, F: the exact reader
    rgb = image.rgb.expand(3, -1, -1) if image.rgb.shape[0] == 1 else image.rgb
    return (rgb * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def max_file_bytes(max_pixels: int) -> int:
    """The largest image file accepted for ``max_pixels``: 8 bytes per pixel (uncompressed 16-bit
    RGBA, the most any supported format needs) plus 64 MiB of metadata (EXIF, ICC profile, text)."""
    return 8 * max_pixels + 64 * 1024 * 1024


_FILE_KINDS = {stat.S_IFDIR: "a folder", stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device",
               stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket"}


def _open_regular_file(path: Path) -> BinaryIO:
    """Open ``path`` for reading if it is a regular file; raise OSError otherwise, without blocking
    (a FIFO is opened non-blocking, so no writer is waited for) and without reading."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = _FILE_KINDS.get(stat.S_IFMT(mode), "not a file")
            raise OSError(f"{kind}, not a regular file")
        os.set_blocking(fd, True)
        return open(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_image_bytes(data: bytes, name: str, max_pixels: int | None = DEFAULT_MAX_PIXELS, *,
                     path: Path | None = None) -> Image:
    """:func:`read_image` for the bytes of a file; ``name`` is used in error messages."""
    if not data:
        raise ImageReadError(f"{name}: empty file")
    return _decode(io.BytesIO(data), name, max_pixels, path)


def _decode(source: BinaryIO, name: str, max_pixels: int | None, path: Path | None) -> Image:
    """Decode the image file open as ``source`` (seekable, at its start); see :func:`read_image`."""
    notes: list[str] = []
    try:
        with _pillow_limit(max_pixels) as caught:
            _check_tiff_layout(source, name, max_pixels)  # before Pillow parses it
            im = PIL.Image.open(source, formats=_READ_FORMATS)
            if max_pixels is not None and im.width * im.height > max_pixels:
                raise ImageReadError(_too_large(name, im.width * im.height, max_pixels))
            if getattr(im, "is_animated", False):  # (n_frames would parse every frame of a TIFF)
                notes.append("animated: first frame used")
            rawmode = _rawmode(im)
            im.load()  # full decode here, so truncation surfaces inside the try
            orientation = _exif_orientation(im, notes)
            array, depth = _pil_array(im, notes)
            if im.format == "PNG" and rawmode in _PNG16_LOW_BYTES:
                array, depth = _png16_colour(source, im, rawmode, notes)
            elif ";16" in rawmode and depth == 8:
                notes.append("16-bit colour read at 8-bit precision (Pillow limitation)")
            array = _orient(array, orientation)
            color = _color_info(im, grey=array.shape[-1] <= 2, notes=notes)
        notes += sorted({"Pillow: " + " ".join(str(w.message).split()) for w in caught})
    except ImageReadError:
        raise
    except PIL.UnidentifiedImageError as error:
        raise ImageReadError(f"{name}: not an image file (or not PNG/JPEG/WebP/BMP/TIFF/GIF)") from error
    except PIL.Image.DecompressionBombError as error:
        pixels = re.search(r"\((\d+) pixels\)", str(error))
        limit = max_pixels if max_pixels is not None else 2 * (PIL.Image.MAX_IMAGE_PIXELS or 0)
        raise ImageReadError(_too_large(name, int(pixels.group(1)) if pixels else "more", limit)) from error
    except Exception as error:  # Pillow raises many types for broken files
        detail = " ".join(str(error).split()) or type(error).__name__
        raise ImageReadError(f"{name}: truncated or corrupt image ({detail})") from error
    return _to_image(array, depth, im.mode, path, notes, color)


# TIFF: what Pillow and libtiff allocate besides the image is one strip or tile (its size from the tags,
# not from the image's) and Python objects for the tags' values; both are checked from the first directory
# before Pillow reads it. Every other format decodes into the declared image size (checked against
# max_pixels) with buffers of a few rows.
_TIFF_TYPE_BYTES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4, 16: 8,
                    17: 8, 18: 8}
_TIFF_INTEGERS = {1: "B", 3: "H", 4: "I", 6: "b", 8: "h", 9: "i", 13: "I", 16: "Q", 17: "q", 18: "Q"}
_TIFF_TEXT_TYPES = (1, 2, 6, 7)  # bytes, ASCII, signed bytes, undefined: kept as bytes, not as numbers
_TIFF_CHUNK_TAGS = (273, 279, 324, 325)  # StripOffsets, StripByteCounts, TileOffsets, TileByteCounts
TIFF_MAX_ENTRIES = 1024  # tags in one directory (real files have a few dozen)
TIFF_MAX_VALUES = 3 * 65536  # numbers in one tag (the colour map of a 16-bit palette), offsets aside
TIFF_CHUNK_FLOOR = 16 << 20  # a strip or tile may always take this much to decode (1024x1024, 16 bytes a pixel)


def _silence_libtiff() -> bool:
    """Make libtiff stop printing its errors on stderr (``tempfile.tif: Using code not yet in table.``, a raw
    line beside flowsr's own): Pillow reports a failed decode as an exception anyway, which becomes the
    file's one-line error. Finds the libtiff Pillow loaded (Linux: /proc/self/maps); False where it cannot."""
    import ctypes

    try:
        with open("/proc/self/maps") as maps:
            library = next(line.split()[-1] for line in maps if "libtiff" in line.rsplit("/", 1)[-1])
        ctypes.CDLL(library).TIFFSetErrorHandler(None)
        return True
    except (OSError, StopIteration, AttributeError):
        return False


_silence_libtiff()


def _check_tiff_layout(source: BinaryIO, name: str, max_pixels: int | None) -> None:
    """Refuse, from the first directory of a TIFF file and before any pixel is read, a layout whose decode
    would take more memory than its declared image: a strip or tile larger than twice the image (or
    :data:`TIFF_CHUNK_FLOOR`), more strip/tile offsets than the image has strips/tiles, a tag of more
    than :data:`TIFF_MAX_VALUES` numbers, or more than :data:`TIFF_MAX_ENTRIES` tags. Other files are
    left alone; ``source`` is returned to its start."""
    start = source.tell()
    try:
        head = source.read(16)
        if head[:4] not in (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+") or len(head) < 8:
            return
        end = "<" if head[:2] == b"II" else ">"
        big = head[2:4] in (b"+\0", b"\0+")
        offset = struct.unpack(end + ("Q" if big else "I"), head[8:16] if big else head[4:8])[0]
        source.seek(offset)
        count_bytes, entry_bytes, inline = (8, 20, 8) if big else (2, 12, 4)
        raw_count = source.read(count_bytes)
        if len(raw_count) < count_bytes:
            return  # Pillow reports the broken file
        (entries,) = struct.unpack(end + ("Q" if big else "H"), raw_count)
        if entries > TIFF_MAX_ENTRIES:
            raise ImageReadError(f"{name}: TIFF directory of {entries} tags (limit {TIFF_MAX_ENTRIES}); refusing it")
        table = source.read(entries * entry_bytes)
        tags: dict[int, tuple[int, int, bytes]] = {}
        for index in range(len(table) // entry_bytes):
            entry = table[index * entry_bytes:(index + 1) * entry_bytes]
            tag, kind, count = struct.unpack(end + ("HHQ" if big else "HHI"), entry[:4 + inline])
            tags[tag] = (kind, count, entry[4 + inline:])
            if kind not in _TIFF_TEXT_TYPES and tag not in _TIFF_CHUNK_TAGS and count > TIFF_MAX_VALUES:
                raise ImageReadError(f"{name}: TIFF tag {tag} holds {count} numbers (limit {TIFF_MAX_VALUES}); "
                                     "refusing it")

        def values(tag: int, default: tuple[int, ...]) -> tuple[int, ...]:
            """The first (up to 64) integer values of ``tag``."""
            if tag not in tags or tags[tag][0] not in _TIFF_INTEGERS:
                return default
            kind, count, field_ = tags[tag]
            size, count = _TIFF_TYPE_BYTES[kind], min(count, 64)
            if size * count <= inline:
                data = field_[:size * count]
            else:
                source.seek(struct.unpack(end + ("Q" if big else "I"), field_)[0])
                data = source.read(size * count)
            count = len(data) // size
            return struct.unpack(f"{end}{count}{_TIFF_INTEGERS[kind]}", data[:count * size]) or default

        width, height = values(256, (0,))[0], values(257, (0,))[0]
        if width <= 0 or height <= 0 or (max_pixels is not None and width * height > max_pixels):
            return  # Pillow refuses it, or the size check does
        samples = max(values(277, (1,))[0], 1)
        bits = max(max(values(258, (1,))), 1)
        planes = samples if values(284, (1,))[0] == 2 else 1
        tiled = 322 in tags or 323 in tags
        if tiled:
            chunk_w, chunk_h = max(values(322, (0,))[0], 1), max(values(323, (0,))[0], 1)
        else:
            chunk_w, chunk_h = width, max(min(values(278, (height,))[0], height), 1)
        chunks = -(-width // chunk_w) * -(-height // chunk_h) * planes
        for tag in _TIFF_CHUNK_TAGS:
            if tag in tags and tags[tag][1] > chunks:
                raise ImageReadError(f"{name}: TIFF lists {tags[tag][1]} {'tiles' if tiled else 'strips'} for an "
                                     f"image of {chunks}; refusing it")
        per_pixel = max(-(-bits * samples // planes // 8), 4)  # libtiff's RGBA path takes 4 bytes a pixel
        chunk_bytes = chunk_w * chunk_h * per_pixel
        limit = max(2 * width * height * max(-(-bits * samples // 8), 4), TIFF_CHUNK_FLOOR)
        if chunk_bytes > limit:
            raise ImageReadError(f"{name}: TIFF {'tile' if tiled else 'strip'} of {chunk_w}x{chunk_h} pixels would "
                                 f"take {chunk_bytes / 2**20:.0f} MiB to decode, more than its {width}x{height} "
                                 f"image allows ({limit / 2**20:.0f} MiB); refusing it")
    except (struct.error, OSError, ValueError, OverflowError):
        return  # unreadable: Pillow reports it
    finally:
        source.seek(start)


def _color_info(im: PIL.Image.Image, grey: bool, notes: list[str]) -> ColorInfo:
    """The ICC profile, gAMA and cHRM of a loaded image; a profile for other pixels than the ones
    read (a CMYK profile of a JPEG converted to RGB) is dropped with a note."""
    profile = im.info.get("icc_profile") or None
    if profile is not None:
        space = bytes(profile[16:20])
        if space != (b"GRAY" if grey else b"RGB "):
            notes.append(f"ICC profile for {space.decode('latin-1').strip() or 'unknown'} pixels dropped "
                         f"(the pixels are read as {'grey' if grey else 'RGB'})")
            profile = None
    gamma = im.info.get("gamma") if im.format == "PNG" else None
    chromaticity = im.info.get("chromaticity") if im.format == "PNG" else None
    return ColorInfo(bytes(profile) if profile else None, float(gamma) if gamma else None,
                     tuple(float(v) for v in chromaticity) if chromaticity else None, _exif_bytes(im, notes))


def _exif_bytes(im: PIL.Image.Image, notes: list[str]) -> bytes | None:
    """The EXIF block of a loaded image with its orientation set to 1 (reading applies it); None when there is
    none or Pillow cannot rewrite it (with a note)."""
    try:
        exif = im.getexif()
        if not len(exif):
            return None
        if 0x0112 in exif:
            exif[0x0112] = 1
        return exif.tobytes()
    except Exception as error:  # a malformed EXIF block must not stop the pixels
        notes.append(f"EXIF not kept ({' '.join(str(error).split()) or type(error).__name__})")
        return None


def _too_large(name: str, pixels: int | str, limit: int) -> str:
    return f"{name}: image too large: {pixels} pixels > limit {limit} (pass --allow-large to override)"


@contextlib.contextmanager
def _pillow_limit(max_pixels: int | None):
    """Collect Pillow's warnings (into the list yielded) instead of printing them, bar its bomb
    warning (we check the size ourselves); lift Pillow's hard limit when ours is looser."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.simplefilter("ignore", PIL.Image.DecompressionBombWarning)
        pillow = PIL.Image.MAX_IMAGE_PIXELS
        if pillow is None or (max_pixels is not None and max_pixels <= 2 * pillow):
            yield caught
            return
        with _PILLOW_LIMIT_LOCK:
            PIL.Image.MAX_IMAGE_PIXELS = None
            try:
                yield caught
            finally:
                PIL.Image.MAX_IMAGE_PIXELS = pillow


def _rawmode(im: PIL.Image.Image) -> str:
    """Raw (file) mode of the first tile of an opened, not yet loaded image; "" if unknown."""
    if not im.tile:
        return ""
    args = im.tile[0][3]
    return args if isinstance(args, str) else str(args[0]) if isinstance(args, tuple) and args else ""


def _pil_array(im: PIL.Image.Image, notes: list[str]) -> tuple[np.ndarray, int]:
    """Loaded PIL image -> (float32 (H,W,C) in [0,1], bit depth); C = 1 grey, 2 grey+alpha, 3 RGB, 4 RGBA."""
    mode = im.mode
    if mode.startswith("I;16"):
        raw = np.asarray(im).astype(np.float32)
        planes = [raw / 65535]
        if isinstance(im.info.get("transparency"), int):
            planes.append((raw != im.info["transparency"]).astype(np.float32))
        return np.stack(planes, axis=-1), 16
    if mode in ("I", "F"):
        values = np.nan_to_num(np.asarray(im, dtype=np.float64))
        lo, hi = (0.0, 65535.0) if mode == "I" else (0.0, 1.0)
        if values.size and (values.min() < lo or values.max() > hi):
            lo, hi = float(values.min()), float(values.max())
            notes.append(f"mode {mode}: values {lo:g}..{hi:g} rescaled to [0,1]")
        return ((values - lo) / max(hi - lo, 1e-12)).astype(np.float32)[..., None], 16
    transparent = "transparency" in im.info
    if mode in ("1", "L"):
        target = "LA" if transparent else "L"
    elif mode in ("LA", "La"):
        target = "LA"
    elif mode in ("P", "PA"):
        palette_alpha = im.palette is not None and im.palette.mode == "RGBA"
        target = "RGBA" if transparent or palette_alpha or mode == "PA" else "RGB"
    elif mode in ("RGBA", "RGBa") or (mode == "RGB" and transparent):
        target = "RGBA"
    else:  # RGB, CMYK, YCbCr, LAB, HSV, RGBX
        target = "RGB"
    array = np.array(im.convert(target) if target != mode else im, dtype=np.float32)
    array /= 255  # in place: a large image is not held twice in float
    return array.reshape(*array.shape[:2], -1), 8


def _png16_colour(source: BinaryIO, im: PIL.Image.Image, rawmode: str, notes: list[str]) -> tuple[np.ndarray, int]:
    """Exact 16-bit colour PNG: decode again with a raw mode that yields the low bytes of each sample."""
    low_mode, high_bands, low_bands = _PNG16_LOW_BYTES[rawmode]
    try:
        source.seek(0)
        low_im = PIL.Image.open(source, formats=["PNG"])
        tile = low_im.tile[0]
        low_im.tile = [tile._replace(args=low_mode) if hasattr(tile, "_replace") else (*tile[:3], low_mode)]
        low_im.load()
        low = np.asarray(low_im)[..., low_bands].astype(np.uint16)
    except Exception:  # the trick relies on Pillow internals; fall back to Pillow's 8 bits
        notes.append("16-bit colour read at 8-bit precision (Pillow limitation)")
        return _pil_array(im, notes)
    raw = np.asarray(im)[..., high_bands].astype(np.uint16) << 8 | low
    planes = raw.astype(np.float32) / 65535
    key = im.info.get("transparency")
    if rawmode == "RGB;16B" and isinstance(key, tuple):  # tRNS colour key
        opaque = (raw != np.array(key, dtype=np.uint16)).any(axis=-1)
        planes = np.concatenate([planes, opaque[..., None].astype(np.float32)], axis=-1)
    return planes, 16


def _exif_orientation(im: PIL.Image.Image, notes: list[str]) -> int:
    try:
        return int(im.getexif().get(0x0112, 1))
    except Exception:
        notes.append("EXIF data unreadable: orientation ignored")
        return 1


def _orient(a: np.ndarray, orientation: int) -> np.ndarray:
    """Apply EXIF orientation 1-8 to an (H,W,C) array, as PIL.ImageOps.exif_transpose does."""
    ops = {2: lambda x: x[:, ::-1],  # mirror
           3: lambda x: x[::-1, ::-1],  # rotate 180
           4: lambda x: x[::-1],  # flip
           5: lambda x: x.transpose(1, 0, 2),  # transpose
           6: lambda x: np.rot90(x, -1),  # rotate 90 clockwise
           7: lambda x: x.transpose(1, 0, 2)[::-1, ::-1],  # transverse
           8: lambda x: np.rot90(x, 1)}  # rotate 90 counter-clockwise
    return ops[orientation](a) if orientation in ops else a


def _to_image(a: np.ndarray, bit_depth: int, mode: str, path: Path | None = None,
              notes: list[str] | None = None, color: ColorInfo | None = None) -> Image:
    """(H,W,C) float in [0,1], C in 1..4 (grey, grey+alpha, RGB, RGBA) -> Image."""
    planes = torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1), dtype=np.float32))
    colour = 1 if planes.shape[0] <= 2 else 3
    alpha = planes[colour:] if planes.shape[0] in (2, 4) else None
    return Image(planes[:colour], alpha, bit_depth, mode, path, list(notes or []), color or ColorInfo())


# -- conversions for the Python API ----------------------------------------------------------------
def from_pil(im: PIL.Image.Image, path: Path | None = None) -> Image:
    """PIL image (any mode) -> :class:`Image`, with the mode rules of :func:`read_image`.

    EXIF orientation is not applied here (call ``PIL.ImageOps.exif_transpose`` first if wanted).
    """
    notes: list[str] = []
    im.load()
    array, depth = _pil_array(im, notes)
    return _to_image(array, depth, im.mode, path, notes, _color_info(im, array.shape[-1] <= 2, notes))


def as_image(x) -> Image:
    """Accept an :class:`Image`, a PIL image, a numpy array or a torch tensor; return an :class:`Image`.

    numpy: (H,W) or (H,W,C), C in 1..4 (grey, grey+alpha, RGB, RGBA); uint8 (0..255, bit_depth 8),
    uint16 (0..65535, bit_depth 16) or float in [0,1] (bit_depth 8).
    torch: (H,W) or (C,H,W), same channel rules; float in [0,1], or uint8.
    Floats outside [0,1] (beyond 1e-3) raise ValueError; values are then clipped to [0,1].
    """
    if isinstance(x, Image):
        return x
    if isinstance(x, PIL.Image.Image):
        return from_pil(x)
    if isinstance(x, torch.Tensor):
        t = x.detach().cpu()
        t = t[None] if t.dim() == 2 else t
        if t.dim() != 3:
            raise ValueError(f"expected a (C,H,W) or (H,W) tensor, got shape {tuple(x.shape)}")
        a = (t.float() if t.dtype == torch.bfloat16 else t).permute(1, 2, 0).numpy()
    elif isinstance(x, np.ndarray):
        a = x[..., None] if x.ndim == 2 else x
        if a.ndim != 3:
            raise ValueError(f"expected an (H,W,C) or (H,W) array, got shape {x.shape}")
    else:
        raise TypeError(f"cannot make an image from {type(x).__name__}")
    if a.shape[-1] not in (1, 2, 3, 4):
        raise ValueError(f"expected 1 to 4 channels (grey, grey+alpha, RGB, RGBA), got {tuple(x.shape)}")
    if a.dtype == np.uint8:
        array, depth = a.astype(np.float32) / 255, 8
    elif a.dtype == np.uint16:
        array, depth = a.astype(np.float32) / 65535, 16
    elif np.issubdtype(a.dtype, np.floating):
        array, depth = np.nan_to_num(a.astype(np.float32)), 8
        if array.size and (array.min() < -1e-3 or array.max() > 1 + 1e-3):
            raise ValueError(f"float image values must lie in [0,1], got {array.min():g}..{array.max():g} "
                             "(divide 0..255 data by 255)")
        array = array.clip(0, 1)
    else:
        raise TypeError(f"unsupported image dtype {a.dtype} (use uint8, uint16 or float in [0,1])")
    mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[array.shape[-1]]
    return _to_image(array, depth, "I;16" if depth == 16 and mode == "L" else mode)


def to_pil(image: Image | torch.Tensor, alpha: torch.Tensor | None = None,
           bit_depth: int = 8) -> PIL.Image.Image:
    """An :class:`Image`, or rgb (C,H,W) float in [0,1] (C=1 or 3) plus optional alpha (1,H,W), -> PIL.

    Modes: L, LA, RGB, RGBA (8-bit), and I;16 for 16-bit grey without alpha. Pillow has no 16-bit
    colour or grey+alpha mode, so those become 8-bit. Values are clipped to [0,1] and rounded.
    An Image's ICC profile goes into ``info["icc_profile"]`` (which Pillow's ``save`` writes).
    """
    profile = image.color.icc_profile if isinstance(image, Image) else None
    if isinstance(image, Image):
        image, alpha, bit_depth = image.rgb, image.alpha, image.bit_depth
    im = _pil_from_hwc(_hwc(image, alpha), bit_depth)
    if profile:
        im.info["icc_profile"] = profile
    return im


def _pil_from_hwc(a: np.ndarray, bit_depth: int) -> PIL.Image.Image:
    """float (H,W,C) in [0,1], C in 1..4 -> PIL L/LA/RGB/RGBA, or I;16 for 16-bit single channel."""
    if bit_depth == 16 and a.shape[-1] == 1:
        return PIL.Image.fromarray(_quantize(a[..., 0], 16))
    u8 = _quantize(a, 8)
    return PIL.Image.fromarray(u8[..., 0] if u8.shape[-1] == 1 else u8)


def _hwc(rgb: torch.Tensor, alpha: torch.Tensor | None) -> np.ndarray:
    """rgb (C,H,W), C=1 or 3, and alpha (1,H,W) or (H,W) or None -> float32 (H,W,C') clipped to [0,1]."""
    rgb = torch.as_tensor(rgb).detach().cpu().float()
    if rgb.dim() != 3 or rgb.shape[0] not in (1, 3):
        raise ValueError(f"rgb must be a (1,H,W) or (3,H,W) tensor, got shape {tuple(rgb.shape)}")
    if alpha is not None:
        alpha = torch.as_tensor(alpha).detach().cpu().float().reshape(1, *rgb.shape[1:])
        rgb = torch.cat([rgb, alpha])
    return torch.nan_to_num(rgb, nan=0.0).clamp_(0, 1).permute(1, 2, 0).numpy()


def _quantize(a: np.ndarray, bit_depth: int) -> np.ndarray:
    """float in [0,1] -> uint8 (0..255) or uint16 (0..65535), rounded to nearest."""
    if bit_depth == 8:
        return (torch.from_numpy(a) * 255).round_().to(torch.uint8).numpy()
    return (torch.from_numpy(a) * 65535).round_().to(torch.int32).numpy().astype(np.uint16)


# -- writing ---------------------------------------------------------------------------------------
def write_image(path: str | os.PathLike, rgb: torch.Tensor, alpha: torch.Tensor | None = None,
                bit_depth: int = 8, *, inputs: Iterable[str | os.PathLike] = (),
                overwrite: bool = True, color: ColorInfo | None = None, quality: int | None = None) -> Path:
    """Write rgb (C,H,W) float in [0,1] (C=1 grey or 3 colour) and optional alpha (1,H,W) in [0,1].

    Values are clipped to [0,1] and rounded to uint8, or uint16 with ``bit_depth=16``. The format
    follows the extension (.png, .jpg/.jpeg at quality 95 with 4:4:4 chroma, .webp at quality 95, .bmp,
    .tif/.tiff; no extension: PNG). 16-bit is written for PNG (any channels) and greyscale TIFF
    without alpha; other targets fall back to 8-bit with a warning. JPEG and BMP cannot hold alpha:
    it is dropped with a warning. Missing parent folders are created. ``color`` (an input's ICC profile,
    gamma and chromaticities, and its EXIF) is written with the pixels: all of it in PNG, the ICC profile and
    EXIF in JPEG, WebP and TIFF (BMP holds neither). ``quality``: JPEG and WebP quality 1..100 (default 95);
    the lossless formats ignore it.

    The write is atomic: a temporary file in the same folder is written, fsynced and renamed over
    ``path``; on any error it is removed and ``path`` is left untouched.
    Raises ValueError when ``path`` is one of ``inputs`` (never overwrite an input) or the extension is
    unsupported, FileExistsError when it exists and ``overwrite`` is False. Returns ``path``.
    """
    path = Path(path)
    fmt = _WRITE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: unsupported extension (use {', '.join(sorted(IMAGE_EXTENSIONS))})")
    _check_target(path, inputs, overwrite, bit_depth)
    a = _hwc(rgb, alpha)
    if alpha is not None and fmt in ("JPEG", "BMP"):
        warnings.warn(f"{path}: {fmt} has no alpha channel; alpha dropped", stacklevel=2)
        a = a[..., :-1]
    if bit_depth == 16 and fmt != "PNG" and not (fmt == "TIFF" and a.shape[-1] == 1):
        warnings.warn(f"{path}: 16-bit output needs PNG (or greyscale TIFF); writing 8-bit", stacklevel=2)
        bit_depth = 8
    if quality is not None and not (isinstance(quality, int) and 1 <= quality <= 100):
        raise ValueError(f"{path}: quality must be an integer in 1..100, not {quality!r}")
    if fmt == "PNG" and (bit_depth == 16 or (color and color != ColorInfo())):
        data = _png_bytes([_quantize(a, bit_depth)], color)
    else:
        im = _pil_from_hwc(a, bit_depth)
        buffer = io.BytesIO()
        options = dict(_SAVE_OPTIONS.get(fmt, {}))
        if quality is not None and "quality" in options:
            options["quality"] = quality
        if color and color.icc_profile:
            options["icc_profile"] = color.icc_profile
        if color and color.exif and fmt in ("JPEG", "WEBP", "TIFF"):
            options["exif"] = color.exif
        im.save(buffer, format=fmt, **options)
        data = buffer.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, data)
    return path


def save_image(path: str | os.PathLike, image, *, inputs: Iterable[str | os.PathLike] = (),
               overwrite: bool = True) -> Path:
    """Write an :class:`Image` (or anything :func:`as_image` accepts) keeping grey/colour, alpha and
    bit depth; see :func:`write_image` for formats, atomicity and the input-protection rule."""
    image = as_image(image)
    return write_image(path, image.rgb, image.alpha, image.bit_depth, inputs=inputs, overwrite=overwrite,
                       color=image.color)


def write_image_rows(path: str | os.PathLike, rows: Iterable[tuple[torch.Tensor, torch.Tensor | None]],
                     bit_depth: int = 8, *, inputs: Iterable[str | os.PathLike] = (),
                     overwrite: bool = True, color: ColorInfo | None = None, quality: int | None = None) -> Path:
    """:func:`write_image` for an image given as row bands, top to bottom: ``(rgb, alpha)`` with rgb
    (C,n,W) float in [0,1] (C=1 or 3) and alpha (1,n,W) or None, e.g. from
    :meth:`flowsr.pipeline.Upscaler.upscale_image_rows`.

    PNG is encoded band by band straight into the temporary file, so memory does not grow with the
    image height; other formats gather the bands first. Same checks and atomicity as :func:`write_image`
    (if ``rows`` raises, nothing is written).
    """
    path = Path(path)
    fmt = _WRITE_FORMATS.get(path.suffix.lower())
    if fmt != "PNG":
        bands = list(rows)
        if not bands:
            raise ValueError(f"{path}: no rows to write")
        alpha = torch.cat([a for _, a in bands], dim=1) if bands[0][1] is not None else None
        return write_image(path, torch.cat([rgb for rgb, _ in bands], dim=1), alpha, bit_depth,
                           inputs=inputs, overwrite=overwrite, color=color, quality=quality)
    _check_target(path, inputs, overwrite, bit_depth)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, lambda handle: _write_png(handle, (_quantize(_hwc(rgb, alpha), bit_depth)
                                                           for rgb, alpha in rows), color))
    return path


def _check_target(path: Path, inputs: Iterable[str | os.PathLike], overwrite: bool, bit_depth: int) -> None:
    for source in inputs:
        if _same_file(path, Path(source)):
            raise ValueError(f"{path}: refusing to overwrite an input file")
    if not overwrite and path.exists():
        raise FileExistsError(f"{path}: already exists")
    if bit_depth not in (8, 16):
        raise ValueError(f"{path}: bit_depth must be 8 or 16, got {bit_depth}")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist
        return a.resolve() == b.resolve()


def _atomic_write(path: Path, data: bytes | Callable[[BinaryIO], None]) -> None:
    """Write ``data`` (bytes, or a function writing to a binary file) to a temporary file next to
    ``path``, fsync, then rename it over ``path``; the new file gets :data:`FILE_MODE`."""
    fd, tmp = temporary_beside(path)
    try:
        with open(fd, "wb") as handle:
            if callable(data):
                data(handle)
            else:
                handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
            os.fchmod(handle.fileno(), FILE_MODE)
            os.replace(tmp, path)  # while still locked: no cleanup can take it for stale
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def temporary_beside(path: Path) -> tuple[int, str]:
    """Create ``.<name>.<random>.flowsr.tmp`` beside ``path``: (open descriptor, its path). The file is
    locked (``flock``) while the descriptor is open, which tells a live write from one a crash left
    behind (:func:`remove_stale_temporaries`)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_EX)
    return fd, tmp


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files of atomic writes (``.<name>.<random>.flowsr.tmp``) that a killed
    process left in ``folder``: those no live process holds locked. Returns the paths removed."""
    folder = Path(folder)
    if fcntl is None or not folder.is_dir():
        return []
    removed = []
    for path in sorted(folder.glob(f".*{TEMP_SUFFIX}")):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            continue
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                continue
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError: being written now
            path.unlink()
            removed.append(path)
        except OSError:
            continue
        finally:
            os.close(fd)
    return removed


def _png_bytes(bands: Iterable[np.ndarray], color: ColorInfo | None = None) -> bytes:
    """PNG file bytes of uint8/uint16 (n,W,C) row bands; see :func:`_write_png`."""
    buffer = io.BytesIO()
    _write_png(buffer, bands, color)
    return buffer.getvalue()


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _write_png(handle: BinaryIO, bands: Iterable[np.ndarray], color: ColorInfo | None = None) -> None:
    """Write a PNG of row bands, top to bottom: uint8 or uint16 (n,W,C), C in 1..4 (grey, grey+alpha,
    RGB, RGBA), to a seekable binary file, with ``color`` as iCCP, gAMA and cHRM chunks. Each band is
    filtered (Sub) and compressed as it comes; the header, which needs the height, is written last
    over a placeholder."""
    start = handle.tell()
    handle.write(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", bytes(13)))
    if color and color.icc_profile:
        handle.write(_png_chunk(b"iCCP", b"ICC Profile\0\0" + zlib.compress(color.icc_profile)))
    if color and color.gamma:
        handle.write(_png_chunk(b"gAMA", struct.pack(">I", round(color.gamma * 100000))))
    if color and color.chromaticity and len(color.chromaticity) == 8:
        handle.write(_png_chunk(b"cHRM", struct.pack(">8I", *(round(v * 100000) for v in color.chromaticity))))
    if color and color.exif:  # eXIf holds the TIFF bytes without the "Exif\0\0" of JPEG's APP1
        handle.write(_png_chunk(b"eXIf", color.exif.removeprefix(b"Exif\x00\x00")))
    compressor, pending, height, shape = zlib.compressobj(6), bytearray(), 0, None
    for band in bands:
        h, w, c = band.shape
        depth = 16 if band.dtype == np.uint16 else 8
        if shape is None:
            shape = (w, c, depth)
        elif shape != (w, c, depth):
            raise ValueError(f"PNG row bands differ: (W, C, bits) {(w, c, depth)} after {shape}")
        rows = np.ascontiguousarray(band, dtype=">u2" if depth == 16 else np.uint8).view(np.uint8)
        rows = rows.reshape(h, -1)
        bpp = c * depth // 8
        filtered = np.empty((h, rows.shape[1] + 1), np.uint8)
        filtered[:, 0] = 1  # filter type Sub: each byte minus the byte one pixel left, mod 256
        filtered[:, 1:bpp + 1] = rows[:, :bpp]
        np.subtract(rows[:, bpp:], rows[:, :-bpp], out=filtered[:, bpp + 1:])
        pending += compressor.compress(filtered)
        height += h
        while len(pending) >= 1 << 20:
            handle.write(_png_chunk(b"IDAT", bytes(pending[:1 << 20])))
            del pending[:1 << 20]
    if shape is None or height == 0 or shape[0] == 0:
        raise ValueError("no pixels to write")
    pending += compressor.flush()
    handle.write(_png_chunk(b"IDAT", bytes(pending)) + _png_chunk(b"IEND", b""))
    end = handle.tell()
    width, channels, depth = shape
    header = struct.pack(">IIBBBBB", width, height, depth, {1: 0, 2: 4, 3: 2, 4: 6}[channels], 0, 0, 0)
    handle.seek(start + 8)
    handle.write(_png_chunk(b"IHDR", header))
    handle.seek(end)


# -- listing ---------------------------------------------------------------------------------------
def list_images(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """Expand files and folders into a list of image paths.

    A folder gives its image files (by extension, :data:`READ_EXTENSIONS`, case-insensitive; hidden
    files skipped), sorted by name, not recursive. A path that is not a folder is kept as given,
    whatever its extension or whether it exists, so that :func:`read_image` reports the problem with it.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found += sorted((p for p in path.iterdir() if p.suffix.lower() in READ_EXTENSIONS
                             and not p.name.startswith(".") and p.is_file()), key=lambda p: p.name)
        else:
            found.append(path)
    return found
