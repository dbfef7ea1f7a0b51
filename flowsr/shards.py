"""Tar shards of training images, for training from shared storage: ``flowsr shard DIR -o SHARDS``.

A shard folder holds plain POSIX tar files (``shard-00000.tar``, ...; any tar tool lists and extracts
them) of the original image bytes, and ``index.json``: for every image, its shard, where its bytes
start in it, how many there are, and its size in pixels. A reader seeks straight to any image, so
training draws crops from the images in any order (no shuffle buffer) and resumes exactly.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import PIL.Image

from flowsr.checkpoint import atomic_write

INDEX = "index.json"
FORMAT = "flowsr-shards-1"
ENTRY_KEYS = ("shard", "name", "offset", "length", "height", "width")


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) from the file's header, without decoding it; ValueError naming the file if unreadable."""
    try:
        with PIL.Image.open(path) as image:
            return image.height, image.width
    except Exception as error:  # Pillow raises many types for files that are not images
        detail = " ".join(str(error).split()) or type(error).__name__
        raise ValueError(f"{path}: not a readable image ({detail})") from None


def write_shards(source: str | Path, out: str | Path, shard_mb: float = 256, say=print) -> tuple[int, list[str]]:
    """Write the images under ``source`` (recursive, sorted) into tar shards of about ``shard_mb`` MB
    each in ``out``, then ``out/index.json``. Each shard and the index are written atomically, the
    index last, so an interrupted run leaves no usable half. Unreadable files are left out. ``say``
    gets one line per shard written.

    Returns (number of images written, one-line messages naming the files left out).
    """
    from flowsr.data import find_images

    source, out = Path(source), Path(out)
    if (out / INDEX).exists():
        raise FileExistsError(f"{out}: already holds shards ({INDEX}); choose another folder")
    entries, errors, pending, pending_bytes, shards = [], [], [], 0, 0

    def flush() -> None:
        nonlocal pending, pending_bytes, shards
        name = f"shard-{shards:05d}.tar"

        def write(tmp: Path) -> None:
            with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
                for path, member, _ in pending:
                    tar.add(path, arcname=member, recursive=False)
            with tarfile.open(tmp) as tar:  # where each member's bytes landed
                for member, (_, _, size) in zip(tar.getmembers(), pending):
                    height, width = size
                    entries.append({"shard": name, "name": member.name, "offset": member.offset_data,
                                    "length": member.size, "height": height, "width": width})

        atomic_write(out / name, write)
        say(f"{name}: {len(pending)} images")
        pending, pending_bytes, shards = [], 0, shards + 1

    out.mkdir(parents=True, exist_ok=True)
    for path in find_images(source):
        try:
            size = image_size(path)
        except ValueError as error:
            errors.append(str(error))
            continue
        pending.append((path.resolve(), path.relative_to(source).as_posix(), size))
        pending_bytes += path.stat().st_size
        if pending_bytes >= shard_mb * 2**20:
            flush()
    if pending:
        flush()
    if not entries:
        raise ValueError(f"{source}: no images to shard")
    index = {"format": FORMAT, "images": entries}
    atomic_write(out / INDEX, lambda p: p.write_text(json.dumps(index) + "\n"))
    return len(entries), errors


def read_index(directory: str | Path) -> list[dict]:
    """The entries of ``directory/index.json`` (keys :data:`ENTRY_KEYS`), checked: ValueError naming
    the file and the problem for anything else, or a shard outside the folder."""
    path = Path(directory) / INDEX
    try:
        index = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: not a readable shard index ({error})") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT or not isinstance(index.get("images"), list):
        raise ValueError(f"{path}: not a {FORMAT} index")
    for entry in index["images"]:
        if not isinstance(entry, dict) or set(entry) != set(ENTRY_KEYS):
            raise ValueError(f"{path}: an entry must have exactly the keys {', '.join(ENTRY_KEYS)}")
        shard = entry["shard"]
        if not isinstance(shard, str) or Path(shard).name != shard or shard in ("", ".", ".."):
            raise ValueError(f"{path}: shard {shard!r} is not a file name in this folder")
        if not all(isinstance(entry[k], int) and entry[k] >= 0 for k in ENTRY_KEYS[2:]):
            raise ValueError(f"{path}: {entry['name']}: offset, length, height and width must be integers >= 0")
    return index["images"]
