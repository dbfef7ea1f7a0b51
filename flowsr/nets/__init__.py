"""The network zoo, one file a network: the conditional U-Net of the flow models (``unet``), and the
published lightweight x4 SR networks used as start networks (``bsrn``, ``rlfn``)."""

from flowsr.nets.unet import NetConfig, UNet, count_parameters, timestep_embedding

__all__ = ["NetConfig", "UNet", "count_parameters", "timestep_embedding"]
