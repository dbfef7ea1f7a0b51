"""Evaluation harness: the field's synthetic and paired protocols, sweeps over models, steps and t.

Synthetic (a folder of HR images): HR cropped to a multiple of the scale, LR = MATLAB bicubic
downscale rounded to uint8, metrics on BT.601 Y after cropping ``scale`` pixels per border.
Paired (a folder with ``HR/`` and ``LR/``, files matched by name): real LR as given, no border crop.
No-reference (real LR photographs alone: a folder with ``LR/`` and no ``HR/``, a folder named
``LR``, or ``protocol="no-reference"``): the LR images are upscaled and scored by the no-reference
metrics only (NIQE), without a border crop.

Under ``torchrun`` each rank loads and scores every WORLD_SIZE-th image (``load_dataset(part=...)``)
and rank 0 gathers the per-image rows and computes the set's numbers exactly as one process does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from flowsr import distributed
from flowsr.data import uint8_hwc
from flowsr.io import ImageReadError, list_images, read_image, write_image
from flowsr.metrics import image_metrics
from flowsr.ops import imresize, modcrop
from flowsr.pipeline import Settings, Upscaler, image_seed


class DataError(Exception):
    """A dataset folder that cannot be evaluated at all (missing, empty, mismatched)."""


PER_IMAGE_METRICS = ("psnr", "ssim", "hf", "lpips", "lpips_vgg", "dists", "niqe")
SET_METRICS = ("fid", "kid")  # over all patches of the set (see ``evaluate``)
NO_REFERENCE_METRICS = ("niqe",)  # need no ground truth
PROTOCOLS = ("auto", "synthetic", "paired", "no-reference")


def check_metrics(metrics: list[str]) -> list[str]:
    """Return ``metrics`` or raise ValueError naming the unknown ones."""
    unknown = [m for m in metrics if m not in PER_IMAGE_METRICS + SET_METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; choose from {', '.join(PER_IMAGE_METRICS + SET_METRICS)}")
    return metrics


def no_reference_metrics(metrics: list[str]) -> tuple[list[str], list[str]]:
    """(the metrics of ``metrics`` that need no ground truth, or ["niqe"] if none; those left out)."""
    kept = [m for m in metrics if m in NO_REFERENCE_METRICS]
    return kept or list(NO_REFERENCE_METRICS), [m for m in metrics if m not in NO_REFERENCE_METRICS]


@dataclass
class Sample:
    name: str
    lq: np.ndarray  # (h,w,3) uint8
    gt: np.ndarray | None  # (H,W,3) uint8; None under the no-reference protocol
    index: int = 0  # place in the whole set (all ranks' parts), which orders the gathered rows


@dataclass
class Dataset:
    name: str
    protocol: str  # synthetic | paired | no-reference
    crop_border: int
    samples: list[Sample]
    errors: list[str] = field(default_factory=list)
    names: list[str] = field(default_factory=list)  # every image of the whole set (all parts), sorted


def _rgb_uint8(path: Path) -> np.ndarray:
    """Read an image as (H,W,3) uint8; greyscale replicated to RGB (as BasicSR reads it)."""
    image = read_image(path)
    rgb = image.rgb.expand(3, -1, -1) if image.rgb.shape[0] == 1 else image.rgb
    if image.bit_depth != 8:
        raise ImageReadError(f"{path}: {image.bit_depth}-bit images are not part of the 8-bit protocol")
    return uint8_hwc(rgb)


def detect_protocol(directory: Path) -> str:
    """The protocol ``protocol="auto"`` picks for a folder (see the module docstring)."""
    if (directory / "HR").is_dir():
        return "paired" if (directory / "LR").is_dir() else "synthetic"
    return "no-reference" if (directory / "LR").is_dir() or directory.name == "LR" else "synthetic"


def load_dataset(directory: str | Path, scale: int, protocol: str = "auto", part: tuple[int, int] = (0, 1),
                 only: set[str] | None = None) -> Dataset:
    """Read a benchmark folder. Per-file problems are collected in ``errors``; the rest is kept.

    ``part=(rank, world)`` reads only images rank, rank + world, ... of the sorted set (problems with
    the set as a whole are reported in part 0); ``only``: read just the images with these names.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"{directory}: no such folder")
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, not {protocol!r}")
    protocol = detect_protocol(directory) if protocol == "auto" else protocol
    name = directory.parent.name if directory.name in ("HR", "LR") else directory.name
    if protocol == "paired":
        if not ((directory / "HR").is_dir() and (directory / "LR").is_dir()):
            raise DataError(f"{directory}: the paired protocol needs HR/ and LR/ folders")
        return _paired(directory, name, scale, part, only)
    sub = "HR" if protocol == "synthetic" else "LR"
    folder = directory / sub if (directory / sub).is_dir() else directory
    paths = list_images([folder])
    if not paths:
        raise DataError(f"{folder}: no images found (expected image files, or HR/ and/or LR/ folders)")
    dataset = Dataset(name, protocol, scale if protocol == "synthetic" else 0, [], names=[p.name for p in paths])
    for index, path in _share(list(enumerate(paths)), part, only, lambda p: p.name):
        try:
            image = _rgb_uint8(path)
            if protocol == "no-reference":
                dataset.samples.append(Sample(path.name, image, None, index))
                continue
            if min(image.shape[:2]) < scale:
                raise ImageReadError(f"{path}: {image.shape[1]}x{image.shape[0]} is smaller than the scale {scale}")
            gt = modcrop(image, scale)
            dataset.samples.append(Sample(path.name, imresize(gt, scale=1 / scale), gt, index))
        except ImageReadError as error:
            dataset.errors.append(str(error))
    return dataset


def _share(indexed: list, part: tuple[int, int], only: set[str] | None, name) -> list:
    """The (index, x) pairs of ``part`` = (rank, world), or those named in ``only``."""
    if only is not None:
        return [(i, x) for i, x in indexed if name(x) in only]
    rank, world = part
    return indexed[rank::world]


def _paired(directory: Path, name: str, scale: int, part: tuple[int, int], only: set[str] | None) -> Dataset:
    hr_paths = {p.name: p for p in list_images([directory / "HR"])}
    lr_paths = {p.name: p for p in list_images([directory / "LR"])}
    if not hr_paths:
        raise DataError(f"{directory / 'HR'}: no images found")
    keys = sorted(set(hr_paths) & set(lr_paths))
    dataset = Dataset(name, "paired", 0, [], names=keys)
    for missing in sorted(set(hr_paths) ^ set(lr_paths)) if part[0] == 0 and only is None else []:
        side = "LR" if missing in hr_paths else "HR"
        dataset.errors.append(f"{directory / ('HR' if side == 'LR' else 'LR') / missing}: "
                              f"no matching file in {side}/")
    for index, key in _share(list(enumerate(keys)), part, only, lambda k: k):
        try:
            gt, lq = _rgb_uint8(hr_paths[key]), _rgb_uint8(lr_paths[key])
            expected = (lq.shape[0] * scale, lq.shape[1] * scale)
            if gt.shape[:2] != expected:
                raise ImageReadError(f"{lr_paths[key]}: LR {lq.shape[1]}x{lq.shape[0]} x{scale} does not "
                                     f"match HR {gt.shape[1]}x{gt.shape[0]}")
            dataset.samples.append(Sample(key, lq, gt, index))
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


def score(sr: np.ndarray, gt: np.ndarray | None, crop_border: int, metrics: list[str], device) -> dict:
    """The per-image ``metrics`` of ``sr`` against ``gt`` (uint8 HWC); ``gt`` None: no-reference ones only."""
    if gt is None:
        return {"niqe": float(_niqe(sr, crop_border))} if "niqe" in metrics else {}
    values = image_metrics(sr, gt, crop_border)
    row = {k: v for k, v in values.items() if k.split("_")[0] in metrics}
    if "hf" in metrics:
        row["hf_ratio"] = high_frequency_ratio(sr, gt)
    perceptual = [m for m in metrics if m in ("lpips", "lpips_vgg", "dists", "niqe")]
    if perceptual:
        from flowsr import perceptual as P

        sr_t, gt_t = _tensor(sr, device), _tensor(gt, device)
        if "lpips" in perceptual:
            row["lpips"] = float(P.lpips(sr_t, gt_t, net="alex"))
        if "lpips_vgg" in perceptual:
            row["lpips_vgg"] = float(P.lpips(sr_t, gt_t, net="vgg"))
        if "dists" in perceptual:
            row["dists"] = float(P.dists(sr_t, gt_t))
        if "niqe" in perceptual:
            row["niqe"] = float(_niqe(sr, crop_border))
    return row


@dataclass
class Reference:
    """A teacher whose N-step Euler output, from the same source noise as the evaluated model, every
    output is also scored against (``ref_psnr_y``, ``ref_lpips``): how well a student copied it.

    ``guidance=None`` takes, per evaluated model, the CFG scale it was distilled with
    (``config.training["teacher_guidance"]``: the teacher's guidance, or ``mf_omega / (1 - mf_kappa)`` for a
    MeanFlow student of ``mf_target=conditional``; 1 when absent). Outputs are cached per image, seed and
    guidance, so a sweep computes each reference image once.
    """

    upscaler: Upscaler
    steps: int = 32
    guidance: float | None = None
    cache: dict = field(default_factory=dict)
    lpips: bool = field(init=False)  # ref_lpips only when the LPIPS weights are installed

    def __post_init__(self) -> None:
        from flowsr.perceptual import available_metrics

        self.lpips = "lpips_alex" in available_metrics()

    def guidance_for(self, model: Upscaler) -> float:
        if self.guidance is not None:
            return self.guidance
        training = model.config.training if model.config else {}
        return float(training.get("teacher_guidance", 1.0))

    def check(self, model: Upscaler) -> None:
        """Raise ValueError unless the reference is a flow teacher sharing ``model``'s scale and source."""
        ref = self.upscaler
        if ref.config is None or ref.config.kind != "flow":
            raise ValueError(f"--reference {ref.name}: must be a flow teacher (its N-step Euler output is the "
                             "reference)")
        if ref.scale != model.scale:
            raise ValueError(f"--reference {ref.name} is x{ref.scale}, {model.name} is x{model.scale}")
        noisy = model.config is not None and model.config.kind not in ("regression", "sr")
        if noisy and model.config.sigma_p != ref.config.sigma_p:
            raise ValueError(f"--reference {ref.name}: sigma_p {ref.config.sigma_p} differs from {model.name}'s "
                             f"{model.config.sigma_p}, so their source noise differs")
        if noisy and model.start_origin != ref.start_origin:
            raise ValueError(f"--reference {ref.name} starts from {ref.config.start}, {model.name} from "
                             f"{model.config.start}: their flows differ")

    def output(self, lq: torch.Tensor, name: str, seed: int, guidance: float, tile: int) -> np.ndarray:
        """The reference output (uint8 HWC) for one image, from the evaluated row's per-image seed."""
        key = (name, seed, guidance)
        if key not in self.cache:
            settings = Settings(steps=self.steps, guidance=guidance, sampler="euler")
            sr = self.upscaler.upscale_tensor(lq, settings, seed=image_seed(seed, name), tile=tile)
            self.cache[key] = uint8_hwc(sr[0])
        return self.cache[key]


def _niqe(sr: np.ndarray, crop_border: int) -> float:
    from flowsr import perceptual

    try:
        return perceptual.niqe(sr, crop_border=crop_border)
    except ValueError as error:  # too small for two NIQE blocks
        raise DataError(str(error)) from None


def evaluate(upscaler: Upscaler, dataset: Dataset, settings: Settings, metrics: list[str],
             seed: int = 0, save: Path | None = None, tile: int = 0, keep: tuple[str, ...] = (),
             fid_patch: int = 64, reference: Reference | None = None,
             place: distributed.Ranks = distributed.ONE_PROCESS, progress=None) -> dict | None:
    """Run one model configuration over a dataset; returns the JSON-ready result row.

    Per-image metrics are averaged over images. ``fid``/``kid`` are set metrics: computed once between
    all non-overlapping ``fid_patch``-pixel crops of the outputs and of the ground truths (after the
    border crop), as SR papers do for small test sets; the row's ``fid_patches`` gives their number.
    With a ``reference``, each output is also scored against the reference teacher's output from the
    same source noise: ``ref_psnr_y`` (crop as the protocol) and ``ref_lpips``.
    Outputs of the images named in ``keep`` are returned under ``"images"`` (uint8 HWC; not JSON).

    Sharded (``place`` = :func:`flowsr.distributed.start`'s ranks under ``torchrun``): every rank
    calls this with its part of the set (``load_dataset(part=(rank, world))``); the per-image rows
    (whatever keys they hold), the timings and the crops for fid/kid are gathered on rank 0, which
    returns the row of the whole set, computed as one process computes it; the other ranks return None.
    ``progress(done, total)``, if given, is called after each of this process's images is scored.
    """
    resolved = upscaler.resolve(settings)
    check_metrics(metrics)
    if reference is not None:
        reference.check(upscaler)
        ref_guidance = reference.guidance_for(upscaler)
    if dataset.protocol == "no-reference" and set(metrics) - set(NO_REFERENCE_METRICS):
        raise DataError(f"{dataset.name}: no ground truth for {sorted(set(metrics) - set(NO_REFERENCE_METRICS))}")
    part = _score_part(upscaler, dataset, resolved, metrics, seed, save, tile, keep,
                       (reference, ref_guidance) if reference is not None else None, progress)
    parts = distributed.gather(part, place)
    if parts is None:
        return None
    scored = sorted((row for part in parts for row in part["rows"]), key=lambda row: row[0])
    per_image = [row for _, row, _ in scored]
    keys = list(dict.fromkeys(k for row in per_image for k in row if k != "name"))
    averages = {k: float(np.mean([row[k] for row in per_image if k in row])) for k in keys}
    extra = {}
    set_level = [m for m in metrics if m in SET_METRICS]
    if set_level and scored:
        from flowsr.perceptual import fid_kid

        crops = [_border_cropped(*pair, dataset.crop_border) for _, _, pair in scored]
        values = fid_kid([c[0] for c in crops], [c[1] for c in crops], patch=fid_patch)
        if values["n"] < 2:
            raise DataError(f"{dataset.name}: fewer than 2 crops of {fid_patch} pixels for fid/kid")
        averages.update({m: values[m] for m in set_level})
        extra = {"fid_patch": fid_patch, "fid_patches": values["n"]}
    kind = upscaler.config.kind if upscaler.config else "bicubic"
    kept = {name: image for part in parts for name, image in part["kept"].items()}
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
        "seconds_per_image": sum(part["seconds"] for part in parts) / max(1, len(per_image)),
        "device": str(upscaler.device),
        "seed": seed,
        "per_image": per_image,
        **({"reference": {"model": reference.upscaler.name, "steps": reference.steps, "guidance": ref_guidance}}
           if reference is not None else {}),
        **({"images": kept} if keep else {}),
    }


def _tensor(image: np.ndarray, device) -> torch.Tensor:
    """uint8 HWC -> (1, 3, H, W) float in [0, 1] on ``device``."""
    return torch.from_numpy(image).permute(2, 0, 1).float().div(255)[None].to(device)


def _against_reference(sr: np.ndarray, ref: np.ndarray, crop_border: int, device, lpips: bool) -> dict:
    """``ref_psnr_y`` and (with ``lpips``) ``ref_lpips`` of an output against the reference output (uint8 HWC)."""
    from flowsr import perceptual as P
    from flowsr.metrics import psnr

    row = {"ref_psnr_y": psnr(sr, ref, crop_border=crop_border)}
    if lpips:
        row["ref_lpips"] = float(P.lpips(_tensor(sr, device), _tensor(ref, device), net="alex"))
    return row


def _score_part(upscaler: Upscaler, dataset: Dataset, resolved: Settings, metrics: list[str], seed: int,
                save: Path | None, tile: int, keep: tuple[str, ...], reference: tuple[Reference, float] | None,
                progress=None) -> dict:
    """Upscale and score this process's samples: {"rows": [(index, per-image row, (sr, gt) or None)],
    "seconds": network time, "kept": {name: sr}}; (sr, gt) uint8 are kept only for set metrics.
    ``reference``: (the reference, its guidance) to score the outputs against too."""
    set_level = any(m in SET_METRICS for m in metrics)
    rows, seconds, kept = [], 0.0, {}
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
        if sample.gt is not None and sr_uint8.shape != sample.gt.shape:
            raise DataError(f"{sample.name}: output {sr_uint8.shape} does not match HR {sample.gt.shape}")
        try:
            row = {"name": sample.name, **score(sr_uint8, sample.gt, dataset.crop_border, metrics, upscaler.device)}
        except DataError as error:
            raise DataError(f"{sample.name}: {error}") from None
        if reference is not None:
            ref = reference[0].output(lq, sample.name, seed, reference[1], tile)
            row.update(_against_reference(sr_uint8, ref, dataset.crop_border, upscaler.device, reference[0].lpips))
        rows.append((sample.index, row, (sr_uint8, sample.gt) if set_level else None))
        if sample.name in keep:
            kept[sample.name] = sr_uint8
        if save is not None:
            write_image(Path(save) / f"{Path(sample.name).stem}.png", sr[0].cpu())
        if progress is not None:
            progress(len(rows), len(dataset.samples))
    return {"rows": rows, "seconds": seconds, "kept": kept}


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
