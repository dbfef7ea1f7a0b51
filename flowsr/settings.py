"""Sampling settings and their rules per model kind, without importing torch (the CLI checks them first).

The ranges here bound a model's ``config.json`` defaults too (:class:`flowsr.config.ModelConfig`), so
neither a file nor an argument can ask for a run that never ends or returns NaN.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

MAX_STEPS = 1000  # sampling steps (a flow teacher is sharp well below 100)
MAX_GUIDANCE = 20.0  # classifier-free guidance scale w (1 = off)
MAX_SCALE = 8  # super-resolution factor
KNOB_KINDS = ("oftsr", "meanflow")  # the model kinds with a fidelity-realism knob t
ONE_STEP_KINDS = ("bicubic", "regression", "oftsr", "sr")

# Every number a command-line option takes, (lowest, highest), both allowed; checked by the parser, before
# anything runs (flowsr.config.TRAIN_RANGES bounds the training config's keys). --tile also takes -1 (never
# tile) and 0 (automatic), but nothing from 1 to MIN_TILE - 1 (a tile that small runs for ever).
OPTION_RANGES = {
    "threads": (0, 256), "tile": (-1, 8192), "tile-overlap": (0, 512), "seed": (0, 2**63 - 1),
    "scale": (1, MAX_SCALE), "steps": (1, MAX_STEPS), "reference-steps": (1, MAX_STEPS), "fid-patch": (8, 4096),
    "shard-size": (1, 1 << 20), "size": (8, 16384), "batch": (1, 1024), "repeat": (1, 100_000), "rounds": (1, 100),
    "crop": (8, 2048), "ort-threads": (0, 256), "opset": (18, 99),
    "t": (0.0, 1.0), "guidance": (0.0, MAX_GUIDANCE), "outscale": (0.01, 2 * MAX_SCALE), "quality": (1, 100),
}
MIN_TILE = 16


def option(name: str, kind: type = int, many: bool = False):
    """argparse type for option ``--name``: a ``kind`` (int or float) in ``OPTION_RANGES[name]``, or with
    ``many`` a comma-separated list of them; the parser's error says the range."""
    low, high = OPTION_RANGES[name]
    bounds = f"[{low}, {high}]" if kind is int else f"[{low:g}, {high:g}]"
    noun = ("integers" if kind is int else "numbers") if many else ("an integer" if kind is int else "a number")
    what = f"{'a list of ' if many else ''}{noun} in {bounds}"
    if name == "tile":
        what = f"-1 (never tile), 0 (automatic) or an integer in [{MIN_TILE}, {high}]"

    def one(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not low <= value <= high or (name == "tile" and 0 < value < MIN_TILE):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text.strip()!r}")
        return value

    def parse(text: str):
        return [one(v) for v in text.split(",") if v.strip()] if many else one(text)

    parse.__name__ = f"{name} option"
    return parse


@dataclass
class Settings:
    """Sampling settings; ``None`` fields take the model's defaults."""

    steps: int | None = None
    t: float | None = None
    guidance: float | None = None
    sampler: str | None = None  # euler | heun (flow teachers)
    color_fix: str = "none"  # none | wavelet | adain: match the output's colours to up(lq)


def check_steps(steps, what: str = "steps") -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
        raise ValueError(f"{what} must be an integer in [1, {MAX_STEPS}], got {steps!r}")


def check_t(t, what: str = "t") -> None:
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 <= t <= 1.0:
        raise ValueError(f"{what} must be in [0, 1], got {t!r}")


def check_guidance(guidance, what: str = "guidance") -> None:
    if (isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not math.isfinite(guidance)
            or not 0.0 <= guidance <= MAX_GUIDANCE):
        raise ValueError(f"{what} must be in [0, {MAX_GUIDANCE:g}] (1 = off), got {guidance!r}")


def resolve(settings: Settings, kind: str, name: str, default_steps: int = 1, default_t: float = 1.0,
            default_guidance: float = 1.0) -> Settings:
    """Fill ``settings``' None fields with the model's defaults and check them for this model ``kind``
    (bicubic, flow, regression, oftsr, meanflow, sr); raises ValueError with a one-line message."""
    steps = settings.steps if settings.steps is not None else default_steps
    t = settings.t if settings.t is not None else default_t
    guidance = settings.guidance if settings.guidance is not None else default_guidance
    sampler = settings.sampler or ("euler" if kind == "flow" else None)
    check_steps(steps)
    check_t(t)
    check_guidance(guidance)
    if kind in ONE_STEP_KINDS and steps != 1:
        raise ValueError(f"{name} ({kind}) is a one-step model: steps must be 1, got {steps}")
    if settings.t is not None and kind not in KNOB_KINDS:
        raise ValueError(f"--t (the fidelity-realism knob) applies to distilled students (oftsr, meanflow), "
                         f"not to {name} ({kind})")
    if kind == "meanflow" and steps > 1 and t != 1.0:
        raise ValueError("--t (the fidelity knob) applies to one-step sampling; use steps=1")
    if sampler not in (None, "euler", "heun"):
        raise ValueError(f"sampler must be euler or heun, not {sampler!r}")
    if kind not in KNOB_KINDS:
        t = None  # the knob means nothing here; resolving twice gives the same settings
    return Settings(steps=steps, t=t, guidance=guidance, sampler=sampler, color_fix=settings.color_fix)
