"""Conditional U-Net velocity network for flow-based super-resolution.

The network predicts a velocity ``v(x, t | cond)`` (teacher) or an average velocity
``u(x, t, h | cond)`` over the interval ``[t, t + h]`` (distilled few-step students, MeanFlow-style).

Conventions shared by the whole package:

* images are ``(B, 3, H, W)`` tensors with values roughly in ``[-1, 1]``;
* time ``t`` runs from ``t = 0`` (noisy LR side, the source) to ``t = 1`` (HR side, the target);
* ``cond`` is the clean bicubic-upsampled LR image in ``[-1, 1]``; a dropped condition
  (classifier-free guidance) is passed as zeros: zeros = null condition.

Architecture: DDPM/ADM-style U-Net (Ho et al. 2020; Dhariwal & Nichol 2021) with scale-shift (FiLM)
conditioning on a time embedding. An interval embedding of ``h`` is added to the time embedding by a
separate MLP whose last layer is zero-initialised, so a student initialised from a teacher's weights
reproduces the teacher exactly, and ``h=0`` equals ``h=None`` bit for bit until that layer is trained.

Attention uses plain ``matmul`` + ``softmax`` so that forward-mode AD (``torch.func.jvp``) works on
CPU and CUDA. The module never changes memory format itself: callers may pass channels-last tensors
on CUDA (``torch.func.jvp`` through ``GroupNorm`` on channels-last CPU tensors fails in torch 2.13).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["NetConfig", "UNet", "count_parameters", "timestep_embedding"]


@dataclass
class NetConfig:
    """U-Net hyper-parameters.

    ``channel_mult[i] * channels`` is the width at level ``i``; level ``i`` works at resolution
    ``H / 2**i``. ``attention_levels`` lists the levels with self-attention; if it contains the
    lowest level the middle block also gets attention.
    """

    channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2, 2, 4)
    num_blocks: int = 2
    attention_levels: tuple[int, ...] = (3,)
    dropout: float = 0.0
    image_channels: int = 3
    patch: int = 1  # pixel-unshuffle factor at the stem (2: the U-Net works at half resolution)
    norm: str = "channel"  # "channel": per-pixel LayerNorm over channels (local: tiles match the
    # whole image); "group": GroupNorm (ADM), whose statistics span the whole image
    prediction: str = "velocity"  # "endpoint": the network predicts the HR image as a residual on cond,
    # x1_hat = cond + F, and returns v = (x1_hat - x) / max(1 - t, 0.05): the noise of the source is then
    # removed by construction (fast to train); "velocity": it returns v directly
    linear_skip: bool = False  # a zero-initialised 1x1 conv from the (unshuffled) input to the output:
    # lets a narrow, patchified network pass per-pixel information (the source noise) straight through
    time_scale: float = 1000.0  # t and h are embedded as sin/cos of time_scale * t. 1000 (DDPM's) makes
    # d(emb)/dt ~ 1000: a MeanFlow JVP then differentiates embedding wiggle; 1 (raw t and h, as
    # py-meanflow) keeps du/dt of the order of the velocity. 1000 is the default only so that models
    # saved before this field existed load unchanged; every preset sets 1.

    def __post_init__(self) -> None:
        self.channel_mult = tuple(int(m) for m in self.channel_mult)
        self.attention_levels = tuple(int(a) for a in self.attention_levels)
        if not self.channel_mult:
            raise ValueError("channel_mult must have at least one level")
        if self.prediction not in ("velocity", "endpoint"):
            raise ValueError(f"prediction must be 'velocity' or 'endpoint', not {self.prediction!r}")
        if self.norm not in ("channel", "group"):
            raise ValueError(f"norm must be 'channel' or 'group', not {self.norm!r}")
        if self.patch < 1:
            raise ValueError(f"patch must be >= 1, got {self.patch}")
        if not (math.isfinite(self.time_scale) and 0 < self.time_scale <= 1e4):
            raise ValueError(f"time_scale must be in (0, 1e4], got {self.time_scale}")
        bad = [a for a in self.attention_levels if not 0 <= a < len(self.channel_mult)]
        if bad:
            raise ValueError(f"attention_levels {bad} out of range for {len(self.channel_mult)} levels")


def count_parameters(net: nn.Module) -> int:
    """Total number of parameters of ``net``."""
    return sum(p.numel() for p in net.parameters())


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0, scale: float = 1000.0) -> Tensor:
    """Sinusoidal features of ``scale * t``: ``(B,)`` -> ``(B, dim)`` as ``[cos, sin]``.

    Frequencies ``max_period ** (-k / (dim // 2))`` lie in ``(1 / max_period, 1]``, so
    ``|d emb / dt| <= scale``.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=t.dtype, device=t.device) / half)
    args = (scale * t)[:, None] * freqs[None, :]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=1)
    return emb


# Forward-mode derivatives with constant weights. MeanFlow's JVP (flowsr.objectives.dudt) differentiates the
# network along (x, t) only; torch's own rules for convolution and linear layers also apply a materialised
# zero weight tangent (one more convolution per layer) and its layer norm rule is a slow composite. The
# three layers below give the tangent directly when the input carries one and the weights do not; any other
# call (no forward-mode AD, or weights with tangents) takes torch's path. On the tiny preset this makes the
# JVP about 40 % faster on the CPU (fp32, 2 threads); the tangents equal torch's within float rounding.
def _input_tangent(x: Tensor, weight: Tensor) -> tuple[Tensor, Tensor] | None:
    """``(primal, tangent)`` of ``x`` if it carries a forward-mode tangent and ``weight`` does not, else None."""
    primal, tangent = fwAD.unpack_dual(x)
    if tangent is None or fwAD.unpack_dual(weight).tangent is not None:
        return None
    return primal, tangent


class Conv2d(nn.Conv2d):
    """``nn.Conv2d``; forward mode: the tangent is the convolution of the input's tangent (no bias)."""

    def forward(self, x: Tensor) -> Tensor:
        dual = _input_tangent(x, self.weight)
        if dual is None:
            return super().forward(x)
        primal, tangent = dual
        return fwAD.make_dual(super().forward(primal), self._conv_forward(tangent, self.weight, None))


class Linear(nn.Linear):
    """``nn.Linear``; forward mode: the tangent is the input's tangent times the weight (no bias)."""

    def forward(self, x: Tensor) -> Tensor:
        dual = _input_tangent(x, self.weight)
        if dual is None:
            return super().forward(x)
        primal, tangent = dual
        return fwAD.make_dual(super().forward(primal), F.linear(tangent, self.weight))


class ChannelNorm(nn.LayerNorm):
    """LayerNorm over the channels of each pixel of a (B,C,H,W) tensor: purely local, so an image
    processed in tiles normalises exactly as when processed whole (unlike GroupNorm)."""

    def forward(self, x: Tensor) -> Tensor:
        dual = _input_tangent(x, self.weight)
        if dual is None:
            return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        primal, tangent = dual
        out = super().forward(primal.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        # d(w xhat + b) = w rstd (dx - mean_c(dx) - xhat mean_c(dx xhat)), xhat = (x - mean_c(x)) rstd
        centred = primal - primal.mean(1, keepdim=True)
        rstd = torch.rsqrt(centred.square().mean(1, keepdim=True) + self.eps)
        xhat = centred * rstd
        d_out = tangent - tangent.mean(1, keepdim=True) - xhat * (tangent * xhat).mean(1, keepdim=True)
        return fwAD.make_dual(out, d_out * rstd * self.weight[:, None, None])


def _norm(channels: int, kind: str) -> nn.Module:
    """ChannelNorm, or (``kind="group"``) GroupNorm with the largest group count <= 32 dividing ``channels``."""
    if kind == "channel":
        return ChannelNorm(channels, eps=1e-6)
    groups = max(g for g in range(1, min(32, channels) + 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels, eps=1e-6)


def _zero(module: nn.Module) -> nn.Module:
    """Zero all parameters of ``module`` in place and return it."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """Norm -> SiLU -> conv3x3, then FiLM from the embedding on the second norm, dropout,
    zero-initialised conv3x3; 1x1 skip when the width changes."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float = 0.0, norm: str = "channel") -> None:
        super().__init__()
        self.norm = norm
        self.norm1 = _norm(in_ch, norm)
        self.conv1 = Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = Linear(emb_dim, 2 * out_ch)
        self.norm2 = _norm(out_ch, norm)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _zero(Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over pixels with a zero-initialised output projection.

    Plain ``softmax(q k^T / sqrt(d)) v`` so forward-mode AD works everywhere.
    """

    def __init__(self, channels: int, norm: str = "channel") -> None:
        super().__init__()
        head_dim = 64 if channels % 64 == 0 else 32 if channels % 32 == 0 else channels
        self.num_heads = channels // head_dim
        self.norm = _norm(channels, norm)
        self.qkv = Conv2d(channels, 3 * channels, 1)
        self.proj = _zero(Conv2d(channels, channels, 1))

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        b, c, hgt, wid = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.num_heads, c // self.num_heads, hgt * wid)
        q, k, v = qkv.unbind(1)  # each (B, heads, d, N)
        scale = (c // self.num_heads) ** -0.5
        attn = torch.softmax(q.transpose(-1, -2) @ k * scale, dim=-1)  # (B, heads, N, N)
        out = (v @ attn.transpose(-1, -2)).reshape(b, c, hgt, wid)
        return x + self.proj(out)


class Downsample(nn.Module):
    """Stride-2 conv3x3."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2 then conv3x3."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Stage(nn.Module):
    """ResBlock, optional attention, optional resampling, applied in that order."""

    def __init__(self, res: ResBlock, attn: bool, up: bool = False) -> None:
        super().__init__()
        self.res = res
        ch = res.conv2.out_channels
        self.attn = AttentionBlock(ch, res.norm) if attn else None
        self.up = Upsample(ch) if up else None

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        x = self.res(x, emb)
        if self.attn is not None:
            x = self.attn(x)
        if self.up is not None:
            x = self.up(x)
        return x


def _embedding_mlp(in_dim: int, emb_dim: int, zero_last: bool) -> nn.Sequential:
    last = Linear(emb_dim, emb_dim)
    return nn.Sequential(Linear(in_dim, emb_dim), nn.SiLU(), _zero(last) if zero_last else last)


class UNet(nn.Module):
    """Velocity network ``(x, t, cond, h) -> v``.

    The stem sees ``cat([x, cond])`` (``2 * image_channels`` channels). The embedding is
    ``time_mlp(sin(k t)) + interval_mlp(sin(k h))`` (k = ``time_scale``); ``interval_mlp`` ends in a zero-initialised
    linear layer and is always present, so teachers and students share one ``state_dict`` layout.
    """

    def __init__(self, cfg: NetConfig | None = None) -> None:
        super().__init__()
        cfg = cfg if cfg is not None else NetConfig()
        self.cfg = cfg
        ch = cfg.channels
        emb_dim = 4 * ch
        levels = len(cfg.channel_mult)

        self.time_mlp = _embedding_mlp(ch, emb_dim, zero_last=False)
        self.interval_mlp = _embedding_mlp(ch, emb_dim, zero_last=True)
        self.stem = Conv2d(2 * cfg.image_channels * cfg.patch**2, ch, 3, padding=1)

        # encoder: num_blocks stages per level, downsampling between levels
        self.down = nn.ModuleList()
        skip_chs = [ch]
        for level, mult in enumerate(cfg.channel_mult):
            out = cfg.channels * mult
            for _ in range(cfg.num_blocks):
                res = ResBlock(ch, out, emb_dim, cfg.dropout, cfg.norm)
                self.down.append(_Stage(res, attn=level in cfg.attention_levels))
                ch = out
                skip_chs.append(ch)
            if level != levels - 1:
                self.down.append(Downsample(ch))
                skip_chs.append(ch)

        # middle: res, attention (if the lowest level has attention), res
        self.mid = nn.ModuleList(
            [
                _Stage(ResBlock(ch, ch, emb_dim, cfg.dropout, cfg.norm), attn=levels - 1 in cfg.attention_levels),
                _Stage(ResBlock(ch, ch, emb_dim, cfg.dropout, cfg.norm), attn=False),
            ]
        )

        # decoder: num_blocks + 1 stages per level, each eating one skip, upsampling between levels
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            out = cfg.channels * mult
            for i in range(cfg.num_blocks + 1):
                res = ResBlock(ch + skip_chs.pop(), out, emb_dim, cfg.dropout, cfg.norm)
                up = level != 0 and i == cfg.num_blocks
                self.up.append(_Stage(res, attn=level in cfg.attention_levels, up=up))
                ch = out

        self.out_norm = _norm(ch, cfg.norm)
        self.out_conv = Conv2d(ch, cfg.image_channels * cfg.patch**2, 3, padding=1)
        pixels = cfg.image_channels * cfg.patch**2
        self.linear_skip = _zero(Conv2d(2 * pixels, pixels, 1)) if cfg.linear_skip else None

    @property
    def size_multiple(self) -> int:
        """H and W of the input must be multiples of this (``patch * 2 ** (levels - 1)``)."""
        return self.cfg.patch * 2 ** (len(self.cfg.channel_mult) - 1)

    def _as_batch(self, v: Tensor | float, batch: int, ref: Tensor) -> Tensor:
        """Scalar or ``(B,)`` time-like value -> ``(B,)`` tensor in float32 (float64 for float64 nets)."""
        v = torch.as_tensor(v, device=ref.device)
        if v.dtype != torch.float64:  # half precision would ruin sin(time_scale * t)
            v = v.to(torch.float64 if ref.dtype == torch.float64 else torch.float32)
        if v.numel() == 1:
            return v.reshape(()).expand(batch)
        if v.shape != (batch,):
            raise ValueError(f"time tensor must be a scalar or of shape ({batch},), got {tuple(v.shape)}")
        return v

    def _embed(self, mlp: nn.Sequential, v: Tensor) -> Tensor:
        feats = timestep_embedding(v, self.cfg.channels, scale=self.cfg.time_scale)
        return mlp(feats.to(mlp[0].weight.dtype))

    def forward(self, x: Tensor, t: Tensor | float, cond: Tensor, h: Tensor | float | None = None) -> Tensor:
        """Predict the velocity.

        Args:
            x: ``(B, C, H, W)`` current state, values roughly in ``[-1, 1]``; ``H`` and ``W`` multiples of
                :attr:`size_multiple`.
            t: scalar or ``(B,)`` time in ``[0, 1]`` (0 = noisy LR side, 1 = HR side).
            cond: ``(B, C, H, W)`` bicubic-upsampled LR image in ``[-1, 1]``; zeros = null condition.
            h: optional scalar or ``(B,)`` interval length in ``[0, 1]``; the output is then the average
                velocity over ``[t, t + h]``. ``None`` means ``h = 0``.

        Returns:
            ``(B, C, H, W)`` velocity (in the dtype produced by the last conv).
        """
        if x.ndim != 4 or cond.shape != x.shape:
            raise ValueError(f"x and cond must both be (B, C, H, W); got {tuple(x.shape)} and {tuple(cond.shape)}")
        m = self.size_multiple
        if x.shape[-2] % m or x.shape[-1] % m:
            raise ValueError(f"input H, W = {tuple(x.shape[-2:])} must be multiples of {m}; pad the input first")
        batch = x.shape[0]

        emb = self._embed(self.time_mlp, self._as_batch(t, batch, x))
        if h is not None:
            emb = emb + self._embed(self.interval_mlp, self._as_batch(h, batch, x))

        inputs = F.pixel_unshuffle(torch.cat([x, cond], dim=1), self.cfg.patch)
        hid = self.stem(inputs)
        skips = [hid]
        for block in self.down:
            hid = block(hid, emb)
            skips.append(hid)
        for block in self.mid:
            hid = block(hid, emb)
        for block in self.up:
            hid = block(torch.cat([hid, skips.pop()], dim=1), emb)
        out = self.out_conv(F.silu(self.out_norm(hid)))
        if self.linear_skip is not None:
            out = out + self.linear_skip(inputs)
        out = F.pixel_shuffle(out, self.cfg.patch)
        if self.cfg.prediction == "endpoint":
            remaining = (1 - self._as_batch(t, batch, x)).clamp(min=0.05).view(-1, 1, 1, 1)
            out = (cond + out - x) / remaining.to(out.dtype)
        return out
