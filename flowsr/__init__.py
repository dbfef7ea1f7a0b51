"""flowsr: one-step and few-step image super-resolution with flow models.

Images at the API boundary are float in [0, 1] (or PIL / uint8 numpy); see :func:`load`.
"""

__version__ = "0.1.0"


def load(model="default", device="auto", dtype="auto", scale=None):
    """Load a model by bundled name, directory or ``"bicubic"``; see :func:`flowsr.pipeline.load`."""
    from flowsr.pipeline import load as _load

    return _load(model, device=device, dtype=dtype, scale=scale)


__all__ = ["load", "__version__"]
