"""Speed benchmarks: inference latency/throughput/memory/FLOPs, and training step time per objective.

Numbers are printed and written as JSON; they are never asserted in tests. Compare timings only
within one run on one machine.
"""

from __future__ import annotations

import copy
import os
import platform
import resource
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from flowsr.pipeline import Settings, Upscaler


def machine(device: str | torch.device = "cpu", threads: int | None = None) -> str:
    """The machine a measurement ran on, as the JSON records say it: the GPU's name for a CUDA device, else the
    CPU's model name (from /proc/cpuinfo where there is one), its cores and the threads of the run (``threads``,
    default torch's: OMP_NUM_THREADS where set)."""
    if str(device) != "cpu" and torch.cuda.is_available():
        index = torch.device(device).index if str(device).startswith("cuda") else None  # ("auto": the first)
        return torch.cuda.get_device_name(index or 0)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, {threads or torch.get_num_threads()} threads"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_memory_mb(device: torch.device) -> float:
    """CUDA: peak allocated memory; CPU: the process's peak RSS since :func:`_reset_peak_memory`."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak = _proc_status_mb("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB


def _reset_peak_memory(device: torch.device) -> float | None:
    """Start a new peak: CUDA's counter, or on Linux the process's RSS high-water mark (``/proc/self/clear_refs``;
    elsewhere the peak stays the whole process's). Returns the RSS now in MiB on the CPU, else None."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return None
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        return None
    return _proc_status_mb("VmRSS")


def _proc_status_mb(key: str) -> float | None:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024  # kB -> MiB
    except OSError:
        pass
    return None


FLOP_SIDE = 128  # HR side FLOPs are counted at: attention and ESA's pooling make the count per pixel size-dependent


def flops_per_pixel(upscaler: Upscaler, size: int) -> float:
    """Network FLOPs of one evaluation per output pixel (0 for bicubic), counted on a small input."""
    if upscaler.net is None:
        return 0.0
    if upscaler.backend != "torch":
        return upscaler.net.flops_per_pixel  # counted on the torch network at export, as below
    net = getattr(upscaler.net, "_orig_mod", upscaler.net)  # count on the eager module, not a compiled one
    return network_flops_per_pixel(net, upscaler.config, upscaler.device)


def network_flops_per_pixel(net: torch.nn.Module, config, device="cpu") -> float:
    """FLOPs of one call of a torch network per output pixel, at an output of :data:`FLOP_SIDE` squared
    (``flowsr export`` records this figure for the bench of its ONNX models)."""
    side = FLOP_SIDE
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        if config.kind == "sr":  # a feed-forward SR network runs on the LR image
            net(torch.zeros(1, 3, side // config.scale, side // config.scale, device=device))
        else:
            x = torch.zeros(1, 3, side, side, device=device)
            net(x, torch.zeros(1, device=x.device), x, h=torch.zeros(1, device=x.device))
    return counter.get_total_flops() / side**2


def model_flops_per_pixel(upscaler: Upscaler, settings: Settings) -> float:
    """FLOPs per output pixel of one upscale with ``settings``: the network times its NFE, plus the start
    network's single pass for a model with one."""
    start = model_flops_per_pixel(upscaler.start, Settings()) if upscaler.start is not None else 0.0
    return flops_per_pixel(upscaler, 128) * upscaler.nfe(settings) + start


def matmul_tflops(device: torch.device, n: int | None = None, repeat: int | None = None,
                  dtype: torch.dtype = torch.bfloat16) -> float:
    """Measured matrix-multiply rate in ``dtype`` (the device's practical matrix-throughput limit): n x n
    products, n = 8192 on a GPU, 2048 on the CPU."""
    cpu = device.type == "cpu"
    n, repeat = n or (2048 if cpu else 8192), repeat or (3 if cpu else 10)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(1 if cpu else 3):
        a @ b
    _sync(device)
    begin = time.perf_counter()
    for _ in range(repeat):
        a @ b
    _sync(device)
    return 2 * n**3 * repeat / (time.perf_counter() - begin) / 1e12


def bench_inference(upscaler: Upscaler, settings: Settings, size: int = 512, batch: int = 1,
                    warmup: int = 2, repeat: int = 10) -> dict:
    """Latency per image (median, p90) for ``batch`` LR images giving ``size``x``size`` outputs.

    The warm-up calls (not timed) also absorb ``torch.compile``'s compilation. The memory peak counts from
    the first warm-up call: on CUDA the allocated memory, on the CPU the process's RSS (libraries and
    loaded models included; ``working_memory_mb`` is the peak less the RSS before the row, so memory an
    earlier row of the same process left mapped is not counted again: for a clean peak, one row per run).
    """
    device = upscaler.device
    lq = torch.rand(batch, 3, size // upscaler.scale, size // upscaler.scale)
    rss_before = _reset_peak_memory(device)
    for _ in range(warmup):
        upscaler.upscale_tensor(lq, settings, seed=0)
    times = []
    for index in range(repeat):
        _sync(device)
        begin = time.perf_counter()
        upscaler.upscale_tensor(lq, settings, seed=index)
        _sync(device)
        times.append((time.perf_counter() - begin) / batch)
    times.sort()
    latency = statistics.median(times)
    nfe = upscaler.nfe(settings)
    flops = model_flops_per_pixel(upscaler, settings) * size * size
    resolved = upscaler.resolve(settings)
    peak = _peak_memory_mb(device)
    row = {
        "model": upscaler.name, "kind": upscaler.config.kind if upscaler.config else "bicubic",
        "steps": resolved.steps, "t": resolved.t, "nfe": nfe, "size": size, "batch": batch,
        "start": upscaler.config.start if upscaler.config else "-",
        "device": str(device), "dtype": str(upscaler.dtype).replace("torch.", ""),
        "backend": upscaler.backend, "compile": getattr(upscaler, "compile_mode", "none"),
        "threads": torch.get_num_threads(),
        "latency_ms_median": 1000 * latency, "latency_ms_p90": 1000 * times[int(0.9 * (len(times) - 1))],
        "megapixels_per_s": size * size / 1e6 / latency, "peak_memory_mb": peak,
        "working_memory_mb": None if rss_before is None else peak - rss_before,
        "gflops_per_image": flops / 1e9, "achieved_tflops": flops / latency / 1e12,
    }
    if upscaler.backend == "onnxruntime":  # the session's settings (flowsr.onnx_backend.OrtOptions)
        options = upscaler.net.options
        row.update(dtype=upscaler.net.dtype, compile="-", threads=upscaler.net.threads,
                   ort_optimization=options.optimization, ort_execution=options.execution)
    return row


def train_step_flops(cfg, device: torch.device) -> float:
    """FLOPs of one training step of ``cfg`` (loss forward and backward at its batch and crop, teacher and
    JVP included), counted by ``torch.utils.flop_counter`` (matmuls and convolutions) on eager networks."""
    from flowsr.nets import UNet
    from flowsr.train import build_loss

    net = UNet(cfg.net).to(device)
    teacher = UNet(cfg.net).to(device).requires_grad_(False).eval() if cfg.objective in ("oftsr", "meanflow") else None
    gt = torch.rand(cfg.batch_size, 3, cfg.crop, cfg.crop, device=device) * 2 - 1
    with torch.random.fork_rng(devices=[]), FlopCounterMode(display=False) as counter:
        torch.manual_seed(0)  # the same random draws (MeanFlow: how many rows get the JVP) for every count
        loss, _ = build_loss(cfg, teacher)(net, {"gt": gt, "cond": gt.clone()})
        loss.backward()
    return counter.get_total_flops()


def train_loss_seconds(cfg, device: torch.device, steps: int = 10, warmup: int = 3) -> float:
    """Median seconds of the loss forward and backward alone of ``cfg``'s objective (teacher and JVP included)
    on one random batch at its batch size and crop, in the precision and memory format its path trains in
    (:func:`flowsr.train.runtime_options`; eager): no data feed, optimizer, EMA or host sync. A path's
    training step cannot be shorter than this, so ``old step / this`` bounds the speed-up of an eager path."""
    from flowsr.nets import UNet
    from flowsr.objectives import freeze
    from flowsr.train import build_loss, runtime_options

    bf16, channels_last, _ = runtime_options(cfg, device)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    net = UNet(cfg.net).to(device, memory_format=layout)
    teacher = (freeze(UNet(cfg.net).to(device, memory_format=layout)) if cfg.objective in ("oftsr", "meanflow")
               else None)
    gt = (torch.rand(cfg.batch_size, 3, cfg.crop, cfg.crop, device=device) * 2 - 1).contiguous(memory_format=layout)
    batch = {"gt": gt, "cond": gt.clone(memory_format=layout)}
    loss_fn = build_loss(cfg, teacher)
    times = []
    for index in range(warmup + steps):
        _sync(device)
        begin = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss, _ = loss_fn(net, batch)
        loss.backward()
        net.zero_grad(set_to_none=True)
        _sync(device)
        if index >= warmup:
            times.append(time.perf_counter() - begin)
    return statistics.median(times)


def train_speed(cfg, out, steps: int = 20, log_every: int = 5) -> dict:
    """Steps/s and crops/s of ``flowsr.train.train`` itself on ``cfg`` (its path, data feed and runtime
    options, as a real run): ``2 steps`` steps into the new directory ``out``, timed over the last ``steps``
    (the first ones absorb start-up and compilation). What the run prints goes to ``out.out`` beside it."""
    import contextlib

    from flowsr.train import read_log, train

    steps = -(-steps // log_every) * log_every
    cfg = copy.deepcopy(cfg)
    cfg.max_steps, cfg.log_every, cfg.ckpt_every, cfg.val_images, cfg.time_limit = 2 * steps, log_every, 10**9, 0, 0.0
    with open(out.with_name(out.name + ".out"), "w") as log:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            train(cfg, out)
    rows = [row for row in read_log(out) if "it_per_s" in row and row["step"] > steps]
    rate = steps / sum(log_every / row["it_per_s"] for row in rows)
    return {"steps_per_s": rate, "crops_per_s": rate * cfg.batch_size,
            "loss_first": read_log(out)[0]["loss"], "loss_last": rows[-1]["loss"]}


@torch.no_grad()
def bench_forward(net, batch: dict, steps: int = 5, warmup: int = 2) -> float:
    """Median seconds of one network evaluation on ``batch`` (bf16 autocast on CUDA)."""
    device = batch["gt"].device
    net = net.eval()
    t = torch.zeros(batch["gt"].shape[0], device=device)
    times = []
    for index in range(warmup + steps):
        _sync(device)
        begin = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            net(batch["cond"], t, batch["cond"])
        _sync(device)
        if index >= warmup:
            times.append(time.perf_counter() - begin)
    return statistics.median(times)


def format_rows(rows: list[dict], keys: list[str]) -> str:
    lines = [keys] + [[_fmt(row.get(k)) for k in keys] for row in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(keys))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)) for line in lines)


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)
