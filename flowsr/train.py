"""One training loop for every objective: CPU, one GPU, or several with ``torchrun`` (DDP).

The loop never branches on the objective: ``build_loss`` binds the objective's hyper-parameters (and
the frozen teacher, for distillation) into a ``loss_fn(net, batch) -> (loss, logs)``.
Checkpoints hold the model, EMA, optimizer, step, every RNG state and how many crops each rank has
drawn, so ``--resume`` continues the exact same run (same crops, same noise, same loss sequence),
whether the crops come from memory or are streamed by loader workers (``flowsr.data``).

Two paths through the same loop (``TrainConfig.fast``, issue 21). ``fast=false`` is the loop as it was:
crops cut on the host, the loss checked for NaN/Inf every step (a host sync), EMA parameter by parameter.
``fast=true``: in-memory images live on the training device and each batch is cut there
(``flowsr.data.DeviceCrops``); no host sync per step (the losses of the last ``log_every`` steps are
checked at each log row and before every checkpoint, so a diverged run still never overwrites the last
good checkpoint); fused AdamW, foreach EMA and gradient clipping; and bf16 autocast, channels-last and
``torch.compile`` where they pay (:func:`runtime_options`).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import time
from dataclasses import asdict
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from flowsr import objectives
from flowsr.checkpoint import (
    ModelLoadError,
    load_model_dir,
    load_training_checkpoint,
    remove_stale_temporaries,
    save_model_dir,
    save_training_checkpoint,
)
from flowsr.config import ModelConfig, TrainConfig
from flowsr.data import crop_batches, make_batch, uint8_hwc
from flowsr.io import read_image
from flowsr.metrics import psnr
from flowsr.nets import UNet, count_parameters
from flowsr.ops import imresize, modcrop

KIND_OF_OBJECTIVE = {"flow_matching": "flow", "regression": "regression", "oftsr": "oftsr",
                     "meanflow": "meanflow"}


class TrainingDiverged(RuntimeError):
    """The loss became NaN or Inf; the last good checkpoint is kept."""


def build_loss(cfg: TrainConfig, teacher=None):
    """The objective of ``cfg`` as ``loss_fn(net, batch) -> (loss, logs)``."""
    if cfg.objective == "flow_matching":
        return partial(objectives.flow_matching_loss, sigma_p=cfg.sigma_p, p_drop=cfg.p_drop,
                       loss=cfg.loss, time_sampler=cfg.time_sampler, weighting=cfg.weighting)
    if cfg.objective == "regression":
        return partial(objectives.regression_loss)
    if cfg.objective == "oftsr":
        return partial(objectives.oftsr_loss, teacher=teacher, sigma_p=cfg.sigma_p, s_min=cfg.s_min,
                       s_max=cfg.s_max, delta=cfg.delta, w_boundary=cfg.w_boundary, w_align=cfg.w_align)
    return partial(objectives.meanflow_loss, teacher=teacher, guidance=cfg.guidance,
                   target=cfg.mf_target, omega=cfg.mf_omega, kappa=cfg.mf_kappa, sigma_p=cfg.sigma_p,
                   p_equal=cfg.p_equal, p_grid=cfg.mf_p_grid, student_states=cfg.mf_student_states,
                   adaptive_p=cfg.adaptive_p, adaptive_c=cfg.adaptive_c, p_drop=cfg.p_drop)


def start_cache_dir(sha: str) -> Path | None:
    """Where the start images of one start network are kept between runs (``$FLOWSR_CACHE``, else
    ``~/.cache/flowsr``; ``FLOWSR_CACHE=off``: not kept, e.g. on a fresh GPU machine); None for the bicubic
    start."""
    if os.environ.get("FLOWSR_CACHE") == "off":
        return None
    root = Path(os.environ.get("FLOWSR_CACHE") or Path.home() / ".cache" / "flowsr")
    return root / f"start-{sha[:16]}" if sha else None


def model_config(cfg: TrainConfig, training: dict, start_sha256: str = "") -> ModelConfig:
    kind = KIND_OF_OBJECTIVE[cfg.objective]
    steps = cfg.default_steps or (4 if kind == "flow" else 1)
    return ModelConfig(kind=kind, scale=cfg.scale, net=copy.deepcopy(cfg.net), sigma_p=cfg.sigma_p,
                       default_steps=steps, name=cfg.preset, training=training, start=cfg.start,
                       start_sha256=start_sha256)


def load_start_network(cfg: TrainConfig, device):
    """The frozen start network of a run (``cfg.start``), as a loaded one-pass model, and its weights'
    SHA-256; (None, "") for the bicubic start."""
    if cfg.start == "bicubic":
        return None, ""
    from flowsr.catalog import start_path, weights_sha256
    from flowsr.pipeline import load_start

    sha = weights_sha256(start_path(None, cfg.start))
    probe = ModelConfig(kind="flow", scale=cfg.scale, net=cfg.net, start=cfg.start, start_sha256=sha)
    return load_start(None, probe, device=str(device), dtype="fp32"), sha


def lr_at(cfg: TrainConfig, step: int, elapsed: float = 0.0) -> float:
    """Linear warm-up, then cosine decay to ``lr * lr_min_ratio`` at ``max_steps`` (or at
    ``time_limit`` seconds, whichever comes first)."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.max_steps - cfg.warmup)
    if cfg.time_limit > 0:
        progress = min(1.0, max(progress, elapsed / cfg.time_limit))
    return cfg.lr * (cfg.lr_min_ratio + (1 - cfg.lr_min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def ema_update(ema: torch.nn.Module, net: torch.nn.Module, decay: float, foreach: bool = False) -> None:
    """``ema <- ema + (1 - decay) (net - ema)`` for each parameter (``foreach``: in one batched op, the
    same numbers); buffers are copied."""
    if foreach:
        torch._foreach_lerp_(list(ema.parameters()), [p.detach() for p in net.parameters()], 1 - decay)
    else:
        for target, value in zip(ema.parameters(), net.parameters()):
            target.lerp_(value.detach(), 1 - decay)
    for target, value in zip(ema.buffers(), net.buffers()):
        target.copy_(value)


# What the fast path turns on on the CPU ("auto"): bf16 autocast (oneDNN runs bf16 convolutions natively on
# AVX-512 BF16 / AMX CPUs) and channels-last both shortened a tiny-preset step of every objective, eager; together
# 1.3-1.5x with fused AdamW (2 threads, idle); torch.compile adds 0-10 % after about a minute of compiling, so it
# stays off here. Loss curves and measurements: docs/cpu/train_paths.
CPU_BF16 = True
CPU_CHANNELS_LAST = True


def runtime_options(cfg: TrainConfig, device: torch.device) -> tuple[bool, bool, bool]:
    """(bf16 autocast, channels-last, torch.compile) of a run: ``amp``, ``channels_last`` and ``compile``
    as set, "auto" resolved for the device (``fast=false``: bf16 and channels-last on CUDA only, no
    compile; ``fast=true``: compile on CUDA too, and on the CPU what :data:`CPU_BF16` and
    :data:`CPU_CHANNELS_LAST` say)."""
    cuda = device.type == "cuda"
    bf16 = cfg.amp == "bf16" or (cfg.amp == "auto" and (cuda or (cfg.fast and CPU_BF16 and _native_bf16())))
    # (on the CPU not with GroupNorm: MeanFlow's forward-mode JVP through it fails on channels-last CPU tensors)
    cpu_channels_last = cfg.fast and CPU_CHANNELS_LAST and cfg.net.norm == "channel"
    channels_last = cfg.channels_last and (cuda or cpu_channels_last)
    compiled = cfg.compile == "true" or (cfg.compile == "auto" and cfg.fast and cuda)
    return bf16, channels_last, compiled


def _native_bf16() -> bool:
    """Whether oneDNN runs bf16 natively on this CPU (AVX-512 BF16 or AMX; else bf16 would be emulated, slow)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def make_optimizer(cfg: TrainConfig, net: torch.nn.Module) -> torch.optim.Optimizer:
    """AdamW; on the fast path fused (one kernel for all parameters) where the device has it, else foreach."""
    options = dict(lr=cfg.lr, betas=(0.9, 0.99), weight_decay=cfg.weight_decay)
    if not cfg.fast:
        return torch.optim.AdamW(net.parameters(), **options)
    try:
        return torch.optim.AdamW(net.parameters(), fused=True, **options)
    except RuntimeError:
        return torch.optim.AdamW(net.parameters(), foreach=True, **options)


def host_values(row: dict) -> dict:
    """``row`` with its tensors as Python floats, fetched from the device together (one sync)."""
    keys = [k for k, v in row.items() if isinstance(v, torch.Tensor)]
    values = torch.stack([row[k].detach().double().reshape(()) for k in keys]).tolist() if keys else []
    return {**row, **dict(zip(keys, values, strict=True))}


def _setup_distributed(device_name: str) -> tuple[int, int, torch.device]:
    """(rank, world size, device); initialises the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    use_cuda = device_name == "cuda" or (device_name == "auto" and torch.cuda.is_available())
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    rank = dist.get_rank() if world > 1 else 0
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device("cpu")


def _rng_state(device: torch.device, degrade_generator) -> dict[str, torch.Tensor]:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    if degrade_generator is not None:
        state["degrade"] = degrade_generator.get_state()
    return state


def _gather_rng(state: dict[str, torch.Tensor], world: int) -> dict[str, torch.Tensor]:
    """Every rank's RNG states, keyed ``{name}.{rank}`` (so a DDP run resumes exactly too)."""
    if world == 1:
        return {f"{k}.0": v for k, v in state.items()}
    gathered = [None] * world
    dist.all_gather_object(gathered, state)
    return {f"{k}.{r}": v for r, s in enumerate(gathered) for k, v in s.items()}


def _restore_rng(rng: dict[str, torch.Tensor], rank: int, device, degrade_generator) -> None:
    torch.set_rng_state(rng[f"torch.{rank}"])
    if device.type == "cuda" and f"cuda.{rank}" in rng:
        torch.cuda.set_rng_state(rng[f"cuda.{rank}"], device)
    if degrade_generator is not None and f"degrade.{rank}" in rng:
        degrade_generator.set_state(rng[f"degrade.{rank}"])


def load_trained(spec: str, device) -> tuple[UNet, ModelConfig]:
    """A trained model by directory or bundled name (teacher of a student, or ``init=``)."""
    from flowsr.pipeline import bundled_models

    return load_model_dir(bundled_models().get(spec, Path(spec)), device)


def start_of(spec: str, config: ModelConfig) -> str:
    """The start of the trained model ``spec`` as this process can name it: ``bicubic``, a bundled name,
    or the start's directory (a relative start is relative to the model's directory)."""
    from flowsr.catalog import bundled_models, model_path, start_path

    if config.start == "bicubic" or config.start in bundled_models():
        return config.start
    return str(start_path(model_path(spec), config.start))


def _start_sha(spec: str) -> str:
    from flowsr.catalog import start_path, weights_sha256

    return "" if spec == "bicubic" else weights_sha256(start_path(None, spec))


def load_teacher(spec: str, device) -> tuple[UNet, ModelConfig]:
    teacher, config = load_trained(spec, device)
    if config.kind != "flow":
        raise ModelLoadError(f"{spec}: a teacher must be a flow model, this one is {config.kind!r}")
    return teacher, config


@torch.no_grad()
def validate(net: UNet, model_cfg: ModelConfig, images: list[np.ndarray], device, start=None) -> float:
    """Mean PSNR-Y (crop = scale) of the model's default sampler on HR images (uint8 HWC); ``start``: the
    loaded start network of a start-network model."""
    from flowsr.pipeline import Upscaler

    upscaler = Upscaler(net, model_cfg, "validation", device=str(device), dtype="fp32", start=start)
    scores = []
    for index, hr in enumerate(images):
        lq = torch.from_numpy(imresize(hr, scale=1 / model_cfg.scale)).permute(2, 0, 1)[None] / 255
        sr = upscaler.upscale_tensor(lq.float(), seed=index)[0]
        scores.append(psnr(uint8_hwc(sr), hr, crop_border=model_cfg.scale))
    return float(np.mean(scores))


def _validation_images(cfg: TrainConfig) -> list[np.ndarray]:
    if not cfg.val_data or cfg.val_images <= 0 or not Path(cfg.val_data).is_dir():
        return []
    from flowsr.data import find_images

    images = []
    for path in find_images(cfg.val_data)[: cfg.val_images]:
        rgb = read_image(path).rgb
        rgb = rgb.expand(3, -1, -1) if rgb.shape[0] == 1 else rgb
        images.append(modcrop(uint8_hwc(rgb), cfg.scale))
    return images


LOCK_NAME = ".train.lock"  # held (flock) by the run using a directory, removed when it ends
FIRST_FILES = {"train_config.json", "log.jsonl", "tensorboard", LOCK_NAME}  # a run's, before its first checkpoint


ORPHAN_WAIT = 30.0  # seconds to wait for the workers of a killed run to let the lock go


def _alive(pid: str) -> bool:
    """Whether the process ``pid`` (text from the lock file) exists; True when it cannot be told."""
    try:
        os.kill(int(pid), 0)
    except (ValueError, PermissionError):
        return True
    except ProcessLookupError:
        return False
    return True


# what a resumed run may change: limits, logging, the end of the LR schedule, and how it runs (not what it learns)
RESUMABLE_CHANGES = {"max_steps", "time_limit", "lr_min_ratio", "log_every", "val_every", "val_images", "val_data",
                     "ckpt_every", "device", "amp", "compile", "channels_last", "deterministic", "data_mode",
                     "data_memory_mb", "num_workers"}


def check_resume(cfg: TrainConfig, checkpoint: Path) -> None:
    """ValueError naming the first setting that differs from the checkpoint's run, unless it is one of
    :data:`RESUMABLE_CHANGES` (a changed objective, scale or network would train another task, and write
    a config.json that no command can load). Reads only the checkpoint's JSON header."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(checkpoint), "pt") as handle:
            saved = json.loads((handle.metadata() or {}).get("meta", "{}")).get("config")
    except (SafetensorError, OSError, ValueError, AttributeError):
        return  # load_training_checkpoint reports an unreadable checkpoint
    if not isinstance(saved, dict):
        return  # a checkpoint from before the config was stored

    def flat(config: dict, prefix: str = "") -> dict:
        out = {}
        for key, value in config.items():
            out.update(flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key: value})
        return out

    now, before = flat(json.loads(json.dumps(asdict(cfg)))), flat(saved)
    changed = [key for key in now if key not in RESUMABLE_CHANGES and key in before and now[key] != before[key]]
    if changed:
        key = changed[0]
        more = f" (and {len(changed) - 1} more)" if len(changed) > 1 else ""
        raise ValueError(f"{checkpoint}: --resume cannot change {key}{more}: the run has {before[key]!r}, this run "
                         f"asks {now[key]!r}; resume with the settings of {checkpoint.parent / 'train_config.json'} "
                         "(only limits, logging and the LR schedule's end may change), or start a new --out")


class RunInUse(RuntimeError):
    """Another ``flowsr train`` holds the run directory's lock."""


def train(cfg: TrainConfig, out: str | Path, resume: bool = False) -> Path:
    """Train ``cfg`` into ``out``; returns the model directory (``out`` itself).

    ``out`` receives ``model.safetensors`` + ``config.json`` (EMA weights), ``checkpoint.safetensors``
    (everything to resume), ``log.jsonl`` and ``train_config.json``. ``out`` must be new, empty or a
    run's (resumable with ``resume=True``); another directory, e.g. a model's, is refused, and so is
    one that another run is using (the run holds a lock on ``out/.train.lock`` while it lives).
    """
    cfg.validate()
    is_main = int(os.environ.get("RANK", "0")) == 0
    with run_lock(Path(out)) if is_main else contextlib.nullcontext():
        return _train(cfg, Path(out), resume)


@contextlib.contextmanager
def run_lock(out: Path):
    """Hold ``out/.train.lock`` (created with ``out``) for the block; RunInUse if another process has it."""
    import fcntl

    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_NAME
    deadline = time.monotonic() + ORPHAN_WAIT
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
            os.close(fd)
            if not _alive(holder) and time.monotonic() < deadline:
                # the run was killed; its DataLoader workers (forked: they share the lock) exit on their own
                time.sleep(0.2)
                continue
            raise RunInUse(f"{out}: another flowsr train (pid {holder}) is using this directory; "
                           "wait for it or choose another --out") from None
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break  # else the previous holder removed the file between our open and flock: retry
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        os.close(fd)


def _train(cfg: TrainConfig, out: Path, resume: bool) -> Path:
    rank, world, device = _setup_distributed(cfg.device)
    is_main = rank == 0
    checkpoint_path = out / "checkpoint.safetensors"
    if is_main and not resume and checkpoint_path.exists():
        raise FileExistsError(f"{out}: already holds a training run; pass --resume to continue it "
                              "or choose another --out")
    others = sorted(p.name for p in out.iterdir() if not (p.name.startswith(".") and p.name.endswith(".tmp"))
                    ) if is_main and out.is_dir() else []
    if is_main and not checkpoint_path.exists() and not set(others) <= FIRST_FILES:
        shown = ", ".join(n for n in others if n not in FIRST_FILES)
        raise FileExistsError(f"{out}: not empty and not a training run (it holds {shown[:200]}); "
                              "choose a new or empty --out")
    if resume and not checkpoint_path.exists():
        raise FileNotFoundError(f"{checkpoint_path}: nothing to resume")
    torch.manual_seed(cfg.seed * 1000 + rank)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)

    # networks: a student starts as a copy of its teacher (interval embedding zero: exact at h=0)
    teacher = None
    if cfg.objective in ("oftsr", "meanflow") and cfg.teacher:
        teacher, teacher_cfg = load_teacher(cfg.teacher, device)
        cfg.net, cfg.sigma_p, cfg.scale = copy.deepcopy(teacher_cfg.net), teacher_cfg.sigma_p, teacher_cfg.scale
        cfg.start = start_of(cfg.teacher, teacher_cfg)  # a student's flow starts where its teacher's does
    init, before = None, {"steps": 0, "wall_seconds": 0.0}  # training the init model already had
    if cfg.init:
        init, init_cfg = load_trained(cfg.init, device)
        if init_cfg.scale != cfg.scale:
            raise ModelLoadError(f"init={cfg.init}: scale x{init_cfg.scale}, this run trains x{cfg.scale}")
        if _start_sha(start_of(cfg.init, init_cfg)) != _start_sha(cfg.start):
            raise ModelLoadError(f"init={cfg.init} starts from {init_cfg.start}, this run from {cfg.start}; "
                                 f"set start={start_of(cfg.init, init_cfg)}")
        cfg.net = copy.deepcopy(init_cfg.net)
        before = {k: init_cfg.training.get(f"{k}_total", init_cfg.training.get(k, 0)) for k in before}
    if resume:
        check_resume(cfg, checkpoint_path)  # before anything is built or written
    from flowsr.memory import check_training

    check_training(cfg, device)  # a step that cannot fit is refused in one line, not OOM-killed
    net = UNet(cfg.net)
    # weights: the init model's when given, else a student's teacher's
    if init is not None or teacher is not None:
        net.load_state_dict((init if init is not None else teacher).state_dict())
    net.to(device)
    use_bf16, channels_last, use_compile = runtime_options(cfg, device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
        if teacher is not None and cfg.fast:
            teacher = teacher.to(memory_format=torch.channels_last)
    if cfg.fast and device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # the few fp32 matmuls left outside autocast
    ema = copy.deepcopy(net).requires_grad_(False)
    optimizer = make_optimizer(cfg, net)
    start_net, start_sha = load_start_network(cfg, device)  # frozen: the flow's start, computed per batch
    start_fn = start_net.predict if start_net is not None else None

    degrade, deg_generator = None, None
    if cfg.degradation == "realesrgan":
        from flowsr.degradations import RealESRGANConfig
        from flowsr.degradations import degrade as realesrgan

        deg_cfg = (RealESRGANConfig.from_yaml(cfg.degradation_config) if cfg.degradation_config
                   else RealESRGANConfig())
        deg_generator = torch.Generator(device).manual_seed(cfg.seed * 1000 + rank + 1)
        degrade = partial(realesrgan, cfg=deg_cfg, scale=cfg.scale, generator=deg_generator)

    start, wall_before, crops_before = 0, 0.0, 0
    if resume:
        start, meta, rng = load_training_checkpoint(checkpoint_path, net=net, ema=ema, optimizer=optimizer)
        _restore_rng(rng, rank, device, deg_generator)
        wall_before = meta.get("wall_seconds", 0.0)
        crops_before = meta.get("crops_seen", start * cfg.batch_size)
    # the crop stream restarts where the checkpoint left it (the crops are a function of their number)
    batches, data_line = crop_batches(cfg.data, cfg.crop, cfg.batch_size, cfg.seed, rank=rank, world=world,
                                      start=crops_before, mode=cfg.data_mode, memory_mb=cfg.data_memory_mb,
                                      num_workers=cfg.num_workers, pin_memory=device.type == "cuda",
                                      start_net=start_fn if degrade is None else None, scale=cfg.scale,
                                      start_cache=start_cache_dir(start_sha), device=device if cfg.fast else None)
    if cfg.fast and device.type == "cuda":  # after the start images, whose sizes all differ
        torch.backends.cudnn.benchmark = not cfg.deterministic  # static shapes: pick the fastest kernels once
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
        _truncate_log(out / "log.jsonl", start)
        remove_stale_temporaries(out)

    model = net
    if world > 1:
        unused = cfg.objective in ("flow_matching", "regression")  # the interval embedding is idle
        model = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=unused)
    loss_fn = build_loss(cfg, teacher)
    eager = None  # (model, loss_fn) to fall back to if compiling fails at the first step
    if use_compile:
        eager = (model, loss_fn)
        model = torch.compile(model)
        loss_fn = build_loss(cfg, torch.compile(teacher) if teacher is not None else None)
    writer = _tensorboard(out) if is_main else None
    val_images = _validation_images(cfg) if is_main else []
    if is_main:
        print(f"training {cfg.preset} ({cfg.objective}) on {device} x{world}: "
              f"{count_parameters(net) / 1e6:.2f} M parameters, steps {start} -> {cfg.max_steps}")
        print(data_line)

    pending: list[tuple[int, torch.Tensor]] = []  # (step, loss) not yet checked for NaN/Inf

    def check_finite() -> None:
        """TrainingDiverged at the first non-finite loss since the last check (one host sync)."""
        if not pending:
            return
        losses = torch.stack([loss for _, loss in pending]).tolist()
        bad = [(step, value) for (step, _), value in zip(pending, losses, strict=True) if not math.isfinite(value)]
        pending.clear()
        if bad:
            kept = (f"the last good checkpoint ({checkpoint_path}) is kept" if checkpoint_path.exists()
                    else "no checkpoint was written yet; lower lr or check the data")
            raise TrainingDiverged(f"loss is {bad[0][1]} at step {bad[0][0]}; {kept}")

    def save(step: int, wall: float) -> None:
        check_finite()  # a diverged run never overwrites the last good checkpoint
        rng = _gather_rng(_rng_state(device, deg_generator), world)
        if not is_main:
            return
        training = {"preset": cfg.preset, "steps": step, "data": cfg.data, "batch_size": cfg.batch_size * world,
                    "crop": cfg.crop, "wall_seconds": round(wall, 1), "device": _device_name(device),
                    "teacher": cfg.teacher, "init": cfg.init, "degradation": cfg.degradation}
        if cfg.teacher or cfg.objective == "meanflow":  # the CFG scale the student learnt (eval --reference's default)
            training["teacher_guidance"] = cfg.distilled_guidance()
        if cfg.init:  # totals over this run and the runs behind the init model
            training.update(steps_total=before["steps"] + step,
                            wall_seconds_total=round(before["wall_seconds"] + wall, 1))
        crops_seen = crops_before + (step - start) * cfg.batch_size
        save_training_checkpoint(checkpoint_path, net=net, ema=ema, optimizer=optimizer, step=step,
                                 meta={"wall_seconds": wall, "crops_seen": crops_seen, "config": asdict(cfg)},
                                 rng=rng)
        save_model_dir(out, ema, model_config(cfg, training, start_sha))

    def forward_backward(model, loss_fn, batch):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            loss, logs = loss_fn(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        return loss, logs

    started = time.perf_counter()
    progress = tqdm(range(start, cfg.max_steps), initial=start, total=cfg.max_steps,
                    disable=not is_main, dynamic_ncols=True)
    window_start, window_steps = time.perf_counter(), 0
    sync_every = cfg.log_every if cfg.fast else 1  # steps between host syncs (NaN check, DDP time agreement)
    for step in progress:
        elapsed = wall_before + time.perf_counter() - started
        if cfg.time_limit > 0 and (world == 1 or step % sync_every == 0) and _agree(
                elapsed >= cfg.time_limit, world, device):
            save(step, elapsed)
            if is_main:
                progress.write(f"time limit {cfg.time_limit:.0f} s reached at step {step}")
            break
        for group in optimizer.param_groups:
            group["lr"] = lr_at(cfg, step, elapsed)
        batch = make_batch(next(batches), cfg.scale, device, degrade, start_fn)
        if channels_last:
            batch = {k: v.contiguous(memory_format=torch.channels_last) for k, v in batch.items()}
        if eager is None:
            loss, logs = forward_backward(model, loss_fn, batch)
        else:  # the first compiled step, where compiler errors show: on one, train eager
            try:
                loss, logs = forward_backward(model, loss_fn, batch)
            except Exception as error:  # noqa: BLE001 - whatever the compiler raised
                if is_main:
                    reason = (str(error).strip().splitlines() or [""])[0][:200]
                    print(f"torch.compile failed ({type(error).__name__}: {reason}); training eager")
                model, loss_fn = eager
                loss, logs = forward_backward(model, loss_fn, batch)
            eager = None
        pending.append((step, loss.detach()))
        grad_norm = torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip, foreach=cfg.fast or None)
        optimizer.step()
        ema_update(ema, net, min(cfg.ema, (1 + step) / (10 + step)), foreach=cfg.fast)
        window_steps += 1

        done = step + 1
        if done % sync_every == 0 or done == cfg.max_steps:
            check_finite()
        if is_main and (done % cfg.log_every == 0 or done == cfg.max_steps):
            rate = window_steps / (time.perf_counter() - window_start)
            window_start, window_steps = time.perf_counter(), 0
            row = host_values({"step": done, "loss": loss, "lr": optimizer.param_groups[0]["lr"],
                               "grad_norm": grad_norm, "it_per_s": rate, **logs})
            _log(out, writer, row)
            progress.set_postfix(loss=f"{row['loss']:.4f}", it_s=f"{rate:.1f}")
        if done % cfg.ckpt_every == 0 or done == cfg.max_steps:
            save(done, wall_before + time.perf_counter() - started)
        if is_main and val_images and (done % cfg.val_every == 0 or done == cfg.max_steps):
            score = validate(ema, model_config(cfg, {}, start_sha), val_images, device, start_net)
            _log(out, writer, {"step": done, "val_psnr_y": score})
            progress.write(f"step {done}: validation PSNR-Y {score:.2f} dB")
    if start >= cfg.max_steps and is_main:
        print(f"{out}: already trained to step {start} (max_steps={cfg.max_steps})")
    del batches  # stops the loader's worker processes
    if writer is not None:
        writer.close()
    if world > 1:
        dist.barrier()
    return out


def _agree(flag: bool, world: int, device) -> bool:
    """Rank 0's decision, shared with every rank (so all stop at the same step)."""
    if world == 1:
        return flag
    value = torch.tensor([float(flag)], device=device)
    dist.broadcast(value, 0)
    return bool(value.item())


def _device_name(device: torch.device) -> str:
    """``"cpu (N threads of M cores, arch)"`` or the GPU's name: the machine a model was trained on."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"cpu ({torch.get_num_threads()} threads of {os.cpu_count()} cores, {platform.machine()})"


def _log(out: Path, writer, row: dict) -> None:
    with open(out / "log.jsonl", "a") as handle:
        handle.write(json.dumps(row) + "\n")
    if writer is not None:
        for key, value in row.items():
            if key != "step" and isinstance(value, (int, float)):
                writer.add_scalar(key, value, row["step"])


def _truncate_log(path: Path, step: int) -> None:
    """Drop log rows written after the checkpoint we resume from (a killed run may have left some)."""
    if not path.exists():
        return
    kept = [line for line, row in _log_rows(path) if row.get("step", 0) <= step]
    path.write_text("".join(line + "\n" for line in kept))


def _log_rows(path: Path) -> list[tuple[str, dict]]:
    """(line, row) of each complete JSON row of a log; a blank or half-written line (a killed run) is skipped."""
    rows = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append((line, row))
    return rows


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(out / "tensorboard"))


def read_log(out: str | Path) -> list[dict]:
    """Rows of ``log.jsonl`` (training rows and validation rows)."""
    return [row for _, row in _log_rows(Path(out) / "log.jsonl")]
