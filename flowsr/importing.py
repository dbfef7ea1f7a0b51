"""``flowsr import FILE -o DIR``: a single-image SR network of another project (a ``.pth`` / ``.safetensors``
file of ESRGAN, Real-ESRGAN, SwinIR, SPAN, HAT, ... weights, as spandrel recognises them) as a flowsr model
directory: ``model.safetensors`` (the state dict of spandrel's module) + ``config.json`` (kind ``sr``,
``sr_net = {"arch": "spandrel", "spandrel_arch": ID}``, the scale). The directory is then a model like any other
(upscale, eval, bench, serve, export) and may be a flow model's start network.

Pickled files (``.pth``, ``.pt``, ``.ckpt``, ``.bin``) are read only with ``torch.load(weights_only=True)``:
tensors and plain containers, never code; a file that needs more is refused.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from flowsr.catalog import PICKLE_SUFFIXES, check_regular_file
from flowsr.checkpoint import atomic_write, load_model_dir
from flowsr.config import ModelConfig
from flowsr.nets import SRNetConfig
from flowsr.nets.imported import NeedsSpandrel, recognise, require_spandrel

PARITY_SIDES = (17, 24)  # LR size of the check against spandrel's own call (odd: padding is exercised)
PARITY_TOLERANCE = 1e-5  # the same module on the same input: only float reassociation may differ


def read_weights(path: Path) -> dict:
    """The tensors of a weights file: ``.safetensors`` with safetensors, a pickle only with ``torch.load(...,
    weights_only=True)``. ValueError (ModelLoadError: not a regular file) in one line naming the file otherwise."""
    path = Path(path)
    check_regular_file(path, "no such file")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as error:
            raise ValueError(f"{path}: not a readable safetensors file ({' '.join(str(error).split())})") from None
    if suffix not in PICKLE_SUFFIXES:
        raise ValueError(f"{path}: unknown weights format {suffix or '(no extension)'}; expected .safetensors or "
                         f"a pickle ({', '.join(PICKLE_SUFFIXES)})")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError, KeyError, ValueError, OSError,
            EOFError) as error:
        text = str(error)
        if not (isinstance(error, pickle.UnpicklingError) and "Weights only load failed" in text):
            # a damaged or foreign file (a cut zip archive, text), not a refusal
            raise ValueError(f"{path}: cannot read it as a PyTorch pickle ({type(error).__name__}: "
                             f"{' '.join(text.split())[:200]})") from None
        first = next((line for line in text.splitlines() if "Unsupported global" in line), "")
        detail = first.strip().split(":", 1)[-1].strip()[:200] if first else " ".join(text.split())[:200]
        raise ValueError(f"{path}: refused: this pickle needs more than tensors to load (torch.load with "
                         f"weights_only=True: {detail}); flowsr never runs code from a model file - save its "
                         "state_dict() or convert it to .safetensors") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path}: holds a {type(state).__name__}, not a state dict of tensors")
    return state


def check_target(directory: Path, force: bool) -> None:
    """``-o`` must be new or empty (``force``: its model.safetensors and config.json are replaced)."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"{directory}: exists and is not a folder")
    if directory.is_dir() and any(directory.iterdir()) and not force:
        raise ValueError(f"{directory}: not empty; choose a new or empty -o, or pass --force to replace its "
                         "model.safetensors and config.json")


def import_network(source: str | Path, directory: str | Path, force: bool = False, progress=None) -> dict:
    """Write the network of weights file ``source`` as a model directory ``directory`` (see the module's
    docstring), then load it back with flowsr and compare one call with spandrel's own (float32, at
    :data:`PARITY_SIDES`). Returns ``{"arch", "name", "scale", "params", "max_abs_diff"}``.
    ``progress(step)``: called with a few words before each slow step. Raises ValueError / ModelLoadError /
    NeedsSpandrel in one line; nothing is written unless every check passes."""
    progress = progress or (lambda step: None)
    source, directory = Path(source), Path(directory)
    check_target(directory, force)
    try:
        spandrel = require_spandrel()
    except NeedsSpandrel as error:
        raise NeedsSpandrel(f"{source}: importing it {error}") from None
    progress(f"reading {source}")
    state = read_weights(source)
    progress("recognising the architecture (spandrel)")
    descriptor = recognise(state, source).eval()
    arch = descriptor.architecture.id
    tensors = {k: v.detach().to("cpu").clone().contiguous() for k, v in descriptor.model.state_dict().items()}
    config = ModelConfig(kind="sr", scale=descriptor.scale, net=None, name=source.stem,
                         sr_net=SRNetConfig(arch="spandrel", spandrel_arch=arch),
                         attribution=f"imported from {source.name} by flowsr import ({descriptor.architecture.name} "
                                     "as built by spandrel); the weights' licence is their authors'",
                         training={"source": source.name, "spandrel": spandrel.__version__,
                                   "architecture": descriptor.architecture.name, "tags": list(descriptor.tags),
                                   "size_requirements": str(descriptor.size_requirements)})
    progress("checking flowsr's network against spandrel's")
    lq = torch.rand(1, 3, *PARITY_SIDES, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = descriptor(lq.clone())
    created = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    try:
        atomic_write(directory / "model.safetensors", lambda p: save_file(tensors, str(p)))
        atomic_write(directory / "config.json", lambda p: p.write_text(config.to_json() + "\n"))
        net, _ = load_model_dir(directory)  # as every command will load it
        with torch.no_grad():
            difference = float((net(lq) - expected).abs().max())
        if not difference <= PARITY_TOLERANCE:
            raise ValueError(f"{source}: the rebuilt network differs from spandrel's by {difference:.3g}; "
                             "nothing written")
    except BaseException:
        for name in ("model.safetensors", "config.json"):
            (directory / name).unlink(missing_ok=True)
        if created:
            directory.rmdir()
        raise
    return {"arch": arch, "name": descriptor.architecture.name, "scale": descriptor.scale,
            "params": sum(v.numel() for v in tensors.values() if v.is_floating_point()),
            "max_abs_diff": difference, "config": json.loads(config.to_json())}
