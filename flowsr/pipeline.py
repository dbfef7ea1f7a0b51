"""Inference: load a model by directory or bundled name and upscale images (PIL, numpy or tensors).

>>> import flowsr
>>> model = flowsr.load("bicubic")            # or a model directory, or a bundled name
>>> sr = model.upscale(pil_image, steps=4, seed=0)

Images are float in [0, 1] at the API boundary; networks work in [-1, 1] internally.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from flowsr import samplers
from flowsr.checkpoint import ModelLoadError, load_model_dir
from flowsr.config import ModelConfig
from flowsr.flow import source, time_grid
from flowsr.io import Image, as_image
from flowsr.ops import imresize

WEIGHTS_DIR = Path(__file__).parent / "weights"
LUMA = (0.299, 0.587, 0.114)


def bundled_models() -> dict[str, Path]:
    """Names of the models shipped inside the package -> their directories."""
    if not WEIGHTS_DIR.is_dir():
        return {}
    return {p.name: p for p in sorted(WEIGHTS_DIR.iterdir()) if (p / "config.json").is_file()}


def default_model() -> str:
    """The best bundled one-step model, or ``bicubic`` when none is shipped."""
    names = bundled_models()
    for name in ("oftsr-x4", "meanflow-x4"):  # measured: oftsr-x4 has the better LPIPS and PSNR at 1 NFE
        if name in names:
            return name
    return "bicubic"


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
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little") >> 1


@dataclass
class Settings:
    """Sampling settings; ``None`` fields take the model's defaults."""

    steps: int | None = None
    t: float | None = None
    guidance: float | None = None
    sampler: str | None = None  # euler | heun (flow teachers)


class Upscaler:
    """A loaded model. ``config is None`` for the built-in bicubic baseline."""

    def __init__(self, net, config: ModelConfig | None, name: str, scale: int = 4,
                 device: str = "auto", dtype: str = "auto"):
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.name, self.config = name, config
        self.scale = config.scale if config else scale
        self.net = net.to(self.device) if net is not None else None
        if self.net is not None and self.device.type == "cuda":
            self.net = self.net.to(memory_format=torch.channels_last)

    # -- settings ------------------------------------------------------------------------------
    def resolve(self, settings: Settings) -> Settings:
        """Fill defaults and check the settings make sense for this model kind."""
        kind = self.config.kind if self.config else "bicubic"
        cfg = self.config
        steps = settings.steps if settings.steps is not None else (cfg.default_steps if cfg else 1)
        t = settings.t if settings.t is not None else (cfg.default_t if cfg else 1.0)
        guidance = settings.guidance if settings.guidance is not None else (
            cfg.default_guidance if cfg else 1.0)
        sampler = settings.sampler or ("euler" if kind == "flow" else None)
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if not 0.0 <= t <= 1.0:
            raise ValueError(f"t must be in [0, 1], got {t}")
        if kind in ("bicubic", "regression", "oftsr") and steps != 1:
            raise ValueError(f"{self.name} ({kind}) is a one-step model: steps must be 1, got {steps}")
        if kind == "meanflow" and steps > 1 and t != 1.0:
            raise ValueError("--t (the fidelity knob) applies to one-step sampling; use steps=1")
        if kind == "flow" and settings.t is not None:
            raise ValueError("--t applies to distilled students (oftsr, meanflow), not to a flow teacher")
        if sampler not in (None, "euler", "heun"):
            raise ValueError(f"sampler must be euler or heun, not {sampler!r}")
        if kind not in ("oftsr", "meanflow"):
            t = None  # the knob means nothing here; resolving twice gives the same settings
        return Settings(steps=steps, t=t, guidance=guidance, sampler=sampler)

    def nfe(self, settings: Settings) -> int:
        """Network evaluations per image (CFG counts two per step; Heun two per step)."""
        s = self.resolve(settings)
        kind = self.config.kind if self.config else "bicubic"
        if kind == "bicubic":
            return 0
        if kind != "flow":
            return s.steps
        per_step = (2 if s.sampler == "heun" else 1) * (1 if s.guidance == 1.0 else 2)
        return s.steps * per_step

    # -- core ----------------------------------------------------------------------------------
    @torch.no_grad()
    def upscale_tensor(self, lq: torch.Tensor, settings: Settings | None = None, seed: int = 0,
                       tile: int = 0, tile_overlap: int = 16) -> torch.Tensor:
        """Super-resolve ``lq`` (B,3,h,w) float in [0,1] to (B,3,h*scale,w*scale) float in [0,1].

        The source noise is drawn at full output size from ``seed`` on the CPU, so results are the
        same on every device and (within blending error) with or without tiling.
        """
        settings = self.resolve(settings or Settings())
        lq = lq.to(self.device, torch.float32)
        batch, _, height, width = lq.shape
        generator = torch.Generator().manual_seed(seed)
        noise = torch.randn(batch, 3, height * self.scale, width * self.scale, generator=generator)
        if tile and (height > tile or width > tile):
            return self._tiled(lq, noise, settings, tile, tile_overlap)
        return self._run(lq, noise.to(self.device), settings)

    def _run(self, lq: torch.Tensor, noise: torch.Tensor, s: Settings) -> torch.Tensor:
        up = imresize(lq, scale=self.scale).clamp(0, 1)
        if self.net is None:
            return up
        multiple = self.net.size_multiple
        height, width = up.shape[-2:]
        pad = (0, -width % multiple, 0, -height % multiple)
        cond = F.pad(up * 2 - 1, pad, mode="reflect" if max(pad) < min(height, width) else "replicate")
        noise = F.pad(noise, pad)
        if self.device.type == "cuda":
            cond = cond.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            out = self._sample(cond, noise, s)
        return ((out.float()[..., :height, :width] + 1) / 2).clamp(0, 1)

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

    def _tiled(self, lq, noise, settings, tile: int, overlap: int) -> torch.Tensor:
        """Run on overlapping LR tiles and blend the SR tiles with a smooth (raised-cosine) window."""
        scale, (_, _, height, width) = self.scale, lq.shape
        out = torch.zeros(lq.shape[0], 3, height * scale, width * scale)
        weight = torch.zeros(1, 1, height * scale, width * scale)
        overlap = max(0, min(overlap, tile // 2))
        for top in _tile_starts(height, tile, overlap):
            for left in _tile_starts(width, tile, overlap):
                rows, cols = slice(top, top + tile), slice(left, left + tile)
                hr_rows = slice(top * scale, (top + tile) * scale)
                hr_cols = slice(left * scale, (left + tile) * scale)
                part = lq[..., rows, cols]
                sr = self._run(part, noise[..., hr_rows, hr_cols].to(self.device), settings).cpu()
                window = _window(sr.shape[-2], overlap * scale)[:, None] * _window(
                    sr.shape[-1], overlap * scale)[None, :]
                out[..., hr_rows, hr_cols] += sr * window
                weight[..., hr_rows, hr_cols] += window
        return (out / weight).to(self.device)

    # -- user-facing ---------------------------------------------------------------------------
    def upscale_image(self, image: Image, settings: Settings | None = None, seed: int = 0,
                      tile: int = 0, tile_overlap: int = 16) -> Image:
        """Upscale an :class:`flowsr.io.Image`; greyscale stays greyscale, alpha is upscaled bicubically."""
        rgb = image.rgb.expand(3, -1, -1) if image.rgb.shape[0] == 1 else image.rgb
        sr = self.upscale_tensor(rgb[None], settings, seed, tile, tile_overlap)[0].cpu()
        if image.rgb.shape[0] == 1:
            sr = sum(w * c for w, c in zip(LUMA, sr))[None]
        alpha = None
        if image.alpha is not None:
            alpha = imresize(image.alpha[None].float(), scale=self.scale)[0].clamp(0, 1)
        return Image(rgb=sr.clamp(0, 1), alpha=alpha, bit_depth=image.bit_depth, mode=image.mode,
                     path=None, notes=list(image.notes))

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


def load(model: str | Path = "default", device: str = "auto", dtype: str = "auto",
         scale: int | None = None) -> Upscaler:
    """Load ``model``: ``"bicubic"``, ``"default"``, a bundled name (see ``flowsr models``) or a directory.

    Raises :class:`flowsr.checkpoint.ModelLoadError` with a one-line message when it cannot.
    """
    model = str(model)
    if model == "default":
        model = default_model()
    if model == "bicubic":
        return Upscaler(None, None, "bicubic", scale=scale or 4, device=device, dtype=dtype)
    path = bundled_models().get(model, Path(model))
    if not path.exists():
        names = ", ".join(["bicubic", *bundled_models()])
        raise ModelLoadError(f"{model}: no such model directory or bundled model (bundled: {names})")
    net, config = load_model_dir(path)
    if scale is not None and scale != config.scale:
        raise ModelLoadError(f"{path}: model is trained for x{config.scale}, not x{scale}")
    return Upscaler(net, config, config.name or path.name, device=device, dtype=dtype)
