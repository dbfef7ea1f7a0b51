"""How much memory upscaling one image takes, estimated from its size before anything runs.

``flowsr serve`` refuses (HTTP 413) a job whose estimate does not fit its memory budget, and takes
smaller tiles when those fit. The estimate follows what the streaming path holds at once
(:meth:`flowsr.pipeline.Upscaler.upscale_image_rows` feeding :func:`flowsr.io.write_image_rows`):

- decoding (:func:`decode_bytes`): the file's bytes, Pillow's pixels and the float32 copies;
- the decoded input, held while it is upscaled (float32 planes, and the RGB + alpha stack);
- the streamed rows (:func:`flowsr.pipeline.row_buffer_bytes`): the accumulator one row of tiles
  high and the full output wide, the cached source-noise bands over it, and the finished bands on
  their way into the PNG encoder;
- one tile through the model: image-sized tensors (resize, padding, noise, sampler state), the
  resize matrices, and the network's activations (:func:`network_bytes`).

Sizes are bytes. Each term over-counts what the code holds; ``tests/test_serve.py::
test_memory_estimate_bounds_the_measured_peak`` checks the total against the peak resident memory
of real runs (with :func:`return_freed_memory`, as the server runs). Keep this module in step with
the tiler when that changes.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import weakref
from functools import lru_cache
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from flowsr.io import TIFF_CHUNK_FLOOR
from flowsr.nets import NetConfig, SRNetConfig, UNet, build_sr_net
from flowsr.pipeline import row_buffer_bytes

FLOAT = 4  # bytes of a float32
DECODE_BYTES_PER_PIXEL = 96  # Pillow's pixels, the float32 array and its channel-first copy (16-bit colour:
# two decodes and uint16 planes too); measured 73 for a 16-bit RGBA PNG read from its bytes
DECODE_FIXED = 16 << 20  # the decoders' own buffers (measured about 1 MB)
IMAGE_COPIES = 12  # tile-sized tensors alive at once in a network pass (resize, pad, noise, source, sampler
# state, output, clamp, blend window), in planes of the padded tile; bicubic holds 4
NET_MARGIN = 1.5  # resident peak / live-tensor peak of a U-Net forward on the CPU, measured <= 1.45
# (convolution working buffers)
NET_FALLBACK_PER_PIXEL = 2048  # bytes per network input pixel when the meta-device count fails
FIXED = 64 << 20  # allocator slack, first-use buffers of the thread pools
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def return_freed_memory() -> bool:
    """Have the C library give buffers over 1 MB back to the system as soon as they are freed.

    glibc otherwise raises its mmap threshold (up to 32 MB) each time such a buffer is freed and keeps
    later ones for reuse, so the resident memory of a long run drifts 50-100 MB above what is alive
    (measured on the 1000x1000 streaming upscale); the estimates here assume it does not. Process-wide;
    ``flowsr serve`` calls it at start. Returns False where it cannot be set (not glibc).
    """
    try:
        return bool(ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, 1 << 20))
    except (OSError, AttributeError, TypeError):
        return False


def decode_bytes(file_bytes: int, pixels: int) -> int:
    """Peak memory of :func:`flowsr.io.read_image` on a file of ``file_bytes`` with ``pixels`` pixels:
    the file's bytes (a decoder may hold them), the pixels and one TIFF strip or tile, which
    :mod:`flowsr.io` bounds by twice the image or :data:`flowsr.io.TIFF_CHUNK_FLOOR`."""
    return file_bytes + DECODE_BYTES_PER_PIXEL * pixels + DECODE_FIXED + TIFF_CHUNK_FLOOR


def upscale_bytes(model, height: int, width: int, channels: int = 3, alpha: bool = False,
                  tile: int = 0) -> int:
    """Peak memory of upscaling a decoded ``height`` x ``width`` image with ``model``
    (a :class:`flowsr.pipeline.Upscaler`) into a streamed PNG.

    ``channels``: 1 (grey) or 3 (colour), plus an ``alpha`` plane; ``tile``: the LR tile side as
    ``upscale_image_rows`` takes it (0 or less: the whole image in one pass). The decoded input is
    counted; decoding is not (see :func:`decode_bytes`).
    """
    planes = 3 + alpha  # what the tiler carries: grey is expanded to RGB
    held = FLOAT * (channels + alpha) * height * width + (FLOAT * planes * height * width if alpha else 0)
    tiled = tile > 0 and (height > tile or width > tile)
    tile_h, tile_w = (min(tile, height), min(tile, width)) if tiled else (height, width)
    rows = row_buffer_bytes(height, width, model.scale, tile, planes, model._needs_noise)
    return held + rows + _pass_bytes(model, tile_h, tile_w, planes) + FIXED


def _pass_bytes(model, height: int, width: int, planes: int) -> int:
    """One LR part of ``height`` x ``width`` through ``model._run``: image-sized tensors, the two resize
    matrices (float64 and float32 copies) and the network's activations."""
    out_h, out_w = height * model.scale, width * model.scale
    multiple = model.net.size_multiple if model.net is not None else 1
    pad_h, pad_w = -(-out_h // multiple) * multiple, -(-out_w // multiple) * multiple
    images = (IMAGE_COPIES if model.net is not None else 4) * FLOAT * planes * pad_h * pad_w
    resize = (8 + FLOAT) * (out_h * height + out_w * width)
    net = 0
    if model.net is not None and model.device.type == "cpu":  # on a GPU the activations are not host memory
        if model.config.kind == "sr":  # a feed-forward SR network runs on the LR part
            net = sr_network_bytes(model.config.sr_net, model.scale, height, width)
        else:
            net = network_bytes(model.config.net, pad_h, pad_w)
    start = 0
    if getattr(model, "start", None) is not None:  # the start network's pass, then its output held as cond
        start = _pass_bytes(model.start, height, width, planes) + FLOAT * planes * out_h * out_w
    return images + resize + net + start


def network_bytes(net_config: NetConfig, height: int, width: int) -> int:
    """Peak memory of one forward of the U-Net of ``net_config`` on a (1,3,height,width) input: the
    bytes of the tensors alive at once, counted on PyTorch's meta device (nothing is allocated or
    computed), times :data:`NET_MARGIN`. Falls back to :data:`NET_FALLBACK_PER_PIXEL` per pixel."""
    key = tuple(dataclasses.asdict(net_config).items())
    return _network_bytes(key, height, width)


@lru_cache(maxsize=256)
def _network_bytes(key: tuple, height: int, width: int) -> int:
    try:
        with torch.device("meta"):
            net = UNet(NetConfig(**dict(key)))
        x = torch.empty(1, net.cfg.image_channels, height, width, device="meta")
        t = torch.zeros(1, device="meta")
        with torch.no_grad(), _LiveBytes() as count:
            net(x, t, x, t)
        return int(NET_MARGIN * count.peak)
    except Exception:  # an operator without a meta kernel: a generous per-pixel figure instead
        return NET_FALLBACK_PER_PIXEL * height * width


def sr_network_bytes(sr_config, scale: int, height: int, width: int) -> int:
    """Peak memory of one forward of a feed-forward SR network (kind sr) on a (1,3,height,width) LR input,
    counted as :func:`network_bytes` counts the U-Net's."""
    key = tuple(dataclasses.asdict(sr_config).items())
    return _sr_network_bytes(key, scale, height, width)


@lru_cache(maxsize=256)
def _sr_network_bytes(key: tuple, scale: int, height: int, width: int) -> int:
    try:
        with torch.device("meta"):
            net = build_sr_net(SRNetConfig(**dict(key)), scale)
        x = torch.empty(1, 3, height, width, device="meta")
        with torch.no_grad(), _LiveBytes() as count:
            net(x)
        return int(NET_MARGIN * count.peak)
    except Exception:  # an operator without a meta kernel: a generous per-pixel figure instead
        return NET_FALLBACK_PER_PIXEL * height * width * scale * scale


class _LiveBytes(TorchDispatchMode):
    """Counts the bytes of the tensors the operators run under it create, until each is freed;
    ``peak`` is the most alive at once. Views and in-place results share memory and are not counted."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0

    def _freed(self, size: int) -> None:
        self.live -= size

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        returns = func._schema.returns
        results = out if isinstance(out, (tuple, list)) else (out,)
        pairs = zip(returns * len(results), results) if len(returns) == 1 else zip(returns, results)
        for spec, tensor in pairs:
            if isinstance(tensor, torch.Tensor) and spec.alias_info is None:
                size = tensor.untyped_storage().nbytes()
                self.live += size
                weakref.finalize(tensor, self._freed, size)
        self.peak = max(self.peak, self.live)
        return out


# -- training --------------------------------------------------------------------------------------

MEANFLOW_FACTOR = 1.5  # MeanFlow's JVP carries tangents beside the activations (measured +10 %)
PARAMETER_COPIES = 6  # weights, gradients, AdamW's two moments, the EMA copy, a teacher's weights


def train_step_bytes(cfg) -> int:
    """Peak memory of one training step of ``cfg`` (a :class:`flowsr.config.TrainConfig`): the activations
    that forward and backward keep for ``batch_size`` crops, counted for one crop on PyTorch's meta device
    times :data:`NET_MARGIN`, a teacher's forward for distillation, and the parameter copies. Measured:
    180 MB for tiny-teacher at batch 64, crop 64 (a step's growth of the peak RSS), estimated 441 MB."""
    per_crop = _train_bytes(tuple(dataclasses.asdict(cfg.net).items()), cfg.crop)
    if cfg.objective in ("oftsr", "meanflow"):
        per_crop += network_bytes(cfg.net, cfg.crop, cfg.crop)
    factor = MEANFLOW_FACTOR if cfg.objective == "meanflow" else 1.0
    return int(NET_MARGIN * factor * cfg.batch_size * per_crop) + PARAMETER_COPIES * FLOAT * _parameters(
        tuple(dataclasses.asdict(cfg.net).items())) + FIXED


@lru_cache(maxsize=64)
def _train_bytes(key: tuple, crop: int) -> int:
    """Live bytes at the peak of one crop's forward and backward through the network of ``key``."""
    try:
        with torch.device("meta"):
            net = UNet(NetConfig(**dict(key)))
        x = torch.empty(1, net.cfg.image_channels, crop, crop, device="meta")
        t = torch.zeros(1, device="meta")
        with _LiveBytes() as count:
            net(x, t, x, t).sum().backward()
        return count.peak
    except Exception:  # an operator without a meta kernel
        return 2 * NET_FALLBACK_PER_PIXEL * crop * crop


@lru_cache(maxsize=64)
def _parameters(key: tuple) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in UNet(NetConfig(**dict(key))).parameters())


def available_bytes() -> int | None:
    """Memory this process may still take (Linux): the system's MemAvailable, capped by the room left in
    its memory cgroup (v1 or v2). None where it cannot be told."""
    room = []
    with contextlib.suppress(OSError, ValueError, StopIteration):
        with open("/proc/meminfo") as meminfo:
            room.append(1024 * int(next(line for line in meminfo if line.startswith("MemAvailable:")).split()[1]))
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, where = line.split(":", 2)
            if controllers == "":  # v2
                limit, usage = f"/sys/fs/cgroup{where}/memory.max", f"/sys/fs/cgroup{where}/memory.current"
            elif "memory" in controllers.split(","):
                limit = f"/sys/fs/cgroup/memory{where}/memory.limit_in_bytes"
                usage = f"/sys/fs/cgroup/memory{where}/memory.usage_in_bytes"
            else:
                continue
            with contextlib.suppress(OSError, ValueError):
                text = Path(limit).read_text().strip()
                if text != "max" and int(text) < 1 << 60:
                    room.append(int(text) - int(Path(usage).read_text()))
    return min(room) if room else None


def check_training(cfg, device) -> None:
    """ValueError (one line) when one training step of ``cfg`` cannot fit in the memory left: the host's
    (:func:`available_bytes`) on the CPU, the GPU's free memory on CUDA."""
    need = train_step_bytes(cfg)
    if device.type == "cuda":
        available, where = torch.cuda.mem_get_info(device)[0], "free on the GPU"
    else:
        available, where = available_bytes(), "available"
    if available is not None and need > available:
        raise ValueError(f"a training step of batch_size={cfg.batch_size} crops of {cfg.crop}px needs about "
                         f"{need / 2**30:.2f} GB of memory, more than the {available / 2**30:.2f} GB {where}; "
                         "lower batch_size or crop")
