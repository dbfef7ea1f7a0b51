"""Where models are, and what their files say, read without importing torch.

The command line checks its arguments (an unknown model, ``--steps 4`` on a one-step model) and lists
the bundled models with this module alone, in milliseconds; loading a network is
:func:`flowsr.pipeline.load`'s job.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from pathlib import Path

WEIGHTS_DIR = Path(__file__).parent / "weights"
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".pkl", ".bin")


class ModelLoadError(Exception):
    """A model directory or file that cannot be used; the message names the file and the problem."""


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


def model_path(spec: str | Path) -> Path | None:
    """The directory of ``spec`` (a bundled name or a directory); None for ``bicubic``.

    ``"default"`` means :func:`default_model`. Raises ModelLoadError when there is no such model.
    """
    spec = str(spec)
    if spec == "default":
        spec = default_model()
    if spec == "bicubic":
        return None
    path = bundled_models().get(spec, Path(spec))
    if not path.exists():
        names = ", ".join(["bicubic", *bundled_models()])
        raise ModelLoadError(f"{spec}: no such model directory or bundled model (bundled: {names})")
    return path


def check_model_dir(directory: Path) -> None:
    """ModelLoadError unless ``directory`` is a directory (a pickle checkpoint file is refused by name)."""
    directory = Path(directory)
    if not directory.is_dir():
        if directory.suffix.lower() in PICKLE_SUFFIXES:
            raise ModelLoadError(f"{directory}: pickle checkpoints are refused (they can run code); "
                                 "flowsr reads only a directory with model.safetensors + config.json")
        raise ModelLoadError(f"{directory}: not a model directory or a bundled model name")


def read_config_json(directory: Path) -> dict:
    """The parsed ``config.json`` of a model directory (not yet checked; see ``ModelConfig.from_dict``)."""
    check_model_dir(directory)
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise ModelLoadError(f"{path}: missing (a model directory holds model.safetensors + config.json)")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ModelLoadError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path}: expected a JSON object")
    return data


def parameter_count(weights: Path) -> int:
    """Number of values in a safetensors file, from its JSON header alone (the tensors are not read)."""
    with open(weights, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(min(length, 100_000_000)))
    return sum(math.prod(entry["shape"]) for key, entry in header.items() if key != "__metadata__")


def weights_file(directory: Path) -> Path:
    """The weights of a model directory: ``model.safetensors``, or ``model.onnx`` for an exported model."""
    directory = Path(directory)
    safetensors = directory / "model.safetensors"
    return safetensors if safetensors.exists() or not (directory / "model.onnx").exists() else directory / "model.onnx"


def weights_sha256(directory: Path) -> str:
    """SHA-256 (hex) of a model directory's weights file (see :func:`weights_file`)."""
    digest = hashlib.sha256()
    with open(weights_file(directory), "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def start_path(model_dir: Path | None, spec: str) -> Path:
    """The directory of a flow model's start network ``spec`` (not ``bicubic``): a bundled name, a directory
    relative to the model's own directory, or a path as given. ModelLoadError naming both when absent."""
    bundled = bundled_models()
    if spec in bundled:
        return bundled[spec]
    for candidate in ([Path(model_dir) / spec] if model_dir is not None else []) + [Path(spec)]:
        if candidate.is_dir():
            return candidate
    where = f"{model_dir}: " if model_dir is not None else ""
    raise ModelLoadError(f"{where}its start network {spec!r} is neither a bundled model nor a directory "
                         f"(bundled: {', '.join(bundled) or 'none'})")
