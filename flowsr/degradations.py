"""Second-order Real-ESRGAN degradation, batched in torch on any device.

Reference: X. Wang, L. Xie, C. Dong, Y. Shan, "Real-ESRGAN: Training Real-World Blind Super-Resolution
with Pure Synthetic Data", ICCVW 2021 (Sec. 3 and Fig. 2); defaults from its ``train_realesrnet_x4plus.yml``.

``degrade(hr, cfg, scale, generator)`` maps HR images (B, 3, H, W) in [0, 1] to LQ images
(B, 3, H/scale, W/scale) in [0, 1] quantised to 1/255. Every random choice is drawn from the given
``torch.Generator`` (pass one on the same device as the images for speed). As in Real-ESRGAN, the resize
factor/mode, the noise family and the order of the final stage are drawn once per batch; kernels, noise
levels, grey-noise flags and JPEG qualities per image. The one deviation: the second blur is applied per
image with probability ``second_blur_prob`` (Real-ESRGAN draws it once per batch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F

KERNEL_TYPES = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")
RESIZE_MODES = ("area", "bilinear", "bicubic")
DEFAULT_YAML = Path(__file__).parent / "configs" / "realesrgan_x4.yaml"


@dataclass
class RealESRGANConfig:
    """Real-ESRGAN degradation settings; names and defaults follow ``train_realesrnet_x4plus.yml``.

    Probabilities are in [0, 1]; noise sigmas in 8-bit units (0-255); JPEG qualities in [1, 100];
    ``resize_prob*`` are (up, down, keep) probabilities. The boolean switches turn single stages off.
    """

    # first degradation: blur kernel
    blur_kernel_size: int = 21
    kernel_list: tuple[str, ...] = KERNEL_TYPES
    kernel_prob: tuple[float, ...] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
    sinc_prob: float = 0.1
    blur_sigma: tuple[float, ...] = (0.2, 3.0)
    betag_range: tuple[float, ...] = (0.5, 4.0)
    betap_range: tuple[float, ...] = (1.0, 2.0)
    # first degradation: resize, noise, JPEG
    resize_prob: tuple[float, ...] = (0.2, 0.7, 0.1)
    resize_range: tuple[float, ...] = (0.15, 1.5)
    gaussian_noise_prob: float = 0.5
    noise_range: tuple[float, ...] = (1.0, 30.0)
    poisson_scale_range: tuple[float, ...] = (0.05, 3.0)
    gray_noise_prob: float = 0.4
    jpeg_range: tuple[float, ...] = (30.0, 95.0)
    # second degradation: blur kernel
    second_blur_prob: float = 0.8
    blur_kernel_size2: int = 21
    kernel_list2: tuple[str, ...] = KERNEL_TYPES
    kernel_prob2: tuple[float, ...] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
    sinc_prob2: float = 0.1
    blur_sigma2: tuple[float, ...] = (0.2, 1.5)
    betag_range2: tuple[float, ...] = (0.5, 4.0)
    betap_range2: tuple[float, ...] = (1.0, 2.0)
    # second degradation: resize, noise, JPEG
    resize_prob2: tuple[float, ...] = (0.3, 0.4, 0.3)
    resize_range2: tuple[float, ...] = (0.3, 1.2)
    gaussian_noise_prob2: float = 0.5
    noise_range2: tuple[float, ...] = (1.0, 25.0)
    poisson_scale_range2: tuple[float, ...] = (0.05, 2.5)
    gray_noise_prob2: float = 0.4
    jpeg_range2: tuple[float, ...] = (30.0, 95.0)
    # final sinc filter
    final_sinc_prob: float = 0.8
    # stage switches
    blur1: bool = True
    resize1: bool = True
    noise1: bool = True
    jpeg1: bool = True
    blur2: bool = True
    resize2: bool = True
    noise2: bool = True
    jpeg2: bool = True
    final_sinc: bool = True

    def __post_init__(self):
        kernels = ((self.kernel_list, self.blur_kernel_size), (self.kernel_list2, self.blur_kernel_size2))
        for names, size in kernels:
            if unknown := [n for n in names if n not in KERNEL_TYPES]:
                raise ValueError(f"unknown kernel type(s) {unknown}; expected some of {KERNEL_TYPES}")
            if size < 7 or size % 2 == 0:
                raise ValueError(f"blur kernel size must be odd and >= 7, got {size}")

    @classmethod
    def from_yaml(cls, path: str | Path) -> RealESRGANConfig:
        """Defaults overridden by a YAML mapping whose keys are field names (unknown key -> ValueError)."""
        import yaml

        data = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping of RealESRGANConfig fields")
        if unknown := sorted(set(data) - {f.name for f in fields(cls)}):
            raise ValueError(f"{path}: unknown RealESRGANConfig key(s) {unknown}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


# ---------------------------------------------------------------- random draws from the generator


def _uniform(n: int, lo: float, hi: float, generator, device) -> torch.Tensor:
    """(n,) samples of U(lo, hi) drawn on the generator's device, returned on ``device``."""
    gen_device = generator.device if generator is not None else device
    return (torch.rand(n, generator=generator, device=gen_device) * (hi - lo) + lo).to(device)


def _choice(n: int, probs, generator, device) -> torch.Tensor:
    """(n,) indices drawn with the given (unnormalised) probabilities."""
    gen_device = generator.device if generator is not None else device
    p = torch.as_tensor(probs, dtype=torch.float, device=gen_device)
    return torch.multinomial(p, n, replacement=True, generator=generator).to(device)


def _randn_like(x: torch.Tensor, generator) -> torch.Tensor:
    gen_device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=gen_device, dtype=x.dtype).to(x.device)


# ---------------------------------------------------------------- blur kernels


def _grid(size: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) pixel offsets from the centre of a size x size kernel (x along columns)."""
    ax = torch.arange(size, device=device, dtype=torch.float) - (size - 1) / 2
    y, x = torch.meshgrid(ax, ax, indexing="ij")
    return x, y


def _params(*values) -> list[torch.Tensor]:
    """Floats or tensors -> broadcast (N, 1, 1) float tensors on the device of the first tensor given."""
    device = next((v.device for v in values if torch.is_tensor(v)), None)
    ts = [torch.as_tensor(v, dtype=torch.float, device=device).reshape(-1) for v in values]
    return [t[:, None, None] for t in torch.broadcast_tensors(*ts)]


def _normalise(kernel: torch.Tensor, support=None) -> torch.Tensor:
    """Zero each kernel outside its central support x support square (Real-ESRGAN's zero-padding of a
    smaller kernel to the full size), then scale it to sum to 1."""
    if support is not None:
        x, y = _grid(kernel.shape[-1], kernel.device)
        r = torch.as_tensor(support, device=kernel.device).reshape(-1, 1, 1) // 2
        kernel = kernel * ((x.abs() <= r) & (y.abs() <= r))
    return kernel / kernel.sum(dim=(-2, -1), keepdim=True)


def _mahalanobis(size: int, sigma_x, sigma_y, theta) -> torch.Tensor:
    """(N, size, size) g^T S^-1 g with S = R(theta) diag(sigma_x^2, sigma_y^2) R(theta)^T."""
    sx, sy, th = _params(sigma_x, sigma_x if sigma_y is None else sigma_y, theta)
    x, y = _grid(size, sx.device)
    u = torch.cos(th) * x + torch.sin(th) * y
    v = -torch.sin(th) * x + torch.cos(th) * y
    return (u / sx) ** 2 + (v / sy) ** 2


def gaussian_kernel(size: int, sigma_x, sigma_y=None, theta=0.0, support=None) -> torch.Tensor:
    """Anisotropic Gaussian exp(-q/2) (isotropic when sigma_y is None). Parameters are floats or (N,)
    tensors; ``support`` optional (N,) odd sizes <= size. Returns (N, size, size) kernels summing to 1."""
    return _normalise(torch.exp(-0.5 * _mahalanobis(size, sigma_x, sigma_y, theta)), support)


def generalized_gaussian_kernel(size: int, sigma_x, sigma_y=None, theta=0.0, beta=1.0, support=None):
    """Generalized Gaussian exp(-q^beta / 2) (Real-ESRGAN Sec. 3.1); shapes as :func:`gaussian_kernel`."""
    q = _mahalanobis(size, sigma_x, sigma_y, theta)
    return _normalise(torch.exp(-0.5 * q.pow(_params(beta)[0].to(q.device))), support)


def plateau_kernel(size: int, sigma_x, sigma_y=None, theta=0.0, beta=1.0, support=None) -> torch.Tensor:
    """Plateau-shaped kernel 1 / (1 + q^beta) (Real-ESRGAN Sec. 3.1); shapes as :func:`gaussian_kernel`."""
    q = _mahalanobis(size, sigma_x, sigma_y, theta)
    return _normalise(1.0 / (q.pow(_params(beta)[0].to(q.device)) + 1.0), support)


def sinc_kernel(size: int, cutoff, support=None) -> torch.Tensor:
    """Circular low-pass (2-D sinc, Real-ESRGAN Sec. 3.3) with cutoff omega_c in (0, pi] rad/pixel:
    omega_c J1(omega_c r) / (2 pi r). Returns (N, size, size) kernels summing to 1."""
    (wc,) = _params(cutoff)
    x, y = _grid(size, wc.device)
    r = torch.sqrt(x**2 + y**2)
    kernel = wc * torch.special.bessel_j1(wc * r) / (2 * math.pi * r.clamp_min(1e-12))
    kernel = torch.where(r == 0, wc**2 / (4 * math.pi), kernel)
    return _normalise(kernel, support)


def _split_uniform(n: int, lo: float, hi: float, generator, device) -> torch.Tensor:
    """Real-ESRGAN's shape parameter: U(lo, 1) or U(1, hi) with probability 1/2 each."""
    low, high = _uniform(n, lo, 1.0, generator, device), _uniform(n, 1.0, hi, generator, device)
    return torch.where(_uniform(n, 0.0, 1.0, generator, device) < 0.5, low, high)


def random_mixed_kernel(n: int, kernel_list=KERNEL_TYPES, kernel_prob=(0.45, 0.25, 0.12, 0.03, 0.12, 0.03),
                        sigma_range=(0.2, 3.0), betag_range=(0.5, 4.0), betap_range=(1.0, 2.0),
                        sinc_prob: float = 0.0, size: int = 21, generator=None, device=None) -> torch.Tensor:
    """n random Real-ESRGAN blur kernels, (n, size, size), each summing to 1.

    Per kernel: support k ~ U{7, 9, ..., size} (zero outside k x k); with probability ``sinc_prob`` a
    circular low-pass with omega_c ~ U(pi/3, pi) (U(pi/5, pi) when k >= 13); otherwise a type from
    ``kernel_list`` with ``kernel_prob``, sigma ~ U(sigma_range), and for anisotropic types a second sigma
    and theta ~ U(-pi, pi).
    """
    args = (generator, device)
    supports = torch.arange(7, size + 1, 2, device=device)[_choice(n, [1.0] * ((size - 5) // 2), *args)]
    types = torch.tensor([KERNEL_TYPES.index(t) for t in kernel_list], device=device)[
        _choice(n, kernel_prob, *args)]
    iso = types % 2 == 0
    sigma_x = _uniform(n, *sigma_range, *args)
    sigma_y = torch.where(iso, sigma_x, _uniform(n, *sigma_range, *args))
    theta = torch.where(iso, 0.0, _uniform(n, -math.pi, math.pi, *args))
    beta_g, beta_p = _split_uniform(n, *betag_range, *args), _split_uniform(n, *betap_range, *args)
    family = (types // 2)[:, None, None]  # 0 Gaussian, 1 generalized Gaussian, 2 plateau
    kernel = torch.where(family == 0, gaussian_kernel(size, sigma_x, sigma_y, theta, supports),
                         generalized_gaussian_kernel(size, sigma_x, sigma_y, theta, beta_g, supports))
    kernel = torch.where(family == 2, plateau_kernel(size, sigma_x, sigma_y, theta, beta_p, supports), kernel)
    cutoff = torch.where(supports < 13, _uniform(n, math.pi / 3, math.pi, *args),
                         _uniform(n, math.pi / 5, math.pi, *args))
    use_sinc = (_uniform(n, 0.0, 1.0, *args) < sinc_prob)[:, None, None]
    return torch.where(use_sinc, sinc_kernel(size, cutoff, supports), kernel)


def _delta(n: int, size: int, device) -> torch.Tensor:
    """(n, size, size) identity kernels."""
    kernel = torch.zeros(n, size, size, device=device)
    kernel[:, size // 2, size // 2] = 1.0
    return kernel


# ---------------------------------------------------------------- stages


def blur(img: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Filter each image with its own odd-sized kernel (grouped conv, reflect padding as BasicSR's
    ``filter2D``). img (B, C, H, W); kernels (B, k, k) or (k, k) shared. Returns (B, C, H, W)."""
    b, c, h, w = img.shape
    k = kernels.shape[-1]
    kernels = kernels.to(img).reshape(-1, 1, k, k).expand(b, c, k, k).reshape(b * c, 1, k, k)
    mode = "reflect" if k // 2 < min(h, w) else "replicate"
    padded = F.pad(img, [k // 2] * 4, mode=mode).reshape(1, b * c, h + k - 1, w + k - 1)
    return F.conv2d(padded, kernels, groups=b * c).reshape(b, c, h, w)


def _resize(img: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    if tuple(img.shape[-2:]) == tuple(size):
        return img
    return F.interpolate(img, size=size, mode=mode)


def random_resize(img: torch.Tensor, resize_prob, resize_range, base_size=None, generator=None):
    """Rescale the whole batch by s with a random mode (area, bilinear, bicubic): with probabilities
    ``resize_prob`` s ~ U(1, hi) (up), U(lo, 1) (down) or s = 1 (keep). The target size is s x the current
    size, or s x ``base_size`` (h, w) when given (Real-ESRGAN's second stage, relative to the LR size)."""
    direction = _choice(1, resize_prob, generator, img.device).item()  # 0 up, 1 down, 2 keep
    lo, hi = resize_range
    s = [_uniform(1, 1.0, hi, generator, img.device).item(),
         _uniform(1, lo, 1.0, generator, img.device).item(), 1.0][direction]
    mode = RESIZE_MODES[_choice(1, [1.0] * 3, generator, img.device).item()]
    h, w = base_size if base_size is not None else img.shape[-2:]
    return _resize(img, (max(1, int(h * s)), max(1, int(w * s))), mode)


def add_gaussian_noise(img: torch.Tensor, sigma, gray=False, generator=None) -> torch.Tensor:
    """img + N(0, (sigma/255)^2), clamped to [0, 1]. sigma: float or (B,) in 8-bit units; gray: bool or
    (B,) bools, True for one noise map shared by the three channels."""
    b = img.shape[0]
    sigma, gray = (torch.as_tensor(v, device=img.device).reshape(-1).expand(b) for v in (sigma, gray))
    noise = _split_by_gray(img, gray.bool(), lambda x: _randn_like(x, generator))
    return (img + noise * sigma.view(b, 1, 1, 1).to(img) / 255.0).clamp(0, 1)


def _split_by_gray(img: torch.Tensor, gray: torch.Tensor, noise_fn) -> torch.Tensor:
    """noise_fn on the colour images, and on the BT.601 luma of the grey-noise images (one map shared
    by the three channels)."""
    noise = torch.empty_like(img)
    if gray.any():
        weights = torch.tensor([0.2989, 0.587, 0.114], device=img.device).to(img).view(1, 3, 1, 1)
        noise[gray] = noise_fn((img[gray] * weights).sum(1, keepdim=True)).expand(-1, 3, -1, -1)
    if not gray.all():
        noise[~gray] = noise_fn(img[~gray])
    return noise


def _poisson_noise(img: torch.Tensor, generator) -> torch.Tensor:
    """Poisson shot noise of an image quantised to 8 bits, with 2^ceil(log2(#levels)) photon levels."""
    b = img.shape[0]
    q = (img * 255.0).round().clamp(0, 255)
    present = torch.zeros(b, 256, device=img.device).scatter_(1, q.reshape(b, -1).long(), 1.0)
    levels = torch.exp2(torch.ceil(torch.log2(present.sum(1)))).view(b, 1, 1, 1).to(img)
    rate = (q / 255.0 * levels)
    gen_device = generator.device if generator is not None else img.device
    counts = torch.poisson(rate.to(gen_device), generator=generator).to(img.device)
    return counts / levels - q / 255.0


def add_poisson_noise(img: torch.Tensor, scale, gray=False, generator=None) -> torch.Tensor:
    """img + scale * Poisson noise (Real-ESRGAN's ``random_add_poisson_noise_pt``), clamped to [0, 1].
    scale: float or (B,); gray: bool or (B,), True for noise of the luma (BT.601) on all channels."""
    b = img.shape[0]
    scale, gray = (torch.as_tensor(v, device=img.device).reshape(-1).expand(b) for v in (scale, gray))
    noise = _split_by_gray(img, gray.bool(), lambda x: _poisson_noise(x, generator))
    return (img + noise * scale.view(b, 1, 1, 1).to(img)).clamp(0, 1)


def _random_noise(img, gaussian_prob, noise_range, poisson_range, gray_prob, generator) -> torch.Tensor:
    """Gaussian (sigma ~ U(noise_range)) or Poisson (scale ~ U(poisson_range)) noise, family per batch."""
    b, device = img.shape[0], img.device
    use_gaussian = _uniform(1, 0.0, 1.0, generator, device).item() < gaussian_prob
    level = _uniform(b, *(noise_range if use_gaussian else poisson_range), generator, device)
    gray = _uniform(b, 0.0, 1.0, generator, device) < gray_prob
    add = add_gaussian_noise if use_gaussian else add_poisson_noise
    return add(img, level, gray, generator)


# JPEG (ITU-T T.81 Annex K) quantisation tables, row = vertical frequency
_Y_TABLE = [[16, 11, 10, 16, 24, 40, 51, 61], [12, 12, 14, 19, 26, 58, 60, 55],
            [14, 13, 16, 24, 40, 57, 69, 56], [14, 17, 22, 29, 51, 87, 80, 62],
            [18, 22, 37, 56, 68, 109, 103, 77], [24, 35, 55, 64, 81, 104, 113, 92],
            [49, 64, 78, 87, 103, 121, 120, 101], [72, 92, 95, 98, 112, 100, 103, 99]]
_C_TABLE = [[17, 18, 24, 47] + [99] * 4, [18, 21, 26, 66] + [99] * 4,
            [24, 26, 56, 99] + [99] * 4, [47, 66, 99, 99] + [99] * 4] + [[99] * 8] * 4
_RGB_TO_YCBCR = [[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]]


def _dct_matrix(device, dtype) -> torch.Tensor:
    """Orthonormal 8-point DCT-II matrix D (rows = frequencies); the JPEG 2-D DCT of a block X is D X D^T."""
    n = torch.arange(8, device=device, dtype=dtype)
    d = torch.cos((2 * n[None, :] + 1) * n[:, None] * math.pi / 16) * math.sqrt(2 / 8)
    d[0] /= math.sqrt(2)
    return d


def _jpeg_plane(plane: torch.Tensor, table: torch.Tensor, dct: torch.Tensor) -> torch.Tensor:
    """Level shift, 8x8 DCT, quantise/dequantise with per-image tables (B, 8, 8), inverse DCT.
    plane (B, C, H, W) in [0, 255] with H, W multiples of 8."""
    b, c, h, w = plane.shape
    blocks = (plane - 128).reshape(b, c, h // 8, 8, w // 8, 8).transpose(3, 4)
    table = table.view(b, 1, 1, 1, 8, 8)
    coeffs = torch.round(dct @ blocks @ dct.T / table) * table
    return (dct.T @ coeffs @ dct).transpose(3, 4).reshape(b, c, h, w) + 128


def jpeg_compress(img: torch.Tensor, quality) -> torch.Tensor:
    """Baseline JPEG round trip in torch (as BasicSR's DiffJPEG, not differentiable): RGB -> YCbCr,
    4:2:0 chroma (2x2 mean), 8x8 DCT, quantisation with the standard tables scaled by quality as libjpeg,
    then decoding (nearest chroma upsampling) to 8-bit. Edges are padded by replication to 16.
    img (B, 3, H, W) in [0, 1]; quality float or (B,) in [1, 100]. Returns (B, 3, H, W) in [0, 1]."""
    b, _, h, w = img.shape
    q = torch.as_tensor(quality, dtype=torch.float, device=img.device).reshape(-1).expand(b)
    if bool(((q < 1) | (q > 100)).any()):
        raise ValueError(f"JPEG quality must be in [1, 100], got {quality}")
    # quality -> quantisation tables (libjpeg's jpeg_quality_scaling)
    factor = torch.where(q < 50, 5000 / q, 200 - 2 * q).view(b, 1, 1)
    tables = [torch.floor((torch.tensor(t, device=img.device) * factor + 50) / 100).clamp(1, 255).to(img)
              for t in (_Y_TABLE, _C_TABLE)]
    # colour transform and 4:2:0 chroma subsampling
    ph, pw = -h % 16, -w % 16
    x = F.pad(img * 255.0, (0, pw, 0, ph), mode="replicate") if ph or pw else img * 255.0
    to_ycc = torch.tensor(_RGB_TO_YCBCR, device=img.device).to(img)
    ycc = torch.einsum("ij,bjhw->bihw", to_ycc, x) + torch.tensor([0.0, 128, 128]).to(img).view(1, 3, 1, 1)
    luma, chroma = ycc[:, :1], F.avg_pool2d(ycc[:, 1:], 2)
    # DCT, quantisation and decoding
    dct = _dct_matrix(img.device, img.dtype)
    luma = _jpeg_plane(luma, tables[0], dct)
    chroma = _jpeg_plane(chroma, tables[1], dct).repeat_interleave(2, -2).repeat_interleave(2, -1)
    ycc = torch.cat([luma, chroma], 1) - torch.tensor([0.0, 128, 128]).to(img).view(1, 3, 1, 1)
    rgb = torch.einsum("ij,bjhw->bihw", torch.linalg.inv(to_ycc), ycc)[..., :h, :w]
    return rgb.round().clamp(0, 255) / 255.0


# ---------------------------------------------------------------- the full pipeline


def degrade(hr: torch.Tensor, cfg: RealESRGANConfig | None = None, scale: int = 4,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """Real-ESRGAN's second-order degradation (Fig. 2; ``RealESRNetModel.feed_data``).

    hr (B, 3, H, W) in [0, 1] with H, W divisible by ``scale``. Returns (B, 3, H/scale, W/scale) in
    [0, 1], rounded to multiples of 1/255.
    """
    cfg = cfg or RealESRGANConfig()
    b, _, h, w = hr.shape
    if h % scale or w % scale:
        raise ValueError(f"HR size {h}x{w} is not divisible by scale {scale}")
    device, g = hr.device, generator
    lr_size = (h // scale, w // scale)
    out = hr

    # ---- first degradation: blur, resize, noise, JPEG
    if cfg.blur1:
        kernels = random_mixed_kernel(b, cfg.kernel_list, cfg.kernel_prob, cfg.blur_sigma, cfg.betag_range,
                                      cfg.betap_range, cfg.sinc_prob, cfg.blur_kernel_size, g, device)
        out = blur(out, kernels)
    if cfg.resize1:
        out = random_resize(out, cfg.resize_prob, cfg.resize_range, generator=g)
    if cfg.noise1:
        out = _random_noise(out, cfg.gaussian_noise_prob, cfg.noise_range, cfg.poisson_scale_range,
                            cfg.gray_noise_prob, g)
    if cfg.jpeg1:
        out = jpeg_compress(out.clamp(0, 1), _uniform(b, *cfg.jpeg_range, g, device))

    # ---- second degradation: blur (per image with second_blur_prob), resize relative to LR size, noise
    if cfg.blur2:
        kernels = random_mixed_kernel(b, cfg.kernel_list2, cfg.kernel_prob2, cfg.blur_sigma2,
                                      cfg.betag_range2, cfg.betap_range2, cfg.sinc_prob2,
                                      cfg.blur_kernel_size2, g, device)
        use = (_uniform(b, 0.0, 1.0, g, device) < cfg.second_blur_prob)[:, None, None]
        out = blur(out, torch.where(use, kernels, _delta(b, cfg.blur_kernel_size2, device)))
    if cfg.resize2:
        out = random_resize(out, cfg.resize_prob2, cfg.resize_range2, base_size=lr_size, generator=g)
    if cfg.noise2:
        out = _random_noise(out, cfg.gaussian_noise_prob2, cfg.noise_range2, cfg.poisson_scale_range2,
                            cfg.gray_noise_prob2, g)

    # ---- final stage: [resize to LR size + sinc filter] and JPEG, in random order
    size = cfg.blur_kernel_size
    supports = torch.arange(7, size + 1, 2, device=device)[_choice(b, [1.0] * ((size - 5) // 2), g, device)]
    sinc = sinc_kernel(size, _uniform(b, math.pi / 3, math.pi, g, device), supports)
    use = (_uniform(b, 0.0, 1.0, g, device) < cfg.final_sinc_prob)[:, None, None]
    sinc = torch.where(use, sinc, _delta(b, size, device))
    quality = _uniform(b, *cfg.jpeg_range2, g, device)
    mode = RESIZE_MODES[_choice(1, [1.0] * 3, g, device).item()]
    jpeg_first = _uniform(1, 0.0, 1.0, g, device).item() >= 0.5

    def resize_and_sinc(x):
        x = _resize(x, lr_size, mode)
        return blur(x, sinc) if cfg.final_sinc else x

    def jpeg(x):
        return jpeg_compress(x.clamp(0, 1), quality) if cfg.jpeg2 else x

    out = resize_and_sinc(jpeg(out)) if jpeg_first else jpeg(resize_and_sinc(out))
    # ---- clamp and round to 8 bits
    return torch.clamp((out * 255.0).round(), 0, 255) / 255.0
