"""The network zoo, one file a network: the conditional U-Net of the flow models (``unet``), and the
published lightweight x4 SR networks used as start networks (``bsrn``, ``rlfn``).

The SR networks map ``(B, 3, h, w)`` RGB in [0, 1] to ``(B, 3, scale*h, scale*w)`` RGB in about [0, 1]
(unclamped); build one from an :class:`SRNetConfig` with :func:`build_sr_net`, e.g.
``build_sr_net(SRNetConfig(**BSRN_X4), scale=4)``, then load the authors' weights with ``strict=True``.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from flowsr.nets.bsrn import BSRN
from flowsr.nets.rlfn import RLFN
from flowsr.nets.unet import NetConfig, UNet, count_parameters, timestep_embedding

__all__ = ["BSRN", "BSRN_X4", "NetConfig", "RLFN", "RLFN_X4", "SRNetConfig", "UNet", "build_sr_net",
           "count_parameters", "timestep_embedding"]

SR_ARCHS = ("bsrn", "rlfn", "spandrel")


@dataclass
class SRNetConfig:
    """A published lightweight SR network: ``arch`` ("bsrn" | "rlfn"), its width ``channels``, its number
    of ``blocks``, and (RLFN only) the width of ESA's attention branch ``esa_channels`` (BSRN's ESA is
    always ``channels // 4`` wide). Or ``arch`` "spandrel": a network imported by ``flowsr import``, of
    spandrel's architecture ``spandrel_arch`` (e.g. "ESRGAN", "SwinIR"), rebuilt from its weights by spandrel
    (:mod:`flowsr.nets.imported`); channels and blocks are then 0 (the weights' shapes say them)."""

    arch: str
    channels: int = 0
    blocks: int = 0
    esa_channels: int = 16
    spandrel_arch: str = ""

    def __post_init__(self):
        if self.arch not in SR_ARCHS:
            raise ValueError(f"SRNetConfig.arch must be one of {', '.join(SR_ARCHS)}, not {self.arch!r}")
        if self.arch == "spandrel":
            if not (self.spandrel_arch and len(self.spandrel_arch) <= 64 and self.spandrel_arch.isidentifier()):
                raise ValueError(f"SRNetConfig.spandrel_arch must name spandrel's architecture (e.g. ESRGAN), "
                                 f"not {self.spandrel_arch!r}")
            if (self.channels, self.blocks) != (0, 0):
                raise ValueError("SRNetConfig.channels and blocks must be 0 for a spandrel network (its weights "
                                 "give them)")
            return
        if self.spandrel_arch:
            raise ValueError(f"SRNetConfig.spandrel_arch is for arch spandrel only, not {self.arch}")
        for name, high in (("channels", 512), ("blocks", 64), ("esa_channels", 512)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
                raise ValueError(f"SRNetConfig.{name} must be an integer in 1..{high}, not {value!r}")
        if self.arch == "bsrn" and self.channels < 16:
            raise ValueError("SRNetConfig.channels must be at least 16 for bsrn (its CCA squeezes by 16), "
                             f"not {self.channels}")


# the authors' published x4 models (weights: ../shared/weights/{bsrn,rlfn}_x4.safetensors)
BSRN_X4 = dict(arch="bsrn", channels=64, blocks=8)
RLFN_X4 = dict(arch="rlfn", channels=52, blocks=6, esa_channels=16)


def build_sr_net(cfg: SRNetConfig, scale: int) -> nn.Module:
    """The (randomly initialised) network ``cfg`` describes, upscaling by ``scale``. (A spandrel network is
    built from its weights: :func:`flowsr.nets.imported.rebuild`.)"""
    if cfg.arch == "bsrn":
        return BSRN(cfg.channels, cfg.blocks, scale)
    elif cfg.arch == "rlfn":
        return RLFN(cfg.channels, cfg.blocks, cfg.esa_channels, scale)
    raise ValueError(f"unknown SR network {cfg.arch!r}")
