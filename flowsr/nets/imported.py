"""Single-image SR networks of other projects (ESRGAN, SwinIR, SPAN, HAT, ...), recognised and built by
spandrel (https://github.com/chaiNNer-org/spandrel, MIT) from their weights alone.

A model directory written by ``flowsr import`` holds the network's state dict in ``model.safetensors`` and, in
``config.json``, ``sr_net = {"arch": "spandrel", "spandrel_arch": ID}`` with the scale; :func:`rebuild` hands
the tensors back to spandrel (nothing is unpickled) and checks that it finds the same architecture and scale.
spandrel is an optional dependency: ``pip install 'flowsr[import]'``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

PIP_IMPORT = "pip install 'flowsr[import]'"


class NeedsSpandrel(Exception):
    """spandrel is missing or cannot be imported; the message says why and what to install."""


def require_spandrel():
    """The spandrel module, or :class:`NeedsSpandrel` in one line (missing, or broken, e.g. a torchvision built
    for another torch)."""
    try:
        import spandrel
    except Exception as error:  # ImportError, or a torchvision that does not match torch raising at import
        detail = " ".join(str(error).split()) or type(error).__name__
        raise NeedsSpandrel(f"needs spandrel ({detail}): {PIP_IMPORT}") from None
    return spandrel


class SpandrelNet(nn.Module):
    """A network spandrel recognised, called the way spandrel calls it: ``sr = net(lq)``, lq (B,3,h,w) RGB in
    [0,1] -> (B,3,h*scale,w*scale) in [0,1] (spandrel's ``ImageModelDescriptor.__call__``, which pads the input
    to the architecture's size requirements and crops the output back). ``model`` is the architecture's module.

    The padding is done here first, without Python branches on the size, so that an ONNX export stays valid for
    every input size: spandrel's own padding, and the pad to a multiple of the attention window inside window
    transformers (SwinIR, HAT, Swin2SR, ... : a ``window_size`` attribute), decide on Python integers, which the
    exporter fixes at the traced size. Padded here (reflect, then replicate where reflect cannot reach, as spandrel
    pads), those pads are empty and the result is the same."""

    size_multiple = 1  # any input size works (padded here)

    def __init__(self, descriptor):
        super().__init__()
        self.model = descriptor.model  # registered: .to(), hooks and state_dict (keys "model.*") reach it
        self.descriptor = descriptor
        self.arch, self.scale = descriptor.architecture.id, descriptor.scale
        window = getattr(descriptor.model, "window_size", 1)
        self.multiple = math.lcm(descriptor.size_requirements.multiple_of, window if isinstance(window, int) else 1)
        # Window transformers undo their window partition with B = int(windows / (H * W / window^2)), a Python
        # integer that the ONNX exporter fixes at the traced batch (a graph traced at batch 2 scrambles the
        # attention of batch 1 or 3); flowsr export therefore traces them at one image a call.
        self.export_batch = 1 if isinstance(window, int) and window > 1 else None

    def forward(self, lq: torch.Tensor) -> torch.Tensor:
        height, width = lq.shape[-2:]
        need, m = self.descriptor.size_requirements, self.multiple
        to_h = (torch.sym_max(height, need.minimum) + m - 1) // m * m
        to_w = (torch.sym_max(width, need.minimum) + m - 1) // m * m
        if need.square:
            to_h = to_w = torch.sym_max(to_h, to_w)
        reflect_h, reflect_w = torch.sym_min(to_h - height, height - 1), torch.sym_min(to_w - width, width - 1)
        x = F.pad(lq, (0, reflect_w, 0, reflect_h), mode="reflect")
        x = F.pad(x, (0, to_w - width - reflect_w, 0, to_h - height - reflect_h), mode="replicate")
        return self.descriptor(x)[..., :height * self.scale, :width * self.scale]


def recognise(state: dict, source) -> object:
    """spandrel's ImageModelDescriptor for a state dict, checked to be a single-image super-resolution network
    (RGB in, RGB out, scale 2..8); ValueError / NeedsSpandrel in one line naming ``source`` otherwise."""
    from flowsr.settings import MAX_SCALE

    spandrel = require_spandrel()
    try:
        descriptor = spandrel.ModelLoader(device="cpu").load_from_state_dict(state)
    except spandrel.UnsupportedModelError:
        raise ValueError(f"{source}: spandrel does not recognise this network (not one of the architectures of "
                         f"spandrel {spandrel.__version__})") from None
    except Exception as error:  # an architecture's loader failing on odd weights
        detail = " ".join(str(error).split())[:300]
        raise ValueError(f"{source}: spandrel cannot build this network ({detail})") from None
    name = f"{descriptor.architecture.name} ({descriptor.purpose})"
    if not isinstance(descriptor, spandrel.ImageModelDescriptor):
        raise ValueError(f"{source}: {name} takes more than one image (e.g. a mask); flowsr runs single-image "
                         "super-resolution networks")
    if descriptor.purpose != "SR" or not 2 <= descriptor.scale <= MAX_SCALE:
        raise ValueError(f"{source}: {name} at x{descriptor.scale} is not a super-resolution network of scale "
                         f"2..{MAX_SCALE}")
    if (descriptor.input_channels, descriptor.output_channels) != (3, 3):
        raise ValueError(f"{source}: {name} maps {descriptor.input_channels} channels to "
                         f"{descriptor.output_channels}; flowsr needs RGB in and RGB out")
    return descriptor


def rebuild(state: dict[str, torch.Tensor], arch: str, scale: int, source) -> SpandrelNet:
    """The network of an imported model directory from its tensors: spandrel must find architecture ``arch``
    at ``scale`` whose state dict has exactly these keys and shapes. ValueError / NeedsSpandrel otherwise."""
    descriptor = recognise(state, source)
    if (descriptor.architecture.id, descriptor.scale) != (arch, scale):
        raise ValueError(f"{source}: spandrel finds {descriptor.architecture.id} x{descriptor.scale} in these "
                         f"weights, config.json says {arch} x{scale}")
    built = descriptor.model.state_dict()
    differ = sorted(k for k in set(built) | set(state)
                    if k not in built or k not in state or built[k].shape != state[k].shape)
    if differ:
        raise ValueError(f"{source}: weights do not match the {arch} network spandrel builds from them "
                         f"({len(differ)} tensors differ, e.g. {differ[0]})")
    return SpandrelNet(descriptor.eval()).requires_grad_(False)
