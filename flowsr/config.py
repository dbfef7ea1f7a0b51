"""Configuration: dataclasses, named presets and ``key=value`` overrides.

A training run is fully described by a :class:`TrainConfig`; a trained model directory by a
:class:`ModelConfig` (written as ``config.json`` beside ``model.safetensors``). Presets are plain
functions returning a ``TrainConfig``; the command line overrides fields with ``key=value``
(nested fields with a dot: ``net.channels=32``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from flowsr import settings
from flowsr.nets import NetConfig, SRNetConfig

OBJECTIVES = ("flow_matching", "regression", "oftsr", "meanflow")
MODEL_KINDS = ("flow", "regression", "oftsr", "meanflow", "sr")  # sr: a feed-forward SR network (BSRN, RLFN)
START_KINDS = ("sr", "regression")  # what a flow may start from besides bicubic: one deterministic pass
SAMPLERS = ("euler", "heun", "one_step", "mean_flow", "regression")


# Every number of a training config, (lowest, highest), both allowed; checked by TrainConfig.validate before
# anything is read or written (flowsr.settings.OPTION_RANGES bounds the command-line options).
TRAIN_RANGES = {
    "scale": (1, settings.MAX_SCALE), "crop": (8, 2048), "batch_size": (1, 4096), "data_memory_mb": (0, 1 << 20),
    "num_workers": (0, 64), "max_steps": (0, 10**9), "time_limit": (0, 10**8), "lr": (0, 1.0),
    "lr_min_ratio": (0, 1), "warmup": (0, 10**9), "weight_decay": (0, 1), "grad_clip": (1e-6, 1e6), "ema": (0, 1),
    "sigma_p": (0, 0.999), "p_drop": (0, 1), "guidance": (0, settings.MAX_GUIDANCE), "s_min": (0, 1), "s_max": (0, 1),
    "delta": (0, 1), "w_boundary": (0, 1e3), "w_align": (0, 1e3), "mf_omega": (0, 100), "mf_kappa": (0, 100),
    "p_equal": (0, 1), "mf_p_grid": (0, 1), "mf_student_states": (0, 1), "adaptive_p": (0, 10),
    "adaptive_c": (1e-12, 10), "default_steps": (0, settings.MAX_STEPS), "seed": (0, 2**63 - 1),
    "log_every": (1, 10**9), "val_every": (1, 10**9), "val_images": (0, 10**4), "ckpt_every": (1, 10**9),
    "net.channels": (1, 1024), "net.channel_mult": (1, 16), "net.num_blocks": (1, 16), "net.dropout": (0, 0.99),
    "net.patch": (1, 16),
}


def check_ranges(config, ranges: dict, what: str = "") -> None:
    """ValueError (one line, naming the key and its range) unless every number of ``config`` named in
    ``ranges`` (``net.channels``: a nested field; a tuple: each entry) lies in its range."""
    for key, (low, high) in ranges.items():
        value = config
        for part in key.split("."):
            value = getattr(value, part, None)
        for item in value if isinstance(value, tuple) else (value,):
            if isinstance(item, (int, float)) and not isinstance(item, bool) and not low <= item <= high:
                raise ValueError(f"{what}{key} must be in [{low:g}, {high:g}], got {item!r}")


def default_train_data() -> str:
    """``../shared/data/train`` beside the current directory when present, else empty."""
    candidate = Path("../shared/data/train")
    return str(candidate) if candidate.is_dir() else ""


def default_val_data() -> str:
    candidate = Path("../shared/data/test/Set5/HR")
    return str(candidate) if candidate.is_dir() else ""


@dataclass
class TrainConfig:
    """Everything a training run needs. Images are HR crops in [0, 1]; the loop maps them to [-1, 1]."""

    preset: str = "tiny-teacher"
    objective: str = "flow_matching"  # one of OBJECTIVES
    net: NetConfig = field(default_factory=NetConfig)
    scale: int = 4
    start: str = "bicubic"  # the flow's start: bicubic, or a start network (bundled name or model dir; see ModelConfig)
    # data
    data: str = field(default_factory=default_train_data)
    val_data: str = field(default_factory=default_val_data)
    degradation: str = "bicubic"  # bicubic | realesrgan
    degradation_config: str = ""  # YAML overrides for realesrgan
    crop: int = 64  # HR crop size in pixels
    batch_size: int = 16  # per process
    data_mode: str = "auto"  # memory | stream | auto (memory up to data_memory_mb decoded, see flowsr.data)
    data_memory_mb: float = 1024.0  # per process
    num_workers: int = 4  # DataLoader processes decoding streamed images (0: in the training process)
    # optimisation
    max_steps: int = 2000
    time_limit: float = 0.0  # seconds; > 0: stop at this wall time, the LR decay finishing there too
    lr: float = 2e-4
    lr_min_ratio: float = 0.1  # cosine decay to lr * lr_min_ratio
    warmup: int = 100
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema: float = 0.999
    # flow path and teacher objective
    sigma_p: float = 0.2
    p_drop: float = 0.1
    loss: str = "l2"  # l1 | l2
    time_sampler: str = "uniform"  # uniform | logit_normal | mix (half each); see benchmarks/teacher_ab.py
    weighting: str = "none"  # none | endpoint (loss on the implied HR endpoint; for net.prediction=endpoint)
    # distillation (oftsr, meanflow)
    teacher: str = ""  # model directory or bundled name of the teacher
    init: str = ""  # start from this trained model's weights (directory or bundled name), e.g. real from bicubic
    guidance: float = 1.0  # teacher CFG scale distilled into a MeanFlow student (mf_target=teacher)
    s_min: float = 0.01
    s_max: float = 0.99
    delta: float = 0.05
    w_boundary: float = 0.1
    w_align: float = 0.01
    mf_target: str = "teacher"  # teacher (its guided velocity) | conditional (the data velocity, MeanFlow's own CFG)
    mf_omega: float = 1.0  # mf_target=conditional: MeanFlow's CFG at the scale mf_omega / (1 - mf_kappa)
    mf_kappa: float = 0.0
    p_equal: float = 0.4  # MeanFlow: share of rows with s = t (plain flow matching); 60 % get the JVP
    mf_p_grid: float = 0.5  # MeanFlow: share of the s != t rows on the 1/2/4-step samplers' (t, s) pairs
    mf_student_states: float = 0.0  # mf_target=teacher: share of rows at the student's own state x0 + t u(x0, 0, t)
    adaptive_p: float = 1.0  # MeanFlow adaptive weight 1 / (e + c)^p, e the per-row sum of squares
    adaptive_c: float = 1e-3
    # inference defaults stored with the model
    default_steps: int = 0  # 0: choose from the objective
    # runtime
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    # The fast path (issue 21; flowsr.train): crops cut on the device, no host sync per step (losses checked
    # every log_every steps and before every checkpoint), fused AdamW, foreach EMA and clipping, and the
    # "auto" amp / channels_last / compile choices below. false: the path before it, step for step.
    fast: bool = True
    amp: str = "auto"  # auto (bf16 on cuda; with fast, also where measured better on the CPU) | none | bf16
    channels_last: bool = True  # on cuda; with fast, also on the CPU where measured better
    compile: str = "auto"  # auto (with fast, on cuda) | true | false: torch.compile the network and teacher
    deterministic: bool = False
    log_every: int = 10
    val_every: int = 500
    val_images: int = 5
    ckpt_every: int = 500

    def validate(self) -> None:
        check_ranges(self, TRAIN_RANGES, "invalid config: ")
        checks = [
            (self.objective in OBJECTIVES, f"objective must be one of {OBJECTIVES}"),
            (1 <= self.scale <= settings.MAX_SCALE, f"scale must be in [1, {settings.MAX_SCALE}]"),
            (0 <= self.default_steps <= settings.MAX_STEPS, f"default_steps must be in [0, {settings.MAX_STEPS}]"),
            (0 <= self.guidance <= settings.MAX_GUIDANCE, f"guidance must be in [0, {settings.MAX_GUIDANCE:g}]"),
            (self.crop % (self.scale * 4) == 0, "crop must be a multiple of 4*scale"),
            (self.batch_size >= 1 and self.max_steps >= 0, "batch_size >= 1 and max_steps >= 0"),
            (self.loss in ("l1", "l2"), "loss must be l1 or l2"),
            (self.time_sampler in ("uniform", "logit_normal", "mix"), "time_sampler: uniform | logit_normal | mix"),
            (self.degradation in ("bicubic", "realesrgan"), "degradation: bicubic | realesrgan"),
            (bool(self.start), "start: bicubic, or a start network's bundled name or model directory"),
            (self.data_mode in ("auto", "memory", "stream"), "data_mode: auto | memory | stream"),
            (self.num_workers >= 0, "num_workers must be >= 0"),
            (0.0 <= self.sigma_p < 1.0, "sigma_p must be in [0, 1)"),
            (self.mf_target in ("teacher", "conditional"), "mf_target: teacher | conditional"),
            (all(0.0 <= p <= 1.0 for p in (self.p_equal, self.mf_p_grid, self.mf_student_states, self.p_drop)),
             "p_equal, mf_p_grid, mf_student_states and p_drop must be in [0, 1]"),
            (self.amp in ("auto", "none", "bf16"), "amp: auto | none | bf16"),
            (self.compile in ("auto", "true", "false"), "compile: auto | true | false"),
            (self.device in ("auto", "cpu", "cuda"), "device: auto | cpu | cuda"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"invalid config: {message}")
        top = settings.MAX_GUIDANCE  # MeanFlow's effective CFG scale: the guidance eval --reference will use
        if not (self.mf_omega > 0 and self.mf_kappa < 1 and self.mf_omega / (1 - self.mf_kappa) <= top):
            raise ValueError(f"invalid config: MeanFlow's CFG scale mf_omega / (1 - mf_kappa) must be in (0, "
                             f"{top:g}] (mf_omega > 0, mf_kappa < 1), got mf_omega={self.mf_omega:g} "
                             f"mf_kappa={self.mf_kappa:g}")
        if self.objective == "meanflow":
            self._check_meanflow_target()
        needs_teacher = self.objective == "oftsr" or (
            self.objective == "meanflow" and self.mf_target == "teacher"
        )
        if needs_teacher and not self.teacher:
            raise ValueError(f"objective {self.objective} needs teacher=DIR (a trained flow teacher)")

    def distilled_guidance(self) -> float:
        """The CFG scale a student learns (recorded as ``training["teacher_guidance"]``, the default guidance of
        ``flowsr eval --reference``): MeanFlow's ``guidance`` (mf_target=teacher) or its own effective scale
        ``mf_omega / (1 - mf_kappa)`` (mf_target=conditional); 1 for every other objective."""
        if self.objective != "meanflow":
            return 1.0
        return self.guidance if self.mf_target == "teacher" else self.mf_omega / (1.0 - self.mf_kappa)

    def _check_meanflow_target(self) -> None:
        """ValueError for a MeanFlow option the chosen mf_target ignores, saying what to set instead."""
        if self.mf_target == "teacher":
            if (self.mf_omega, self.mf_kappa) != (1.0, 0.0):
                raise ValueError(f"invalid config: mf_omega={self.mf_omega:g} mf_kappa={self.mf_kappa:g} apply only "
                                 "to mf_target=conditional; with mf_target=teacher leave mf_omega=1 mf_kappa=0 and use "
                                 f"guidance={self.mf_omega / (1 - self.mf_kappa):g}")
            return
        ignored = {key: off for key, off in (("guidance", 1.0), ("mf_student_states", 0.0))
                   if getattr(self, key) != off}
        if not ignored:
            return
        base = PRESETS[self.preset]() if self.preset in PRESETS else None
        given = " ".join(f"{key}={getattr(self, key):g}" for key in ignored)
        source = (f" (from preset {self.preset})" if base and all(getattr(base, k) == getattr(self, k) for k in ignored)
                  else "")
        example = (f", e.g. mf_omega={self.guidance * (1 - self.mf_kappa):g} for scale {self.guidance:g}"
                   if self.guidance != 1.0 else "")
        raise ValueError(f"invalid config: {given}{source} {'applies' if len(ignored) == 1 else 'apply'} only to "
                         "mf_target=teacher; with mf_target=conditional add "
                         f"{' '.join(f'{key}={off:g}' for key, off in ignored.items())} and give MeanFlow's own CFG "
                         f"scale as mf_omega / (1 - mf_kappa){example}")


@dataclass
class ModelConfig:
    """What ``config.json`` of a trained model directory holds; enough to rebuild and run it."""

    kind: str  # flow | regression | oftsr | meanflow | sr
    scale: int
    net: NetConfig | None  # the U-Net (every kind but sr)
    sigma_p: float = 0.2
    default_steps: int = 1
    default_t: float = 1.0
    default_guidance: float = 1.0
    name: str = ""
    training: dict = field(default_factory=dict)  # provenance: preset, steps, data, wall time, device; a student's
    # teacher_guidance: the CFG scale it learnt (TrainConfig.distilled_guidance)
    # The flow's start (PMRF, Ohayon et al. 2025): "bicubic" (x0 and cond from up(lq)), or a start network,
    # a bundled name or a model directory (relative: to this model's directory) of kind sr or regression,
    # whose output start(lq) replaces up(lq); start_sha256 is its weights' SHA-256, checked at load.
    start: str = "bicubic"
    start_sha256: str = ""
    sr_net: SRNetConfig | None = None  # kind sr: the feed-forward network (sr = net(lq))
    licence: str = ""  # kind sr: the licence file shipped beside the weights, and the attribution
    attribution: str = ""

    def __post_init__(self):
        """Check every field's range (types are checked by :meth:`from_dict`); raises ValueError."""
        if self.kind not in MODEL_KINDS:
            raise ValueError(f"unknown model kind {self.kind!r}; expected one of {MODEL_KINDS}")
        if (self.kind == "sr") != (self.sr_net is not None) or (self.kind == "sr") == (self.net is not None):
            raise ValueError("a model of kind sr has sr_net and no net; every other kind has net and no sr_net")
        if not self.start or len(self.start) > 4096 or "\0" in self.start:
            raise ValueError(f"start must be 'bicubic' or a start network's name or directory, got {self.start!r}")
        if self.start != "bicubic" and not (self.kind != "sr" and len(self.start_sha256) == 64):
            raise ValueError("a start network needs a flow-type model and its 64-hex-digit start_sha256")
        if self.kind == "sr":
            return
        if not 1 <= self.scale <= settings.MAX_SCALE:
            raise ValueError(f"scale must be in [1, {settings.MAX_SCALE}], got {self.scale!r}")
        if not 0.0 <= self.sigma_p < 1.0:
            raise ValueError(f"sigma_p must be in [0, 1), got {self.sigma_p!r}")
        settings.check_steps(self.default_steps, "default_steps")
        settings.check_t(self.default_t, "default_t")
        settings.check_guidance(self.default_guidance, "default_guidance")
        net = self.net
        if net is None:
            raise ValueError("net is missing")
        checks = [(net.channels >= 1, "channels must be >= 1"),
                  (all(m >= 1 for m in net.channel_mult), "channel_mult entries must be >= 1"),
                  (net.num_blocks >= 1, "num_blocks must be >= 1"),
                  (0.0 <= net.dropout < 1.0, "dropout must be in [0, 1)"),
                  (net.image_channels == 3, "image_channels must be 3"),
                  (net.patch <= 16, "patch must be in [1, 16]")]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"net.{message}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @staticmethod
    def from_dict(data: dict, source: str = "config.json") -> ModelConfig:
        """Build from a parsed JSON dict; unknown keys, missing keys, a value of another JSON type than
        the field's (``true`` for an int, ``"4"`` for an int, ``1.5`` for an int), a NaN or an infinity,
        or a value out of range raise ValueError, in one line naming ``source`` and the field."""
        return _from_dict(ModelConfig, data, source, strict=True)


def _from_dict(cls, data: dict, source: str, strict: bool = False):
    if not isinstance(data, dict):
        raise ValueError(f"{source}: expected a JSON object for {cls.__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(f"{source}: unknown key(s) {unknown} for {cls.__name__}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        optional = type(None) in typing.get_args(hint)
        if optional:
            if value is None:
                kwargs[name] = None
                continue
            hint = next(a for a in typing.get_args(hint) if a is not type(None))
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _from_dict(hint, value, source, strict)
        else:
            kwargs[name] = _coerce(value, hint, f"{source}: {cls.__name__}.{name}", strict)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{source}: {' '.join(str(error).split())}") from None


def _coerce(value, hint, where: str, strict: bool = False):
    """Check/convert a command-line value (a string) to the field's type; ``strict`` (JSON): the value
    must already have the field's type (an int is accepted for a float). Floats must be finite."""
    origin = typing.get_origin(hint)
    if strict and hint in (int, float, str, bool):
        number = hint in (int, float)
        ok = isinstance(value, (int, float) if hint is float else hint) and not (number and isinstance(value, bool))
        if not ok:
            raise ValueError(f"{where}: expected {'a number' if hint is float else hint.__name__}, got {value!r}")
        if hint is float and not math.isfinite(value):
            raise ValueError(f"{where}: expected a finite number, got {value!r}")
        return float(value) if hint is float else value
    if origin is tuple:
        if isinstance(value, str) and not strict:
            value = [v for v in value.strip("()[] ").split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        return tuple(_coerce(v, typing.get_args(hint)[0], where, strict) for v in value)
    if hint is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected an object, got {value!r}")
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("1", "true", "yes", "on"):
            return True
        if str(value).lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{where}: expected true/false, got {value!r}")
    try:
        if hint is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
        converted = hint(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: expected {hint.__name__}, got {value!r}") from None
    if hint is float and not math.isfinite(converted):
        raise ValueError(f"{where}: expected a finite number, got {value!r}")
    return converted


def apply_overrides(cfg, overrides: list[str]):
    """Apply ``key=value`` strings (``net.channels=32``) to a dataclass in place; returns it."""
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form key=value")
        key, value = item.split("=", 1)
        target = cfg
        *parents, leaf = key.split(".")
        for part in parents:
            if not hasattr(target, part) or not dataclasses.is_dataclass(getattr(target, part)):
                raise ValueError(f"unknown config section {part!r} in {item!r}")
            target = getattr(target, part)
        hints = typing.get_type_hints(type(target))
        if leaf not in hints:
            names = ", ".join(f.name for f in fields(target))
            raise ValueError(f"unknown config key {key!r}; known keys: {names}")
        setattr(target, leaf, _coerce(value, hints[leaf], key))
    return cfg


def load_yaml_overrides(path: str | Path) -> list[str]:
    """Read a YAML file of overrides (keys are TrainConfig fields) into ``key=value`` strings."""
    import yaml

    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of config keys")
    items = []
    for key, value in data.items():
        if isinstance(value, dict):
            items += [f"{key}.{k}={_yaml_value(v)}" for k, v in value.items()]
        else:
            items.append(f"{key}={_yaml_value(value)}")
    return items


def _yaml_value(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


# ---------------------------------------------------------------------------------------------
# Presets. "tiny-*" train on a CPU in minutes; "*-x4" are the GPU sizes of the shipped models.

# Teacher recipe (issue 14, benchmarks/teacher_ab.py): the network predicts the HR endpoint
# (x-prediction, Li & He 2025, arXiv 2511.13720) with the loss on that endpoint, times uniform in [0, 1)
# (as OFTSR's reference) so t ~ 0, where the 1-step teacher and OFTSR's t = 0 end live, is trained, and
# raw t / h in the embedding (time_scale=1) so MeanFlow's du/dt is of the order of the velocity.
# The tiny net (2.3 GFLOP per 256^2 output, below BSRN's 2.7) trains on a CPU in an hour.
TINY_NET = dict(channels=32, channel_mult=(1, 2, 2), num_blocks=1, attention_levels=(), patch=4,
                prediction="endpoint", time_scale=1.0)
GPU_NET = dict(channels=48, channel_mult=(1, 2, 2, 2), num_blocks=2, attention_levels=(), patch=2,
               prediction="endpoint", time_scale=1.0)


def _tiny(**kw) -> TrainConfig:
    base = dict(net=NetConfig(**TINY_NET), crop=64, batch_size=16, max_steps=2000, lr=1e-3, time_sampler="uniform",
                weighting="endpoint",
                warmup=100, ema=0.995, val_every=500, ckpt_every=500, val_images=5)
    base.update(kw)
    return TrainConfig(**base)


# Filling a GPU (issue 21): at batch 32 of 128^2 crops an H200 runs this 8.8 M-parameter net far below its matmul
# rate (`flowsr bench --train teacher-x4 --batch 128` measures it). A larger batch at a fixed step budget sees more
# crops per step; for Adam, scaling the batch by k is matched by scaling the learning rate by sqrt(k) (the square-root
# rule of Malladi et al. 2022, arXiv 2205.10287), e.g. batch_size=128 lr=6e-4 for the teacher. Not the default until
# measured on the GPU at equal wall time.
def _gpu(**kw) -> TrainConfig:
    base = dict(net=NetConfig(**GPU_NET), crop=128, batch_size=32, max_steps=20000, lr=3e-4,
                time_sampler="uniform", weighting="endpoint", warmup=500, ema=0.999, val_every=1000,
                ckpt_every=1000, val_images=5)
    base.update(kw)
    return TrainConfig(**base)


# Start-network recipe (issue 20; PMRF, Ohayon et al. 2025): the flow starts at a posterior mean,
# start(lq) + sigma_p eps, with start = the published BSRN x4 (override start=rlfn-x4, or any model of kind sr or
# regression), so the fidelity end is strong by construction and the flow only adds texture. sigma_p 0.1 is
# PMRF's; benchmarks/start_ab.sh measures it against 0.2 and the bicubic start. The GPU net is sized so that
# start + one-step student stay within 2x the start network's CPU latency (target S6). The MeanFlow students distil
# the unguided teacher (guidance=1): teacher CFG at 1.5 won PSNR but lost LPIPS/DISTS on Set14 and BSD100 and 2.5
# diverged (docs/cfg_ablation.md, issue 24).
GPU_PM_NET = dict(TINY_NET, channels=40)


def _pm(base, **kw) -> TrainConfig:
    return base(start="bsrn-x4", sigma_p=0.1, **kw)


PRESETS = {
    "tiny-teacher": lambda: _tiny(preset="tiny-teacher", objective="flow_matching", default_steps=4),
    "tiny-regression": lambda: _tiny(preset="tiny-regression", objective="regression", loss="l1"),
    "tiny-oftsr": lambda: _tiny(preset="tiny-oftsr", objective="oftsr", max_steps=1000, lr=2e-4,
                                warmup=50, teacher="runs/tiny-teacher"),
    "tiny-meanflow": lambda: _tiny(preset="tiny-meanflow", objective="meanflow", max_steps=1000,
                                   lr=2e-4, warmup=50, teacher="runs/tiny-teacher"),
    "teacher-x4": lambda: _gpu(preset="teacher-x4", objective="flow_matching", default_steps=4),
    "regression-x4": lambda: _gpu(preset="regression-x4", objective="regression", loss="l1"),
    "oftsr-x4": lambda: _gpu(preset="oftsr-x4", objective="oftsr", max_steps=5000, lr=1e-4,
                             warmup=100, teacher="runs/teacher-x4"),
    "meanflow-x4": lambda: _gpu(preset="meanflow-x4", objective="meanflow", max_steps=5000, lr=1e-4,
                                warmup=100, teacher="runs/teacher-x4"),
    "tiny-teacher-pm": lambda: _pm(_tiny, preset="tiny-teacher-pm", objective="flow_matching", default_steps=4),
    "tiny-oftsr-pm": lambda: _pm(_tiny, preset="tiny-oftsr-pm", objective="oftsr", max_steps=1000, lr=2e-4,
                                 warmup=50, teacher="runs/tiny-teacher-pm"),
    "tiny-meanflow-pm": lambda: _pm(_tiny, preset="tiny-meanflow-pm", objective="meanflow", max_steps=1000,
                                    lr=2e-4, warmup=50, teacher="runs/tiny-teacher-pm", mf_student_states=0.5),
    "teacher-x4-pm": lambda: _pm(_gpu, preset="teacher-x4-pm", objective="flow_matching", default_steps=4,
                                 net=NetConfig(**GPU_PM_NET)),
    "oftsr-x4-pm": lambda: _pm(_gpu, preset="oftsr-x4-pm", objective="oftsr", max_steps=5000, lr=1e-4, warmup=100,
                               teacher="runs/teacher-x4-pm", net=NetConfig(**GPU_PM_NET)),
    "meanflow-x4-pm": lambda: _pm(_gpu, preset="meanflow-x4-pm", objective="meanflow", max_steps=5000, lr=1e-4,
                                  warmup=100, teacher="runs/teacher-x4-pm", mf_student_states=0.5,
                                  net=NetConfig(**GPU_PM_NET)),
    # real-world: trained on Real-ESRGAN second-order degradations instead of bicubic
    "tiny-teacher-real": lambda: _tiny(preset="tiny-teacher-real", objective="flow_matching", default_steps=4,
                                       degradation="realesrgan"),
    "teacher-x4-real": lambda: _gpu(preset="teacher-x4-real", objective="flow_matching", default_steps=4,
                                    degradation="realesrgan"),
    "oftsr-x4-real": lambda: _gpu(preset="oftsr-x4-real", objective="oftsr", max_steps=5000, lr=1e-4,
                                  warmup=100, teacher="runs/teacher-x4-real", degradation="realesrgan"),
    "meanflow-x4-real": lambda: _gpu(preset="meanflow-x4-real", objective="meanflow", max_steps=5000, lr=1e-4,
                                     warmup=100, teacher="runs/teacher-x4-real", degradation="realesrgan"),
}


def preset(name: str) -> TrainConfig:
    if name not in PRESETS:
        from flowsr.catalog import closest

        close, names = closest(name, PRESETS), ", ".join(PRESETS)
        raise ValueError(f"unknown preset {name!r}; did you mean {close}? (presets: {names})" if close else
                         f"unknown preset {name!r}; choose one of: {names}")
    return PRESETS[name]()
