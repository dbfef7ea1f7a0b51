"""Training data: HR crops with random flips and rotations, read in memory or streamed from disk.

The crops are a pure function of (seed, rank, crop number). Crop number ``n`` of a rank comes from
epoch ``n // N`` over the rank's N images, visited in an order drawn from (seed, rank, epoch), at a
place and orientation drawn from (seed, rank, n). So a run is the same whatever the number of loader
workers, and ``--resume`` restarts the stream at the crop the checkpoint reached: the same crops an
uninterrupted run sees. Under DDP, rank r of W takes images r, r + W, r + 2W, ... of the sorted list.

Two ways to feed the crops, the same crops either way (``data_mode``):

- ``memory``: the rank's images are decoded once into uint8 tensors and cropped in the training
  process; fastest while they fit (``auto`` picks it up to ``data_memory_mb`` of decoded pixels);
- ``stream``: ``DataLoader`` worker processes read and decode each image when its crop is due and
  work ahead of the step (pinned memory on CUDA); memory does not grow with the set.

The fast training path (``fast=true``, issue 21) keeps memory-mode images on the training device instead
and cuts each batch there in one gather (:class:`DeviceCrops`): the same images in the same epoch order,
the places and orientations drawn per batch rather than per crop.

Images are files under a folder, or members of the tar shards ``flowsr shard`` writes (a folder with
``index.json``). The LR image is made from the HR crop on the training device (:func:`make_batch`).
"""

from __future__ import annotations

import functools
import hashlib
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from tqdm import tqdm

from flowsr import shards
from flowsr.io import IMAGE_EXTENSIONS, RGB8_DECODE_BYTES_PER_PIXEL, ImageReadError, read_image, read_rgb8, write_image
from flowsr.ops import imresize

DATA_MODES = ("auto", "memory", "stream")


def find_images(root: str | Path) -> list[Path]:
    """All image files under ``root`` (recursive), sorted."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: training folder does not exist")
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


class Item(NamedTuple):
    """One training image: a file (``length`` -1), or ``length`` bytes at ``offset`` in a tar shard."""

    path: str
    offset: int
    length: int
    height: int
    width: int
    name: str  # for messages: the file, or "shard.tar:member"


def list_items(data: str | Path, min_size: int, rank: int = 0, world: int = 1) -> tuple[list[Item], list[str]]:
    """Rank ``rank`` of ``world``'s share of the images under ``data`` (a folder, or a shard folder),
    those at least ``min_size`` pixels on both sides; and why the others were skipped.

    Sizes come from the shard index or the file headers (nothing is decoded here).
    """
    root = Path(data)
    if (root / shards.INDEX).is_file():
        entries = shards.read_index(root)[rank::world]
        items = [Item(str(root / e["shard"]), e["offset"], e["length"], e["height"], e["width"],
                      f"{root / e['shard']}:{e['name']}") for e in entries]
        skipped = []
    else:
        items, skipped = [], []
        for path in find_images(root)[rank::world]:
            try:
                height, width = shards.image_size(path)
            except ValueError as error:
                skipped.append(str(error))
                continue
            items.append(Item(str(path), 0, -1, height, width, str(path)))
    skipped += [f"{item.name}: smaller than the {min_size}px crop" for item in items
                if min(item.height, item.width) < min_size]
    return [item for item in items if min(item.height, item.width) >= min_size], skipped


def read_item(item: Item, min_size: int = 0) -> torch.Tensor:
    """Decode an :class:`Item` as a uint8 (3,H,W) tensor (grey replicated to RGB); ImageReadError if
    it cannot be read or is smaller than ``min_size``."""
    if item.length < 0:
        rgb = read_rgb8(item.path, name=item.name)  # uint8 straight from Pillow: no float copy of a large image
    else:
        try:
            with open(item.path, "rb") as handle:
                handle.seek(item.offset)
                data = handle.read(item.length)
        except OSError as error:
            raise ImageReadError(f"{item.name}: cannot read shard ({error.strerror or error})") from error
        if len(data) != item.length:
            raise ImageReadError(f"{item.name}: shard is shorter than its index says")
        rgb = read_rgb8(data=data, name=item.name)
    if min(rgb.shape[:2]) < min_size:
        raise ImageReadError(f"{item.name}: smaller than the {min_size}px crop")
    return torch.from_numpy(rgb).permute(2, 0, 1)


def _generator(*key) -> torch.Generator:
    """A CPU generator seeded from ``key`` (e.g. seed, rank, "crop", n) through SHA-256."""
    digest = hashlib.sha256(":".join(map(str, key)).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


@functools.lru_cache(maxsize=4)
def epoch_order(seed: int, rank: int, epoch: int, count: int) -> torch.Tensor:
    """The order a rank's ``count`` images are visited in during ``epoch`` (a permutation; do not modify)."""
    return torch.randperm(count, generator=_generator(seed, rank, "epoch", epoch))


class Crops(torch.utils.data.Dataset):
    """Crop number ``n`` of one rank, ``crops[n]``: (3, crop, crop) uint8, randomly flipped and rotated
    by multiples of 90 degrees (see the module docstring).

    ``images``: the items decoded (memory mode), or None to read each image when its crop is due. An
    image that fails to decode then is reported and replaced by the next one in the epoch's order.
    """

    def __init__(self, items: list[Item], crop: int, seed: int, rank: int = 0,
                 images: list[torch.Tensor] | None = None):
        self.items, self.crop, self.seed, self.rank, self.images = items, crop, seed, rank, images

    def order(self, epoch: int) -> torch.Tensor:
        """The order the rank's images are visited in during ``epoch``."""
        return epoch_order(self.seed, self.rank, epoch, len(self.items))

    def _image(self, epoch: int, slot: int) -> torch.Tensor:
        order = self.order(epoch)
        if self.images is not None:
            return self.images[int(order[slot])]
        for step in range(len(order)):
            item = self.items[int(order[(slot + step) % len(order)])]
            try:
                return read_item(item, self.crop)
            except ImageReadError as error:
                print(f"warning: {error}; using the next image", flush=True)
        raise ImageReadError(f"none of the {len(order)} training images could be read")

    def __getitem__(self, n: int) -> torch.Tensor:
        image = self._image(*divmod(n, len(self.items)))
        generator = _generator(self.seed, self.rank, "crop", n)

        def draw(high: int) -> int:
            return int(torch.randint(high, (1,), generator=generator))

        top = draw(image.shape[1] - self.crop + 1)
        left = draw(image.shape[2] - self.crop + 1)
        patch = image[:, top:top + self.crop, left:left + self.crop]
        if draw(2):
            patch = patch.flip(-1)
        return torch.rot90(patch, draw(4), dims=(1, 2)).contiguous()


def orientation_grids(crop: int) -> torch.Tensor:
    """(8, 2, crop, crop) long: for orientation ``4 flip + k``, the (row, column) of the patch that each pixel
    of ``rot90(patch.flip(-1) if flip else patch, k)`` comes from (Crops' transforms, applied to pixel numbers)."""
    numbers = torch.arange(crop * crop).view(crop, crop)
    grids = [torch.rot90(numbers.flip(-1) if flip else numbers, k) for flip in (0, 1) for k in range(4)]
    return torch.stack([torch.stack([grid // crop, grid % crop]) for grid in grids])


class DeviceCrops:
    """Endless batches (B, C, crop, crop) uint8 cut on ``device`` from ``images`` held there (the fast path).

    ``images``: (C, H, W) uint8 tensors (C = 3, or 6 for HR stacked on its start image), kept in one flat
    buffer on ``device``. The batch from crop number ``n`` holds crops ``n .. n + B - 1``: the images of
    those numbers in :func:`epoch_order` (each image once per epoch, as :class:`Crops`), at places and
    orientations (left-right flip, then rotation by ``k`` quarter turns) drawn from (seed, rank, "batch", n)
    on the host, four numbers a row. So the stream is a pure function of (seed, rank, crop number) and
    ``start`` resumes it at any batch boundary. On the device, a batch is one copy of the B patches (strided
    views of the buffer) and one gather that orients them; nothing waits for the device.
    """

    def __init__(self, images: list[torch.Tensor], crop: int, batch_size: int, seed: int, rank: int = 0,
                 start: int = 0, device: torch.device | str = "cpu"):
        self.crop, self.batch_size, self.seed, self.rank, self.next_crop = crop, batch_size, seed, rank, start
        self.device = torch.device(device)
        self.channels = images[0].shape[0]
        self.sizes = torch.tensor([tuple(image.shape[1:]) for image in images])  # (N, 2): H, W
        lengths = self.channels * self.sizes.prod(1)
        self.offsets = lengths.cumsum(0) - lengths  # where each image starts in the flat buffer
        self.pixels = torch.cat([image.reshape(-1) for image in images]).to(self.device)
        grids = orientation_grids(crop)
        self.orient = (grids[:, 0] * crop + grids[:, 1]).flatten(1).to(self.device)  # (8, crop^2) source pixels

    def __iter__(self) -> Iterator[torch.Tensor]:
        return self

    def __next__(self) -> torch.Tensor:
        batch = self.batch(self.next_crop)
        self.next_crop += self.batch_size
        return batch

    def batch(self, n: int) -> torch.Tensor:
        """The batch of crops ``n .. n + B - 1``."""
        count, crop, channels = len(self.sizes), self.crop, self.channels
        # which image each crop number cuts: its slot in its epoch's order
        numbers = torch.arange(n, n + self.batch_size)
        epochs, slots = numbers // count, numbers % count
        picks = torch.empty_like(numbers)
        for epoch in epochs.unique().tolist():
            rows = epochs == epoch
            picks[rows] = epoch_order(self.seed, self.rank, epoch, count)[slots[rows]]
        # where and how to cut it
        heights, widths = self.sizes[picks].unbind(1)
        generator = _generator(self.seed, self.rank, "batch", n)
        draws = torch.rand(self.batch_size, 4, dtype=torch.float64, generator=generator)
        top = (draws[:, 0] * (heights - crop + 1)).long()
        left = (draws[:, 1] * (widths - crop + 1)).long()
        orientation = 4 * (draws[:, 2] < 0.5).long() + (4 * draws[:, 3]).long()
        # the patches as they lie in their images, then flipped and rotated: one gather within each patch
        corners = (self.offsets[picks] + top * widths + left).tolist()
        patches = torch.stack([self.pixels.as_strided((channels, crop, crop), (h * w, w, 1), corner)
                               for corner, h, w in zip(corners, heights.tolist(), widths.tolist(), strict=True)])
        sources = self.orient[orientation.to(self.device, non_blocking=True)]  # (B, crop^2)
        oriented = patches.flatten(2).gather(2, sources[:, None].expand(-1, channels, -1))
        return oriented.view(-1, channels, crop, crop)


class _From(torch.utils.data.Sampler):
    """Crop numbers ``start, start + 1, ...`` forever."""

    def __init__(self, start: int):
        self.start = start

    def __iter__(self) -> Iterator[int]:
        return itertools.count(self.start)


def start_image(hr: torch.Tensor, scale: int, start_net) -> torch.Tensor:
    """A whole training image's start image: HR (3,H,W) uint8 -> ``start_net(lq)`` (3,H',W') uint8, where
    lq is the MATLAB-bicubic LR of HR cropped to a multiple of ``scale`` (H' = H - H % scale)."""
    hr = hr[:, :hr.shape[1] - hr.shape[1] % scale, :hr.shape[2] - hr.shape[2] % scale]
    lq = bicubic_pair(hr[None].float() / 255, scale)[0]  # on hr's device
    with torch.no_grad():
        return (start_net(lq)[0].clamp(0, 1) * 255).round().to(torch.uint8).cpu()


def cached_start_image(item: Item, hr: torch.Tensor, scale: int, start_net, cache: Path | None) -> torch.Tensor:
    """:func:`start_image`, kept as a PNG in ``cache`` (a folder for one start network), keyed by the
    image's name, size and modification time, so later runs read it instead of running the network."""
    if cache is None:
        return start_image(hr, scale, start_net)
    stat = Path(item.path).stat()
    key = hashlib.sha256(f"{item.name}:{item.offset}:{stat.st_size}:{stat.st_mtime_ns}:x{scale}".encode()).hexdigest()
    path = Path(cache) / f"{key[:32]}.png"
    if path.is_file():
        try:
            return (read_image(path).rgb * 255).round().to(torch.uint8)
        except ImageReadError:
            pass  # a damaged cache file: computed again below
    base = start_image(hr, scale, start_net)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_image(path, base.float() / 255)
    return base


def check_data_memory(data, items: list[Item], mode: str, workers: int) -> None:
    """ValueError (one line) when the data cannot fit in the memory available: in memory mode the decoded
    images, and in every mode the largest image being decoded, in each loader process at once."""
    from flowsr.memory import available_bytes

    available = available_bytes()
    if available is None or not items:
        return
    largest = max(items, key=lambda item: item.height * item.width)
    decoding = RGB8_DECODE_BYTES_PER_PIXEL * largest.height * largest.width * max(workers, 1)
    held = sum(3 * item.height * item.width for item in items) if mode == "memory" else 0
    if held + decoding > available:
        processes = f"in each of {workers} loader processes" if workers > 1 else "at once"
        raise ValueError(f"{data}: the training data needs about {(held + decoding) / 2**30:.2f} GB "
                         f"({held / 2**30:.2f} GB of images in memory, and {largest.name} ({largest.width}x"
                         f"{largest.height}) decoded {processes}), more than the {available / 2**30:.2f} GB "
                         "available; use data_mode=stream, fewer num_workers, or smaller images")


def crop_batches(data: str | Path, crop: int, batch_size: int, seed: int, *, rank: int = 0, world: int = 1,
                 start: int = 0, mode: str = "auto", memory_mb: float = 1024, num_workers: int = 4,
                 pin_memory: bool = False, start_net=None, scale: int = 4,
                 start_cache: Path | None = None, device: torch.device | str | None = None
                 ) -> tuple[Iterator[torch.Tensor], str]:
    """Endless batches (B,3,crop,crop) uint8 of this rank's crops, from crop number ``start`` on, and
    one line saying what is fed and how.

    ``mode``: "memory", "stream", or "auto" (memory while the rank's images take at most
    ``memory_mb`` MB decoded). Streaming decodes in ``num_workers`` DataLoader processes (0: in this
    one). Unusable images are skipped with a warning; none at all is a ValueError.

    ``start_net`` (memory mode only; a frozen start network LR [0,1] -> HR [0,1]): each image's start
    image (:func:`start_image`, from the whole image's bicubic LR) is computed once and stacked under it,
    so the batches are (B,6,crop,crop): HR, then the start image cut at the same place (see
    :func:`make_batch`). The start then costs nothing per step, and sees whole images, as at inference.
    ``start_cache``: a folder keeping the start images between runs (:func:`cached_start_image`).

    ``device`` (the fast path): in memory mode, the images are held on ``device`` and the batches cut
    there (:class:`DeviceCrops`, already on ``device``); None: cut on the host, one crop at a time.
    """
    if mode not in DATA_MODES:
        raise ValueError(f"data_mode must be one of {', '.join(DATA_MODES)}, not {mode!r}")
    items, skipped = list_items(data, crop, rank, world)
    decoded_mb = sum(3 * item.height * item.width for item in items) / 2**20
    chosen = mode if mode != "auto" else ("memory" if decoded_mb <= memory_mb else "stream")
    images = None
    if chosen == "memory":
        images, kept = [], []
        for item in tqdm(items, desc="start images", disable=start_net is None, leave=False):
            try:
                image = read_item(item, crop)
            except ImageReadError as error:
                skipped.append(str(error))
                continue
            if start_net is not None:
                on_device = image if device is None else image.to(device)  # the bicubic LR made there
                base = cached_start_image(item, on_device, scale, start_net, start_cache)
                image = torch.cat([image[:, :base.shape[1], :base.shape[2]], base])
            images.append(image)
            kept.append(item)
        items = kept
    for message in skipped:
        print(f"warning: skipped {message}")
    if not items:
        raise ValueError(f"{data}: no usable training images (need images of at least {crop}px)")
    on_device = chosen == "memory" and device is not None
    how = {"memory": f"in memory{f', cut on {torch.device(device)}' if on_device else ''}",
           "stream": f"streamed by {num_workers} worker process{'es' if num_workers > 1 else ''}"
           if num_workers else "streamed by the training process"}[chosen]
    line = (f"data: {len(items)} images{f' (rank {rank} of {world})' if world > 1 else ''}, "
            f"{decoded_mb:.0f} MB decoded, {how} (data_mode={mode})"
            f"{', with their start images' if start_net is not None and chosen == 'memory' else ''}")
    workers = num_workers if chosen == "stream" else 0
    check_data_memory(data, items, chosen, workers)
    if on_device:
        return DeviceCrops(images, crop, batch_size, seed, rank, start, device), line
    loader = torch.utils.data.DataLoader(
        Crops(items, crop, seed, rank, images), batch_size=batch_size, sampler=_From(start),
        num_workers=workers, pin_memory=pin_memory, prefetch_factor=4 if workers else None,
        generator=torch.Generator())  # its own generator: creating the loader leaves the global RNG alone
    return iter(loader), line


def quantize(image: torch.Tensor) -> torch.Tensor:
    """Round a [0,1] image to 8-bit levels, as a saved LR file would be."""
    return (image.clamp(0, 1) * 255).round() / 255


def bicubic_pair(hr: torch.Tensor, scale: int) -> tuple[torch.Tensor, torch.Tensor]:
    """HR (B,3,H,W) in [0,1] -> (lq (B,3,H/s,W/s), up(lq) (B,3,H,W)), both in [0,1], lq 8-bit rounded."""
    lq = quantize(imresize(hr, scale=1 / scale))
    return lq, imresize(lq, scale=scale).clamp(0, 1)


def make_batch(hr_uint8: torch.Tensor, scale: int, device: torch.device, degrade=None, start=None) -> dict:
    """Build a training batch ``{"gt", "cond"}`` in [-1,1] on ``device`` from uint8 HR crops.

    ``degrade``: optional callable HR [0,1] -> LR [0,1] (e.g. Real-ESRGAN); default MATLAB bicubic.
    ``start``: optional frozen start network, LR (B,3,h,w) [0,1] -> (B,3,h*scale,w*scale) [0,1]: ``cond`` is
    then ``start(lq)`` instead of ``up(lq)`` (PMRF's posterior-mean start).
    """
    hr = hr_uint8.to(device, non_blocking=True).float() / 255
    if hr.shape[1] == 6:  # HR stacked on its cached start image (crop_batches with start_net)
        return {"gt": hr[:, :3] * 2 - 1, "cond": hr[:, 3:] * 2 - 1}
    lq = degrade(hr) if degrade is not None else bicubic_pair(hr, scale)[0]
    with torch.no_grad():
        base = start(lq) if start is not None else imresize(lq, size=hr.shape[-2:]).clamp(0, 1)
    return {"gt": hr * 2 - 1, "cond": base * 2 - 1}


def uint8_hwc(tensor: torch.Tensor) -> np.ndarray:
    """(3,H,W) float [0,1] tensor -> (H,W,3) uint8 array, rounded."""
    return (tensor.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
