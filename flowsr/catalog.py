"""Where models are, and what their files say, read without importing torch.

The command line checks its arguments (an unknown model, ``--steps 4`` on a one-step model) and lists
the bundled models with this module alone, in milliseconds; loading a network is
:func:`flowsr.pipeline.load`'s job.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import stat
import struct
from pathlib import Path

WEIGHTS_DIR = Path(__file__).parent / "weights"
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".pkl", ".bin")
MAX_CONFIG_BYTES = 1 << 20  # a config.json is a few KB; a bigger one is refused unread
MAX_JSON_DEPTH = 32  # nesting of a config.json (the deepest real one: 3)
_FILE_KINDS = {stat.S_IFDIR: "a folder", stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device",
               stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket"}


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
        names = ["bicubic", "default", *bundled_models()]
        close = closest(spec, names)
        raise ModelLoadError(f"{spec}: no such model directory or bundled model"
                             f"{f'; did you mean {close}?' if close else ''} (bundled: {', '.join(names)})")
    return path


def closest(word: str, choices) -> str | None:
    """The one of ``choices`` closest to a mistyped ``word`` (difflib ratio at least 0.6, case-insensitive; a
    path's last part counts too), or None: what "did you mean" offers."""
    import difflib

    lowered = {choice.lower(): choice for choice in choices}
    for candidate in dict.fromkeys([str(word).lower(), Path(str(word)).name.lower()]):
        close = difflib.get_close_matches(candidate, list(lowered), n=1, cutoff=0.6)
        if close:
            return lowered[close[0]]
    return None


def check_model_dir(directory: Path) -> None:
    """ModelLoadError unless ``directory`` is a directory (a pickle checkpoint file is refused by name)."""
    directory = Path(directory)
    if not directory.is_dir():
        if directory.suffix.lower() in PICKLE_SUFFIXES:
            raise ModelLoadError(f"{directory}: pickle checkpoints are refused (they can run code); "
                                 "flowsr reads only a directory with model.safetensors + config.json")
        raise ModelLoadError(f"{directory}: not a model directory or a bundled model name")


def check_regular_file(path: Path, missing: str) -> None:
    """ModelLoadError unless ``path`` is a regular file (a FIFO, a device or a folder is named as such, not
    read); ``missing``: the message when it does not exist."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise ModelLoadError(f"{path}: {missing}") from None
    except OSError as error:
        raise ModelLoadError(f"{path}: cannot read it ({error.strerror or error})") from None
    if not stat.S_ISREG(mode):
        raise ModelLoadError(f"{path}: not a regular file ({_FILE_KINDS.get(stat.S_IFMT(mode), 'not a file')})")


def read_config_json(directory: Path) -> dict:
    """The parsed ``config.json`` of a model directory (not yet checked; see ``ModelConfig.from_dict``): a
    regular file of at most :data:`MAX_CONFIG_BYTES`, JSON nested at most :data:`MAX_JSON_DEPTH` deep."""
    check_model_dir(directory)
    path = Path(directory) / "config.json"
    check_regular_file(path, "missing (a model directory holds model.safetensors + config.json)")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a FIFO swapped in meanwhile: no wait
        with open(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                raise ModelLoadError(f"{path}: not a regular file")
            raw = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as error:
        raise ModelLoadError(f"{path}: cannot read it ({error.strerror or error})") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ModelLoadError(f"{path}: larger than {MAX_CONFIG_BYTES} bytes; not a flowsr config.json")
    try:
        data = json.loads(raw.decode())
    except RecursionError:
        raise ModelLoadError(f"{path}: not valid JSON (nested more than {MAX_JSON_DEPTH} deep)") from None
    except ValueError as error:  # JSON syntax, UTF-8, an integer of more than 4300 digits
        raise ModelLoadError(f"{path}: not valid JSON ({' '.join(str(error).split())[:200]})") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path}: expected a JSON object")
    if _depth(data) > MAX_JSON_DEPTH:
        raise ModelLoadError(f"{path}: not valid JSON (nested more than {MAX_JSON_DEPTH} deep)")
    return data


def _depth(value) -> int:
    """How deep JSON ``value`` nests (a scalar: 0), counted without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth + 1)
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


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


def check_export_target(model: str, directory: Path, force: bool = False) -> None:
    """Before any work (and without torch): ``-o`` must be new, empty, or a previous export of this same model
    (with ``force``: any folder but a torch model's). Raises ValueError in one line naming the folder."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"{directory}: exists and is not a folder")
    if not directory.is_dir():
        return
    names = sorted(p.name for p in directory.iterdir() if not (p.name.startswith(".") and p.name.endswith(".tmp")))
    if "model.safetensors" in names:
        raise ValueError(f"{directory}: holds a torch model (model.safetensors); export to another directory")
    if not names or force:
        return
    source = model_path(model)
    previous = None
    if set(names) <= {"model.onnx", "config.json"} and "config.json" in names:
        try:
            previous = read_config_json(directory).get("onnx", {}).get("exported_from")
            previous = model_path(previous) if isinstance(previous, str) else None
        except (ModelLoadError, AttributeError):
            previous = None
    if previous is None or source is None or previous.resolve() != source.resolve():
        shown = ", ".join(names)
        raise ValueError(f"{directory}: not empty and not an export of {model} (it holds "
                         f"{shown if len(shown) < 200 else shown[:200] + '...'}); choose a new or empty -o, or "
                         "pass --force to replace its model.onnx and config.json")
