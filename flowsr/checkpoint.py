"""Checkpoints: safetensors weights plus JSON, written atomically; nothing is ever unpickled.

A *model directory* holds ``model.safetensors`` (EMA weights) and ``config.json`` (a ModelConfig).
A *training checkpoint* is one ``checkpoint.safetensors`` file holding the model, EMA and optimizer
tensors, with the step, the config and the RNG states in its JSON metadata, so a single atomic rename
publishes all of it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from flowsr.catalog import PICKLE_SUFFIXES, ModelLoadError, check_model_dir, check_regular_file, read_config_json
from flowsr.config import ModelConfig
from flowsr.io import FILE_MODE, temporary_beside
from flowsr.nets import UNet, build_sr_net


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, fsync, then rename onto ``path``.

    On any failure (including a full disk) the temporary file is removed and ``path`` is untouched.
    The file gets the usual permissions (0666 less the umask), or keeps those of the file it replaces.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = path.stat().st_mode & 0o7777 if path.exists() else FILE_MODE
    fd, tmp = temporary_beside(path)
    try:
        write(Path(tmp))
        os.chmod(tmp, mode)  # after writing: a writer may replace the file (safetensors makes a new one, 0600)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)


def save_model_dir(directory: Path, net: torch.nn.Module, config: ModelConfig, dtype=None) -> None:
    """Write ``model.safetensors`` (optionally cast to ``dtype``, e.g. bf16 for shipping) + ``config.json``."""
    directory = Path(directory)
    tensors = {k: v.detach().to("cpu", dtype or v.dtype).contiguous() for k, v in net.state_dict().items()}
    atomic_write(directory / "model.safetensors", lambda p: save_file(tensors, str(p)))
    atomic_write(directory / "config.json", lambda p: p.write_text(config.to_json() + "\n"))


def read_model_config(directory: Path) -> ModelConfig:
    """The checked ``config.json`` of a model directory: every field's type and range (one-line ModelLoadError)."""
    path = Path(directory) / "config.json"
    data = read_config_json(directory)
    try:
        return ModelConfig.from_dict(data, str(path))
    except (ValueError, TypeError) as error:
        raise ModelLoadError(str(error)) from None


def build_network(config: ModelConfig) -> torch.nn.Module:
    """The network a model config describes: the U-Net, or (kind sr) the feed-forward SR network."""
    return build_sr_net(config.sr_net, config.scale) if config.kind == "sr" else UNet(config.net)


def load_model_dir(directory: Path, device="cpu") -> tuple[torch.nn.Module, ModelConfig]:
    """Rebuild the network from ``config.json`` and load ``model.safetensors`` (checked: keys, shapes, finite)."""
    directory = Path(directory)
    check_model_dir(directory)
    config = read_model_config(directory)
    weights = directory / "model.safetensors"
    pickles = [p.name for p in directory.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES]
    check_regular_file(weights, "missing" + (f" (found {', '.join(pickles)}: pickle files are refused)"
                                             if pickles else ""))
    if config.kind == "sr" and config.sr_net.arch == "spandrel":
        return load_imported(weights, config).to(device), config
    try:
        with torch.device("meta"):  # shapes only: an absurd config.json allocates nothing
            meta = build_network(config)
    except (ValueError, TypeError) as error:
        raise ModelLoadError(f"{directory / 'config.json'}: cannot build the network ({error})") from None
    try:
        check_state_dict(meta, _header(weights), weights)  # from the header: no tensor is read before it fits
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as error:
        raise ModelLoadError(f"{weights}: not a readable safetensors file ({' '.join(str(error).split())})") from None
    check_state_dict(meta, state, weights)
    net = build_network(config)
    net.load_state_dict({k: v.float() for k, v in state.items()})
    return net.to(device).eval().requires_grad_(False), config


def load_imported(weights: Path, config: ModelConfig) -> torch.nn.Module:
    """The network of a directory written by ``flowsr import``: its tensors (safetensors, all finite) handed to
    spandrel, which must rebuild the architecture and scale config.json names (one-line ModelLoadError)."""
    from flowsr.nets.imported import NeedsSpandrel, rebuild

    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as error:
        raise ModelLoadError(f"{weights}: not a readable safetensors file ({' '.join(str(error).split())})") from None
    for key, value in state.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise ModelLoadError(f"{weights}: {key} contains NaN or Inf values")
    try:
        return rebuild(state, config.sr_net.spandrel_arch, config.scale, weights)
    except NeedsSpandrel as error:
        raise ModelLoadError(f"{weights}: a {config.sr_net.spandrel_arch} network imported with spandrel; "
                             f"loading it {error}") from None
    except ValueError as error:
        raise ModelLoadError(str(error)) from None


_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                       "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                       "BOOL": torch.bool}


def _header(weights: Path) -> dict[str, torch.Tensor]:
    """The tensors a safetensors file declares, as empty meta tensors of their shapes and dtypes (only the
    header is read)."""
    from safetensors import safe_open

    declared = {}
    with safe_open(str(weights), "pt") as handle:
        for key in handle.keys():
            part = handle.get_slice(key)
            dtype = _SAFETENSORS_DTYPES.get(part.get_dtype(), torch.uint8)
            declared[key] = torch.empty(part.get_shape(), dtype=dtype, device="meta")
    return declared


def check_state_dict(net: torch.nn.Module, state: dict, source) -> None:
    """Raise ModelLoadError unless ``state`` has exactly the network's keys and shapes, all finite.

    ``net`` may live on the meta device (only its shapes are read)."""
    expected = net.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ModelLoadError(f"{source}: weights do not match config.json "
                             f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    for key, value in state.items():
        if value.shape != expected[key].shape:
            raise ModelLoadError(f"{source}: {key} has shape {tuple(value.shape)}, "
                                 f"config.json implies {tuple(expected[key].shape)}")
        if expected[key].is_floating_point() and not value.is_floating_point():
            raise ModelLoadError(f"{source}: {key} holds {str(value.dtype).removeprefix('torch.')} values; "
                                 "weights must be floating point (float32, bfloat16 or float16)")
        if value.is_floating_point() and value.device.type != "meta" and not torch.isfinite(value).all():
            raise ModelLoadError(f"{source}: {key} contains NaN or Inf values")


# -- training checkpoints ---------------------------------------------------------------------------


def save_training_checkpoint(path: Path, *, net, ema, optimizer, step: int, meta: dict,
                             rng: dict[str, torch.Tensor]) -> None:
    """One atomic file: ``model.*``, ``ema.*``, ``opt.*``, ``rng.*`` tensors; ``meta`` + step in JSON."""
    tensors = {}
    tensors.update({f"model.{k}": v for k, v in net.state_dict().items()})
    tensors.update({f"ema.{k}": v for k, v in ema.state_dict().items()})
    opt_state = optimizer.state_dict()
    for index, slots in opt_state["state"].items():
        for name, value in slots.items():
            tensors[f"opt.{index}.{name}"] = torch.as_tensor(value)
    tensors.update({f"rng.{k}": v for k, v in rng.items()})
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    metadata = {"step": str(step), "param_groups": json.dumps(opt_state["param_groups"]),
                "meta": json.dumps(meta)}
    atomic_write(path, lambda p: save_file(tensors, str(p), metadata=metadata))


def remove_stale_temporaries(directory: Path) -> list[Path]:
    """Delete ``.NAME.*.tmp`` files that a killed ``atomic_write`` left in a directory this process owns."""
    stale = sorted(Path(directory).glob(".*.tmp"))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def load_training_checkpoint(path: Path, *, net, ema, optimizer) -> tuple[int, dict, dict]:
    """Restore model, EMA and optimizer in place; returns (step, meta, rng tensors)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    except (SafetensorError, OSError) as error:
        raise ModelLoadError(f"{path}: unreadable checkpoint ({error})") from None
    if "step" not in metadata:
        raise ModelLoadError(f"{path}: not a flowsr training checkpoint (no step in metadata)")

    def section(prefix):
        return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}

    expected = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    saved = {k: tuple(v.shape) for k, v in section("model.").items()}
    if saved != expected:
        differ = sorted(k for k in set(saved) | set(expected) if saved.get(k) != expected.get(k))
        key = differ[0]
        raise ModelLoadError(f"{path}: the checkpoint's network differs from this run's config ({len(differ)} "
                             f"tensors, e.g. {key}: checkpoint {saved.get(key, 'absent')}, this run "
                             f"{expected.get(key, 'absent')}); resume with the net.* settings of its "
                             "train_config.json")
    net.load_state_dict(section("model."))
    ema.load_state_dict(section("ema."))
    state: dict[int, dict] = {}
    for key, value in section("opt.").items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for index, slots in state.items():  # moments laid out as their parameter (channels-last: fused kernels pair
        for name, value in slots.items():  # elements by memory order)
            if value.shape == params[index].shape:
                slots[name] = torch.empty_like(params[index], dtype=value.dtype, device="cpu").copy_(value)
    param_groups = json.loads(metadata["param_groups"])
    for saved, current in zip(param_groups, optimizer.param_groups):  # this run's implementation (fused or not)
        saved.update({k: current[k] for k in ("foreach", "fused", "capturable") if k in current})
    optimizer.load_state_dict({"state": state, "param_groups": param_groups})
    return int(metadata["step"]), json.loads(metadata["meta"]), section("rng.")
