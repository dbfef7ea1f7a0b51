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

SR_ARCHS = ("bsrn", "rlfn")


@dataclass
class SRNetConfig:
    """A published lightweight SR network: ``arch`` ("bsrn" | "rlfn"), its width ``channels``, its number
    of ``blocks``, and (RLFN only) the width of ESA's attention branch ``esa_channels`` (BSRN's ESA is
    always ``channels // 4`` wide)."""

    arch: str
    channels: int
    blocks: int
    esa_channels: int = 16

    def __post_init__(self):
        if self.arch not in SR_ARCHS:
            raise ValueError(f"SRNetConfig.arch must be one of {', '.join(SR_ARCHS)}, not {self.arch!r}")
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
    """The (randomly initialised) network ``cfg`` describes, upscaling by ``scale``."""
    if cfg.arch == "bsrn":
        return BSRN(cfg.channels, cfg.blocks, scale)
    elif cfg.arch == "rlfn":
        return RLFN(cfg.channels, cfg.blocks, cfg.esa_channels, scale)
    raise ValueError(f"unknown SR network {cfg.arch!r}")
