"""Shared fixtures: tiny generated images and tiny configs, so tests run in seconds on a CPU."""

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"

TINY_OVERRIDES = [
    "net.channels=16", "net.channel_mult=1,2", "net.num_blocks=1", "net.attention_levels=",
    "crop=32", "batch_size=2", "warmup=2", "log_every=1", "val_images=0", "ckpt_every=3",
]


def make_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A smooth random colour image with some edges (uint8 HWC), like a tiny photo."""
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    planes = []
    for _ in range(3):
        a, b, c = rng.uniform(2, 12, 3)
        plane = np.sin(a * xx + rng.uniform(0, 6)) * np.cos(b * yy) + 0.3 * np.sign(np.sin(c * (xx + yy)))
        planes.append(plane)
    image = np.stack(planes, -1)
    image = (image - image.min()) / (np.ptp(image) + 1e-9)
    return (image * 255).round().astype(np.uint8)


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """Six small RGB PNGs (48-64 px) in a folder."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    folder.mkdir()
    for index in range(6):
        Image.fromarray(make_image(rng, 48 + 4 * index, 64)).save(folder / f"img{index}.png")
    return folder


def tiff_bytes(width: int, height: int, payload: bytes, *, tile: tuple[int, int] | None = None,
               rows_per_strip: int | None = None, compression: int = 8, chunks: int = 1,
               extra: tuple = (), next_ifd: bytes = b"") -> bytes:
    """A little-endian 8-bit RGB TIFF written byte by byte, so its tags may lie: ``payload`` (e.g. one
    deflate stream) is every strip or tile (``chunks`` offsets all pointing at it); ``extra``: more
    (tag, type, count, value-or-offset) entries; ``next_ifd``: a second directory's bytes (its offsets
    relative to the file), appended and linked."""
    body = bytearray(payload)

    def array(fmt: str, values) -> int:  # out-of-line values: their offset in the file
        offset = 8 + len(body)
        body.extend(struct.pack(f"<{len(values)}{fmt}", *values))
        return offset

    bps = array("H", (8, 8, 8))
    offsets = array("I", [8] * chunks) if chunks > 1 else 8
    counts = array("I", [len(payload)] * chunks) if chunks > 1 else len(payload)
    entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 3, bps), (259, 3, 1, compression),
               (262, 3, 1, 2), (277, 3, 1, 3), (284, 3, 1, 1)]
    if tile:
        entries += [(322, 4, 1, tile[0]), (323, 4, 1, tile[1]), (324, 4, chunks, offsets), (325, 4, chunks, counts)]
    else:
        entries += [(273, 4, chunks, offsets), (278, 4, 1, rows_per_strip or height), (279, 4, chunks, counts)]
    entries = sorted(entries + list(extra))
    if len(body) % 2:
        body.append(0)
    ifd = 8 + len(body)
    after = ifd + 2 + 12 * len(entries) + 4
    out = bytearray(b"II*\0" + struct.pack("<I", ifd)) + body + struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        out += struct.pack("<HHIHH" if kind == 3 and count == 1 else "<HHII", tag, kind, count, value,
                           *((0,) if kind == 3 and count == 1 else ()))
    return bytes(out + struct.pack("<I", after if next_ifd else 0) + next_ifd)


def deflate_zeros(size: int) -> bytes:
    """A zlib stream that inflates to ``size`` zero bytes (about 1000 times smaller)."""
    compressor, zeros, parts = zlib.compressobj(9), bytes(1 << 22), []
    while size > 0:
        parts.append(compressor.compress(zeros[:min(size, len(zeros))]))
        size -= len(zeros)
    return b"".join(parts) + compressor.flush()


def poison_loss_at_call(monkeypatch, run_folder: Path, call: int, factor: float) -> dict:
    """Make flowsr.train's loss of the ``call``-th training step (1-based) ``loss * factor`` (NaN or Inf): the
    run's ``checkpoint.safetensors`` as it was at that moment is returned in ``snapshot["checkpoint"]``."""
    import flowsr.train as train_module

    real_build_loss, snapshot = train_module.build_loss, {}

    def build_loss(cfg, teacher=None):
        loss_fn, calls = real_build_loss(cfg, teacher), {"n": 0}

        def poisoned(net, batch):
            loss, logs = loss_fn(net, batch)
            calls["n"] += 1
            if calls["n"] == call:
                snapshot["checkpoint"] = (run_folder / "checkpoint.safetensors").read_bytes()
                return loss * factor, logs
            return loss, logs

        return poisoned

    monkeypatch.setattr(train_module, "build_loss", build_loss)
    return snapshot
