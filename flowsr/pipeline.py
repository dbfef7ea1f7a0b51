"""Inference: load a model by directory or bundled name and upscale images (PIL, numpy or tensors).

>>> import flowsr
>>> model = flowsr.load("bicubic")            # or a model directory, or a bundled name
>>> sr = model.upscale(pil_image, steps=4, seed=0)

Images are float in [0, 1] at the API boundary; networks work in [-1, 1] internally.
"""

from __future__ import annotations

import hashlib
import math
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from flowsr import colorfix, samplers
from flowsr import settings as rules
from flowsr.catalog import (  # noqa: F401 (re-exported)
    WEIGHTS_DIR,
    bundled_models,
    default_model,
    model_path,
    start_path,
    weights_sha256,
)
from flowsr.checkpoint import ModelLoadError, load_model_dir
from flowsr.config import START_KINDS, ModelConfig
from flowsr.flow import source, time_grid
from flowsr.io import Image, as_image
from flowsr.ops import imresize
from flowsr.settings import Settings

LUMA = (0.299, 0.587, 0.114)
NOISE_BAND = 64  # HR rows per band of source noise, each band drawn from its own seed
AUTO_TILE = 256  # LR tile side of `flowsr upscale --tile 0` for large inputs ...
AUTO_TILE_ABOVE = 512 * 512  # ... above this many LR pixels
AUTO_TILE_SIDE = 2048  # ... or with a side longer than this
MIN_TILE = 16  # out-of-memory retries halve the tile down to this side
MAX_ROW_BUFFERS = 2 * 1024**3  # bytes the streamed rows of one image may take (see row_buffer_bytes)
Progress = Callable[[int, int], None] | None  # progress(tiles done, tiles in all), see Upscaler.upscale_rows


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda requested but CUDA is not available")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    table = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    if dtype not in table:
        raise ValueError(f"dtype must be auto, fp32, bf16 or fp16, not {dtype!r}")
    return table[dtype]


def image_seed(seed: int, name: str) -> int:
    """Per-image seed from the run seed and the file name, so results do not depend on folder order."""
    name = f"{seed}:{name}".encode("utf-8", "surrogateescape")  # undecodable file names too
    return int.from_bytes(hashlib.sha256(name).digest()[:8], "little") >> 1


class Upscaler:
    """A loaded model. ``config is None`` for the built-in bicubic baseline.

    ``start``: the loaded start network of a flow model whose ``config.start`` is not bicubic (an
    Upscaler of kind sr or regression): the flow starts from ``start.predict(lq)`` instead of ``up(lq)``.
    """

    def __init__(self, net, config: ModelConfig | None, name: str, scale: int = 4,
                 device: str = "auto", dtype: str = "auto", start: Upscaler | None = None):
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.name, self.config, self.start = name, config, start
        if config is not None and (config.start != "bicubic") != (start is not None):
            raise ValueError(f"{name}: config.start is {config.start!r} but "
                             f"{'a' if start is not None else 'no'} start network was given")
        self.scale = config.scale if config else scale
        torch_net = isinstance(net, torch.nn.Module)  # else an ONNX Runtime network (flowsr.onnx_backend)
        self.net = net.to(self.device) if torch_net else net
        self.backend = "torch" if torch_net or net is None else "onnxruntime"
        self.max_tile = 0  # set after a CUDA out-of-memory error: the tile side that fits
        self.max_row_buffers: int | None = MAX_ROW_BUFFERS  # None: no limit (see row_buffer_bytes)
        self.compile_mode = "none"
        if torch_net and self.device.type == "cuda":
            self.net = self.net.to(memory_format=torch.channels_last)

    COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")

    def compile(self, mode: str = "default") -> Upscaler:
        """``torch.compile`` the network (fused kernels; "reduce-overhead" adds CUDA graphs on GPU).

        The first call at each input size compiles (seconds to minutes); later calls at that size are
        fast. ``"none"`` restores the eager network. Returns self.
        """
        if mode not in self.COMPILE_MODES:
            raise ValueError(f"compile mode must be one of {', '.join(self.COMPILE_MODES)}, not {mode!r}")
        if self.start is not None:
            self.start.compile(mode)
        if self.net is None:
            return self
        if self.backend != "torch":
            if mode != "none":
                raise ValueError(f"{self.name} runs on ONNX Runtime: --compile applies to torch models only")
            return self
        eager = getattr(self.net, "_orig_mod", self.net)
        self.net = eager if mode == "none" else torch.compile(eager, mode=None if mode == "default" else mode)
        self.compile_mode = mode
        return self

    # -- settings ------------------------------------------------------------------------------
    def resolve(self, settings: Settings) -> Settings:
        """Fill defaults and check the settings make sense for this model kind (see
        :func:`flowsr.settings.resolve`); raises ValueError."""
        cfg = self.config
        if cfg is None:
            resolved = rules.resolve(settings, "bicubic", self.name)
        else:
            resolved = rules.resolve(settings, cfg.kind, self.name, cfg.default_steps, cfg.default_t,
                                     cfg.default_guidance)
        if settings.color_fix not in colorfix.METHODS:
            raise ValueError(f"color_fix must be one of {', '.join(colorfix.METHODS)}, not {settings.color_fix!r}")
        return resolved

    def nfe(self, settings: Settings) -> int:
        """Network evaluations per image (CFG counts two per step; Heun two per step)."""
        s = self.resolve(settings)
        kind = self.config.kind if self.config else "bicubic"
        if kind == "bicubic":
            return 0
        if kind == "sr":
            return 1
        if kind != "flow":
            return s.steps
        per_step = (2 if s.sampler == "heun" else 1) * (1 if s.guidance == 1.0 else 2)
        return s.steps * per_step

    # -- core ----------------------------------------------------------------------------------
    @torch.no_grad()
    def upscale_tensor(self, lq: torch.Tensor, settings: Settings | None = None, seed: int = 0,
                       tile: int = 0, tile_overlap: int = 16, progress: Progress = None) -> torch.Tensor:
        """Super-resolve ``lq`` (B,3,h,w) float in [0,1] to (B,3,h*scale,w*scale) float in [0,1].

        ``tile > 0`` runs the model on overlapping LR tiles of that side (``tile_overlap`` pixels
        shared, blended with a raised-cosine window); 0 or less: the whole image at once.
        The source noise is drawn on the CPU in bands of rows, each from its own seed (see
        :func:`source_noise`), so results are the same on every device and the noise is exactly the
        same with or without tiling. On CUDA out-of-memory the image is redone with tiles of half
        the size (with a note on stderr). ``progress(done, total)``: see :meth:`upscale_rows`.
        """
        out = None
        for top, rows in self.upscale_rows(lq, settings, seed, tile, tile_overlap, progress):
            if out is None and top == 0 and rows.shape[-2] == lq.shape[-2] * self.scale:
                return rows.to(self.device)  # untiled: one band holds everything
            if out is None:
                out = torch.empty(*rows.shape[:2], lq.shape[-2] * self.scale, lq.shape[-1] * self.scale)
            out[..., top:top + rows.shape[-2], :] = rows
        return out.to(self.device)

    @torch.no_grad()
    def upscale_rows(self, lq: torch.Tensor, settings: Settings | None = None, seed: int = 0,
                     tile: int = 0, tile_overlap: int = 16,
                     progress: Progress = None) -> Iterator[tuple[int, torch.Tensor]]:
        """:meth:`upscale_tensor` as a stream: yields ``(first row, rows)``, finished HR rows
        (B,C,n,W*scale) float32 in [0,1], top to bottom, so a caller can write them out without ever
        holding the whole output. ``lq`` may carry a 4th (alpha) channel, which is upscaled
        bicubically. Memory beyond the input: O(tile * scale * W * scale) when tiled.

        ``progress(done, total)``, if given, is called with ``done = 0`` before the first tile and after
        every tile (one model pass; an untiled image is one tile); an out-of-memory retry starts again at
        0 with the new total. It may raise to stop the work (the exception propagates).
        """
        settings = self.resolve(settings or Settings())
        lq = lq.to(self.device, torch.float32)
        count = [0, 1]  # tiles done, tiles in all

        def run(part: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
            sr = self._run(part[:, :3], noise, settings)
            if part.shape[1] != 3:
                sr = torch.cat([sr, imresize(part[:, 3:], scale=self.scale).clamp(0, 1)], dim=1)
            count[0] += 1
            if progress is not None:
                progress(*count)
            return sr

        height, width = lq.shape[-2:]
        if self.max_tile and (tile <= 0 or tile > self.max_tile) and max(height, width) > self.max_tile:
            tile = self.max_tile  # an earlier image ran out of GPU memory above this size
        need = row_buffer_bytes(height, width, self.scale, tile, lq.shape[0] * lq.shape[1], self._needs_noise)
        if self.max_row_buffers is not None and need > self.max_row_buffers:
            tiled = 0 < tile < max(height, width)
            raise ValueError(f"{width}x{height} is too {'wide' if tiled else 'large'} to stream"
                             f"{'' if tiled else ' untiled'}: its output rows would need about {need / 2**30:.1f} "
                             f"GiB (limit {self.max_row_buffers / 2**30:g} GiB); "
                             f"{'crop it into narrower pieces' if tiled else 'tile it (--tile 0)'}, "
                             "or pass --allow-large to try anyway")
        done = 0  # rows already yielded: a retry recomputes from the top but yields only the rest
        while True:
            noise = _SourceNoise(seed, lq.shape[0], width * self.scale) if self._needs_noise else None
            count[:] = [0, tile_count(height, width, tile, tile_overlap)]
            if progress is not None:
                progress(*count)
            try:
                for top, rows in _tiled_rows(lq, run, self.scale, tile, tile_overlap, noise):
                    if top + rows.shape[-2] > done:
                        yield done, rows[..., done - top:, :]
                        done = top + rows.shape[-2]
                return
            except torch.OutOfMemoryError:
                side = tile if 0 < tile < max(height, width) else max(height, width)
                if side // 2 < MIN_TILE:
                    raise
                tile = self.max_tile = side // 2
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            print(f"note: out of GPU memory; retrying with {tile}-pixel tiles", file=sys.stderr)

    @property
    def start_origin(self) -> str:
        """The SHA-256 of the torch weights of this flow's start network ("" for a bicubic start), also for an
        ONNX export, whose start is recorded by its model.onnx: two models with equal start_origin start their
        flows at the same network (exports before the record: the model.onnx checksum)."""
        if self.config is None or self.config.start == "bicubic":
            return ""
        graph = getattr(self.start.net, "graph", None) if self.start is not None else None
        return (graph or {}).get("weights_sha256") or self.config.start_sha256

    @property
    def _needs_noise(self) -> bool:
        return self.net is not None and self.config.kind not in START_KINDS

    @torch.no_grad()
    def predict(self, lq: torch.Tensor) -> torch.Tensor:
        """One deterministic pass of a one-shot model (bicubic, sr, regression; what a flow may start
        from): lq (B,3,h,w) float in [0,1] on any device -> (B,3,h*scale,w*scale) float32 in [0,1] on
        this model's device. Untiled, no colour fix."""
        if self.config is not None and self.config.kind not in START_KINDS:
            raise ValueError(f"{self.name} ({self.config.kind}) is not a one-pass model; use upscale_tensor")
        return self._run(lq.to(self.device, torch.float32), None, self.resolve(Settings()))

    def _run(self, lq: torch.Tensor, noise: torch.Tensor | None, s: Settings) -> torch.Tensor:
        """One model pass: lq (B,3,h,w) in [0,1] and noise (B,3,H,W) (None: the model takes none)."""
        up = imresize(lq, scale=self.scale).clamp(0, 1)
        if self.net is None:
            return up
        if self.config.kind == "sr":  # a feed-forward SR network: its input is lq itself
            if self.device.type == "cuda":
                lq = lq.contiguous(memory_format=torch.channels_last)
            with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
                result = self.net(lq).float().clamp(0, 1)
            return colorfix.color_fix(result, up, s.color_fix)
        # the image the flow starts from and is conditioned on: up(lq), or the start network's start(lq)
        base = up if self.start is None else self.start.predict(lq)
        multiple = self.net.size_multiple
        height, width = base.shape[-2:]
        pad = (0, -width % multiple, 0, -height % multiple)
        cond = F.pad(base * 2 - 1, pad, mode="reflect" if max(pad) < min(height, width) else "replicate")
        if noise is not None:
            noise = F.pad(noise.to(self.device), pad)
        if self.device.type == "cuda":
            cond = cond.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            out = self._sample(cond, noise, s)
        result = ((out.float()[..., :height, :width] + 1) / 2).clamp(0, 1)
        return colorfix.color_fix(result, up, s.color_fix)

    def _sample(self, cond, noise, s: Settings):
        kind, net = self.config.kind, self.net
        if kind == "regression":
            zeros = torch.zeros(cond.shape[0], device=cond.device)
            return cond + net(cond, zeros, cond)
        x0 = source(cond, self.config.sigma_p, noise)
        if kind == "flow":
            sampler = samplers.heun if s.sampler == "heun" else samplers.euler
            return sampler(net, x0, cond, time_grid(s.steps).to(cond.device), guidance=s.guidance)
        if s.steps == 1:
            ts = torch.tensor([0.0, s.t], device=cond.device)
            return samplers.one_step(net, x0, cond, ts)
        return samplers.mean_flow(net, x0, cond, time_grid(s.steps).to(cond.device))

    # -- user-facing ---------------------------------------------------------------------------
    def upscale_image(self, image: Image, settings: Settings | None = None, seed: int = 0,
                      tile: int = 0, tile_overlap: int = 16) -> Image:
        """Upscale an :class:`flowsr.io.Image`; greyscale stays greyscale, alpha is upscaled bicubically."""
        bands = list(self.upscale_image_rows(image, settings, seed, tile, tile_overlap))
        rgb = torch.cat([rgb for rgb, _ in bands], dim=1)
        alpha = torch.cat([alpha for _, alpha in bands], dim=1) if image.alpha is not None else None
        return Image(rgb=rgb, alpha=alpha, bit_depth=image.bit_depth, mode=image.mode, path=None,
                     notes=list(image.notes), color=image.color)

    def upscale_image_rows(self, image: Image, settings: Settings | None = None, seed: int = 0,
                           tile: int = 0, tile_overlap: int = 16, progress: Progress = None
                           ) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        """:meth:`upscale_image` as a stream of row bands, top to bottom: ``(rgb, alpha)`` with rgb
        (C,n,W) float in [0,1] (C=1 for greyscale input) and alpha (1,n,W) or None; what
        :func:`flowsr.io.write_image_rows` writes. ``progress(done, total)``: see :meth:`upscale_rows`."""
        grey = image.rgb.shape[0] == 1
        rgb = image.rgb.expand(3, -1, -1) if grey else image.rgb
        lq = rgb if image.alpha is None else torch.cat([rgb, image.alpha.to(rgb.dtype)])
        for _, rows in self.upscale_rows(lq[None], settings, seed, tile, tile_overlap, progress):
            rows = rows[0].cpu()
            sr = sum(w * c for w, c in zip(LUMA, rows[:3]))[None] if grey else rows[:3]
            yield sr.clamp(0, 1), (rows[3:].clamp(0, 1) if image.alpha is not None else None)

    def upscale(self, image, steps: int | None = None, t: float | None = None,
                guidance: float | None = None, seed: int = 0, tile: int = 0, tile_overlap: int = 16):
        """Upscale a PIL image, a numpy HWC array (uint8, uint16 or float in [0,1]) or a tensor.

        Returns the same type: PIL → PIL, numpy → numpy (same dtype), tensor (C,H,W) or (B,C,H,W)
        float in [0,1] → tensor float in [0,1].
        """
        settings = Settings(steps=steps, t=t, guidance=guidance)
        if isinstance(image, torch.Tensor) and image.dim() == 4:
            return self.upscale_tensor(image, settings, seed, tile, tile_overlap)
        result = self.upscale_image(as_image(image), settings, seed, tile, tile_overlap)
        if isinstance(image, torch.Tensor):
            return result.rgb if result.alpha is None else torch.cat([result.rgb, result.alpha])
        if isinstance(image, np.ndarray):
            planes = result.rgb if result.alpha is None else torch.cat([result.rgb, result.alpha])
            array = planes.permute(1, 2, 0).numpy()
            if image.ndim == 2:
                array = array[..., 0]
            if image.dtype == np.uint8:
                return (array * 255).round().astype(np.uint8)
            if image.dtype == np.uint16:
                return (array * 65535).round().astype(np.uint16)
            return array.astype(image.dtype)
        from flowsr.io import to_pil

        return to_pil(result)


def tile_count(height: int, width: int, tile: int, overlap: int = 16) -> int:
    """How many model passes (tiles) :meth:`Upscaler.upscale_rows` runs on a ``height`` x ``width`` input."""
    if tile <= 0 or (height <= tile and width <= tile):
        return 1
    overlap = max(0, min(overlap, tile // 2))
    return len(_tile_starts(height, tile, overlap)) * len(_tile_starts(width, tile, overlap))


def _tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    if size <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, size - tile, stride))
    return starts + [size - tile]


def _window(length: int, ramp: int) -> torch.Tensor:
    """1 in the middle, a raised-cosine ramp (never 0) over ``ramp`` samples at both ends."""
    window = torch.ones(length)
    ramp = min(ramp, length // 2)
    if ramp > 0:
        rise = torch.sin(math.pi / 2 * (torch.arange(ramp) + 0.5) / ramp) ** 2
        window[:ramp] = rise
        window[-ramp:] = rise.flip(0)
    return window


def auto_tile(height: int, width: int) -> int:
    """The LR tile side ``flowsr upscale --tile 0`` uses: :data:`AUTO_TILE` for inputs over
    :data:`AUTO_TILE_ABOVE` pixels or with a side over :data:`AUTO_TILE_SIDE`, else 0 (untiled)."""
    return AUTO_TILE if height * width > AUTO_TILE_ABOVE or max(height, width) > AUTO_TILE_SIDE else 0


def row_buffer_bytes(height: int, width: int, scale: int, tile: int, planes: int = 3, noise: bool = True) -> int:
    """About the memory the streamed rows of a (planes, height, width) input take in :meth:`Upscaler.upscale_rows`
    and on their way to the PNG encoder, besides the input and the network's activations: the accumulator
    (one row of tiles high, the full output wide), the finished bands and their copies (float, then
    quantised), and the full-width bands of source noise. It grows with the output width; an image too
    wide for :data:`MAX_ROW_BUFFERS` is refused up front (a 1x8000000 PNG would need about 60 GB)."""
    tiled = tile > 0 and (height > tile or width > tile)
    rows = (min(tile, height) if tiled else height) * scale  # HR rows held at once
    band = min(NOISE_BAND, rows) if tiled else rows  # HR rows handed on at once
    noise_rows = 3 * (math.ceil(rows / NOISE_BAND) + 1) * NOISE_BAND if noise else 0
    return 4 * width * scale * (planes * rows + 6 * planes * band + noise_rows)


def source_noise(seed: int, band: int, batch: int, width: int) -> torch.Tensor:
    """The source noise eps of HR rows ``[band * NOISE_BAND, (band + 1) * NOISE_BAND)``:
    (batch, 3, NOISE_BAND, width) float32 on the CPU, from a generator seeded by (seed, band)."""
    band_seed = int.from_bytes(hashlib.sha256(f"{seed}:{band}".encode()).digest()[:8], "little") >> 1
    return torch.randn(batch, 3, NOISE_BAND, width, generator=torch.Generator().manual_seed(band_seed))


class _SourceNoise:
    """The noise of one output, drawn band by band on demand; bands above the last request are dropped."""

    def __init__(self, seed: int, batch: int, width: int):
        self.seed, self.batch, self.width, self.bands = seed, batch, width, {}

    def block(self, top: int, bottom: int, left: int = 0, right: int | None = None,
              keep: bool = True) -> torch.Tensor:
        """Noise of HR rows [top, bottom) and columns [left, right) (B,3,rows,cols); ``keep``: cache
        the full-width bands for the next call (bands above ``top`` are dropped)."""
        first, last = top // NOISE_BAND, (bottom - 1) // NOISE_BAND
        self.bands = {b: v for b, v in self.bands.items() if b >= first}
        parts = []
        for band in range(first, last + 1):
            part = self.bands.get(band)
            if part is None:
                part = source_noise(self.seed, band, self.batch, self.width)
                if keep:
                    self.bands[band] = part
            parts.append(part[..., left:right])
        return torch.cat(parts, dim=2)[:, :, top - first * NOISE_BAND:bottom - first * NOISE_BAND]


def _tiled_rows(lq, run, scale: int, tile: int, overlap: int, noise: _SourceNoise | None):
    """Yield (first row, finished rows) of ``run`` over ``lq`` (B,C,h,w), top to bottom.

    ``run(part, noise)`` maps an LR part and its HR noise (or None) to HR (B,C',h'*scale,w'*scale).
    Tiles are run one row of tiles at a time into an accumulator one tile high and the full width;
    the blending weight is separable (row sum x column sum), so only 1-D weights are stored. Rows
    no later tile touches are divided by the weight and yielded, at most NOISE_BAND rows at a time.
    """
    height, width = lq.shape[-2:]
    if tile <= 0 or (height <= tile and width <= tile):
        yield 0, run(lq, noise.block(0, height * scale, keep=False) if noise else None)
        return
    overlap = max(0, min(overlap, tile // 2))
    tile_h, tile_w = min(tile, height) * scale, min(tile, width) * scale
    tops, lefts = _tile_starts(height, tile, overlap), _tile_starts(width, tile, overlap)
    window_h, window_w = _window(tile_h, overlap * scale), _window(tile_w, overlap * scale)
    row_sum, col_sum = torch.zeros(height * scale), torch.zeros(width * scale)
    for top in tops:
        row_sum[top * scale:top * scale + tile_h] += window_h
    for left in lefts:
        col_sum[left * scale:left * scale + tile_w] += window_w
    window = window_h[:, None] * window_w[None, :]

    def finished(acc, acc_top, bottom):
        for start in range(acc_top, bottom, NOISE_BAND):
            stop = min(start + NOISE_BAND, bottom)
            weight = row_sum[start:stop, None] * col_sum[None, :]
            yield start, acc[..., start - acc_top:stop - acc_top, :] / weight

    acc, acc_top = None, 0  # acc holds HR rows [acc_top, acc_top + tile_h)
    for top in tops:
        hr_top = top * scale
        if acc is not None:  # rows above this row of tiles are final
            yield from finished(acc, acc_top, hr_top)
            shift, keep = hr_top - acc_top, acc_top + tile_h - hr_top
            for start in range(0, keep, shift):  # move the kept rows up, in blocks that do not overlap
                stop = min(start + shift, keep)
                acc[..., start:stop, :] = acc[..., start + shift:stop + shift, :]
            acc[..., keep:, :] = 0
        acc_top = hr_top
        for left in lefts:
            hr_left = left * scale
            part = lq[..., top:top + tile, left:left + tile]
            tile_noise = noise.block(hr_top, hr_top + tile_h, hr_left, hr_left + tile_w) if noise else None
            sr = run(part, tile_noise).float().cpu()
            if acc is None:
                acc = torch.zeros(sr.shape[0], sr.shape[1], tile_h, width * scale)
            acc[..., hr_left:hr_left + tile_w] += sr * window
    yield from finished(acc, acc_top, acc_top + tile_h)


MAX_START_DEPTH = 3  # a start network may itself start from one, this many levels deep


def load(model: str | Path = "default", device: str = "auto", dtype: str = "auto",
         scale: int | None = None, _depth: int = 0) -> Upscaler:
    """Load ``model``: ``"bicubic"``, ``"default"``, a bundled name (see ``flowsr models``) or a directory
    (``model.safetensors`` runs in torch, ``model.onnx`` from ``flowsr export`` in ONNX Runtime).
    A model with a start network loads it too (``config.start``), checked by scale and checksum.

    Raises :class:`flowsr.checkpoint.ModelLoadError` with a one-line message when it cannot.
    """
    path = model_path(model)
    if path is None:
        return Upscaler(None, None, "bicubic", scale=scale or 4, device=device, dtype=dtype)
    if (path / "model.onnx").is_file():  # exported by flowsr export: runs on ONNX Runtime
        from flowsr.onnx_backend import load_onnx_dir

        if dtype not in ("auto", "fp32"):
            raise ValueError(f"{path}: an ONNX model keeps the precision it was exported with; --dtype does not apply")
        net, config = load_onnx_dir(path, device)
        device, dtype = str(net.device), "fp32"
    else:
        net, config = load_model_dir(path)
    if scale is not None and scale != config.scale:
        raise ModelLoadError(f"{path}: model is trained for x{config.scale}, not x{scale}")
    start = None if config.start == "bicubic" else load_start(path, config, device, dtype, _depth)
    # labelled by the directory the user named (two runs of one preset stay apart in a sweep)
    return Upscaler(net, config, path.resolve().name or config.name, device=device, dtype=dtype, start=start)


def load_start(path: Path | None, config: ModelConfig, device: str = "auto", dtype: str = "auto",
               _depth: int = 0) -> Upscaler:
    """The start network of the model at ``path`` (``config.start``; ``path`` None: a training run's),
    checked: it exists, is a one-pass model (kind sr or regression) of the same scale, and its weights'
    SHA-256 is ``config.start_sha256``. ModelLoadError naming both models otherwise."""
    where = path if path is not None else "this run"
    if _depth >= MAX_START_DEPTH:
        raise ModelLoadError(f"{where}: start networks nested more than {MAX_START_DEPTH} deep")
    directory = start_path(path, config.start)
    start = load(directory, device, dtype, _depth=_depth + 1)
    if start.config is None or start.config.kind not in START_KINDS:
        raise ModelLoadError(f"{where}: its start network {config.start} is a "
                             f"{start.config.kind if start.config else 'bicubic'} model; a start must be "
                             f"one of {', '.join(START_KINDS)}")
    if start.scale != config.scale:
        raise ModelLoadError(f"{where}: x{config.scale} model, but its start network {config.start} is x{start.scale}")
    if config.start_sha256 and weights_sha256(directory) != config.start_sha256:
        raise ModelLoadError(f"{where}: its start network {directory} does not match the one it was trained on "
                             f"(SHA-256 {weights_sha256(directory)[:12]}..., expected {config.start_sha256[:12]}...)")
    return start
