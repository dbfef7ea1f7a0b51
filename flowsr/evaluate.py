"""Evaluation harness: the field's synthetic and paired protocols, sweeps over models, steps and t.

Synthetic (a folder of HR images): HR cropped to a multiple of the scale, LR = MATLAB bicubic
downscale rounded to uint8, metrics on BT.601 Y after cropping ``scale`` pixels per border.
Paired (a folder with ``HR/`` and ``LR/``, files matched by name): real LR as given, no border crop.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from flowsr.data import uint8_hwc
from flowsr.io import ImageReadError, list_images, read_image, write_image
from flowsr.metrics import image_metrics
from flowsr.ops import imresize, modcrop
from flowsr.pipeline import Settings, Upscaler, image_seed


class DataError(Exception):
    """A dataset folder that cannot be evaluated at all (missing, empty, mismatched)."""


PER_IMAGE_METRICS = ("psnr", "ssim", "hf", "lpips", "lpips_vgg", "dists", "niqe")
SET_METRICS = ("fid", "kid")  # over all patches of the set (see ``evaluate``)


def check_metrics(metrics: list[str]) -> list[str]:
    """Return ``metrics`` or raise ValueError naming the unknown ones."""
    unknown = [m for m in metrics if m not in PER_IMAGE_METRICS + SET_METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; choose from {', '.join(PER_IMAGE_METRICS + SET_METRICS)}")
    return metrics


@dataclass
class Sample:
    name: str
    lq: np.ndarray  # (h,w,3) uint8
    gt: np.ndarray  # (H,W,3) uint8


@dataclass
class Dataset:
    name: str
    protocol: str  # synthetic | paired
    crop_border: int
    samples: list[Sample]
    errors: list[str] = field(default_factory=list)


def _rgb_uint8(path: Path) -> np.ndarray:
    """Read an image as (H,W,3) uint8; greyscale replicated to RGB (as BasicSR reads it)."""
    image = read_image(path)
    rgb = image.rgb.expand(3, -1, -1) if image.rgb.shape[0] == 1 else image.rgb
    if image.bit_depth != 8:
        raise ImageReadError(f"{path}: {image.bit_depth}-bit images are not part of the 8-bit protocol")
    return uint8_hwc(rgb)


def load_dataset(directory: str | Path, scale: int) -> Dataset:
    """Read a benchmark folder. Per-file problems are collected in ``errors``; the rest is kept."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"{directory}: no such folder")
    name = directory.parent.name if directory.name == "HR" else directory.name
    if (directory / "HR").is_dir() and (directory / "LR").is_dir():
        return _paired(directory, name, scale)
    paths = list_images([directory])
    if not paths:
        raise DataError(f"{directory}: no images found (expected image files, or HR/ and LR/ folders)")
    dataset = Dataset(name, "synthetic", scale, [])
    for path in paths:
        try:
            gt = _rgb_uint8(path)
            if min(gt.shape[:2]) < scale:
                raise ImageReadError(f"{path}: {gt.shape[1]}x{gt.shape[0]} is smaller than the scale {scale}")
            gt = modcrop(gt, scale)
            dataset.samples.append(Sample(path.name, imresize(gt, scale=1 / scale), gt))
        except ImageReadError as error:
            dataset.errors.append(str(error))
    return dataset


def _paired(directory: Path, name: str, scale: int) -> Dataset:
    hr_paths = {p.name: p for p in list_images([directory / "HR"])}
    lr_paths = {p.name: p for p in list_images([directory / "LR"])}
    if not hr_paths:
        raise DataError(f"{directory / 'HR'}: no images found")
    dataset = Dataset(name, "paired", 0, [])
    for missing in sorted(set(hr_paths) ^ set(lr_paths)):
        side = "LR" if missing in hr_paths else "HR"
        dataset.errors.append(f"{directory / ('HR' if side == 'LR' else 'LR') / missing}: "
                              f"no matching file in {side}/")
    for key in sorted(set(hr_paths) & set(lr_paths)):
        try:
            gt, lq = _rgb_uint8(hr_paths[key]), _rgb_uint8(lr_paths[key])
            expected = (lq.shape[0] * scale, lq.shape[1] * scale)
            if gt.shape[:2] != expected:
                raise ImageReadError(f"{lr_paths[key]}: LR {lq.shape[1]}x{lq.shape[0]} x{scale} does not "
                                     f"match HR {gt.shape[1]}x{gt.shape[0]}")
            dataset.samples.append(Sample(key, lq, gt))
        except ImageReadError as error:
            dataset.errors.append(str(error))
    return dataset


def high_frequency_ratio(sr: np.ndarray, gt: np.ndarray) -> float:
    """Realism proxy: Laplacian energy of the output over that of the ground truth (uint8 HWC).

    1 means as much fine detail as the ground truth; blurry (posterior-mean) outputs score below 1.
    """
    def energy(image):
        y = image.astype(np.float64) @ np.array([65.481, 128.553, 24.966]) / 255
        lap = 4 * y[1:-1, 1:-1] - y[:-2, 1:-1] - y[2:, 1:-1] - y[1:-1, :-2] - y[1:-1, 2:]
        return float(np.mean(lap**2))

    return energy(sr) / max(energy(gt), 1e-12)


def score(sr: np.ndarray, gt: np.ndarray, crop_border: int, metrics: list[str], device) -> dict:
    values = image_metrics(sr, gt, crop_border)
    row = {k: v for k, v in values.items() if k.split("_")[0] in metrics}
    if "hf" in metrics:
        row["hf_ratio"] = high_frequency_ratio(sr, gt)
    perceptual = [m for m in metrics if m in ("lpips", "lpips_vgg", "dists", "niqe")]
    if perceptual:
        from flowsr import perceptual as P

        sr_t = torch.from_numpy(sr).permute(2, 0, 1).float().div(255)[None].to(device)
        gt_t = torch.from_numpy(gt).permute(2, 0, 1).float().div(255)[None].to(device)
        if "lpips" in perceptual:
            row["lpips"] = float(P.lpips(sr_t, gt_t, net="alex"))
        if "lpips_vgg" in perceptual:
            row["lpips_vgg"] = float(P.lpips(sr_t, gt_t, net="vgg"))
        if "dists" in perceptual:
            row["dists"] = float(P.dists(sr_t, gt_t))
        if "niqe" in perceptual:
            row["niqe"] = float(P.niqe(sr, crop_border=crop_border))
    return row


@dataclass
class Reference:
    """A teacher whose N-step Euler output, from the same source noise as the evaluated model, every
    output is also scored against (``ref_psnr_y``, ``ref_lpips``): how well a student copied it.

    ``guidance=None`` takes, per evaluated model, the guidance it was distilled with
    (``config.training["teacher_guidance"]``, 1 when absent). Outputs are cached per image, seed and
    guidance, so a sweep computes each reference image once.
    """

    upscaler: Upscaler
    steps: int = 32
    guidance: float | None = None
    cache: dict = field(default_factory=dict)

    def guidance_for(self, model: Upscaler) -> float:
        if self.guidance is not None:
            return self.guidance
        training = model.config.training if model.config else {}
        return float(training.get("teacher_guidance", 1.0))

    def check(self, model: Upscaler) -> None:
        """Raise ValueError unless the reference is a flow teacher sharing ``model``'s scale and source."""
        ref = self.upscaler
        if ref.config is None or ref.config.kind != "flow":
            raise ValueError(f"--reference {ref.name}: must be a flow teacher (its N-step Euler output is the reference)")
        if ref.scale != model.scale:
            raise ValueError(f"--reference {ref.name} is x{ref.scale}, {model.name} is x{model.scale}")
        if model.config is not None and model.config.kind != "regression" and model.config.sigma_p != ref.config.sigma_p:
            raise ValueError(f"--reference {ref.name}: sigma_p {ref.config.sigma_p} differs from {model.name}'s "
                             f"{model.config.sigma_p}, so their source noise differs")

    def output(self, lq: torch.Tensor, name: str, seed: int, guidance: float, tile: int) -> np.ndarray:
        """The reference output (uint8 HWC) for one image, from the evaluated row's per-image seed."""
        key = (name, seed, guidance)
        if key not in self.cache:
            settings = Settings(steps=self.steps, guidance=guidance, sampler="euler")
            sr = self.upscaler.upscale_tensor(lq, settings, seed=image_seed(seed, name), tile=tile)
            self.cache[key] = uint8_hwc(sr[0])
        return self.cache[key]


def evaluate(upscaler: Upscaler, dataset: Dataset, settings: Settings, metrics: list[str],
             seed: int = 0, save: Path | None = None, tile: int = 0, keep: tuple[str, ...] = (),
             fid_patch: int = 64, reference: Reference | None = None) -> dict:
    """Run one model configuration over a dataset; returns the JSON-ready result row.

    Per-image metrics are averaged over images. ``fid``/``kid`` are set metrics: computed once between
    all non-overlapping ``fid_patch``-pixel crops of the outputs and of the ground truths (after the
    border crop), as SR papers do for small test sets; the row's ``fid_patches`` gives their number.
    With a ``reference``, each output is also scored against the reference teacher's output from the
    same source noise: ``ref_psnr_y`` (crop as the protocol) and ``ref_lpips``.
    Outputs of the images named in ``keep`` are returned under ``"images"`` (uint8 HWC; not JSON).
    """
    resolved = upscaler.resolve(settings)
    check_metrics(metrics)
    if reference is not None:
        reference.check(upscaler)
        ref_guidance = reference.guidance_for(upscaler)
    set_level = [m for m in metrics if m in SET_METRICS]
    per_image, seconds, kept, outputs = [], 0.0, {}, []
    for sample in dataset.samples:
        lq = torch.from_numpy(sample.lq).permute(2, 0, 1)[None].float() / 255
        if upscaler.device.type == "cuda":
            torch.cuda.synchronize()
        begin = time.perf_counter()
        sr = upscaler.upscale_tensor(lq, resolved, seed=image_seed(seed, sample.name), tile=tile)
        if upscaler.device.type == "cuda":
            torch.cuda.synchronize()
        seconds += time.perf_counter() - begin
        sr_uint8 = uint8_hwc(sr[0])
        if sr_uint8.shape != sample.gt.shape:
            raise DataError(f"{sample.name}: output {sr_uint8.shape} does not match HR {sample.gt.shape}")
        row = {"name": sample.name, **score(sr_uint8, sample.gt, dataset.crop_border, metrics, upscaler.device)}
        if reference is not None:
            ref = reference.output(lq, sample.name, seed, ref_guidance, tile)
            row.update(_against_reference(sr_uint8, ref, dataset.crop_border, upscaler.device))
        per_image.append(row)
        if set_level:
            outputs.append(_border_cropped(sr_uint8, sample.gt, dataset.crop_border))
        if sample.name in keep:
            kept[sample.name] = sr_uint8
        if save is not None:
            write_image(Path(save) / f"{Path(sample.name).stem}.png", sr[0].cpu())
    keys = [k for k in per_image[0] if k != "name"] if per_image else []
    averages = {k: float(np.mean([row[k] for row in per_image])) for k in keys}
    extra = {}
    if set_level and outputs:
        from flowsr.perceptual import fid_kid

        values = fid_kid([o[0] for o in outputs], [o[1] for o in outputs], patch=fid_patch)
        if values["n"] < 2:
            raise DataError(f"{dataset.name}: fewer than 2 crops of {fid_patch} pixels for fid/kid")
        averages.update({m: values[m] for m in set_level})
        extra = {"fid_patch": fid_patch, "fid_patches": values["n"]}
    kind = upscaler.config.kind if upscaler.config else "bicubic"
    return {
        "model": upscaler.name,
        "kind": kind,
        "dataset": dataset.name,
        "protocol": dataset.protocol,
        "scale": upscaler.scale,
        "steps": resolved.steps,
        "t": resolved.t if kind in ("oftsr", "meanflow") else None,
        "guidance": resolved.guidance,
        "sampler": resolved.sampler,
        "nfe": upscaler.nfe(resolved),
        "n_images": len(per_image),
        "metrics": averages,
        **extra,
        "seconds_per_image": seconds / max(1, len(per_image)),
        "device": str(upscaler.device),
        "seed": seed,
        "per_image": per_image,
        **({"reference": {"model": reference.upscaler.name, "steps": reference.steps, "guidance": ref_guidance}}
           if reference is not None else {}),
        **({"images": kept} if keep else {}),
    }


def _against_reference(sr: np.ndarray, ref: np.ndarray, crop_border: int, device) -> dict:
    """``ref_psnr_y`` and (when LPIPS weights are installed) ``ref_lpips`` of an output against the
    reference output (uint8 HWC both)."""
    from flowsr import perceptual as P
    from flowsr.metrics import psnr

    row = {"ref_psnr_y": psnr(sr, ref, crop_border=crop_border)}
    if "lpips_alex" in P.available_metrics():
        def tensor(image):
            return torch.from_numpy(image).permute(2, 0, 1).float().div(255)[None].to(device)

        row["ref_lpips"] = float(P.lpips(tensor(sr), tensor(ref), net="alex"))
    return row


def _border_cropped(sr: np.ndarray, gt: np.ndarray, border: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(sr, gt) uint8 HWC -> (3, H, W) float tensors in [0, 1] without ``border`` pixels per side."""
    def tensor(image):
        image = image[border:image.shape[0] - border, border:image.shape[1] - border] if border else image
        return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div(255)

    return tensor(sr), tensor(gt)


def format_table(rows: list[dict], verbose: bool = False) -> str:
    """A plain-text table: one line per configuration (and per image with ``verbose``)."""
    keys = []
    for row in rows:
        keys += [k for k in row["metrics"] if k not in keys]
    header = ["model", "steps", "t", "nfe", *keys, "s/img"]
    lines = []
    for row in rows:
        if verbose:
            for image in row["per_image"]:
                lines.append([f"  {image['name']}", "", "", "", *[_fmt(image.get(k)) for k in keys], ""])
        t = "" if row["t"] is None else f"{row['t']:g}"
        lines.append([row["model"], str(row["steps"]), t, str(row["nfe"]),
                      *[_fmt(row["metrics"].get(k)) for k in keys], f"{row['seconds_per_image']:.3f}"])
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    out += ["  ".join(c.ljust(w) for c, w in zip(line, widths)) for line in lines]
    return "\n".join(out)


def _fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if abs(value) < 10 else f"{value:.2f}"
