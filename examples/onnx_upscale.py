"""Upscale an image with a flowsr model exported to ONNX, using only onnxruntime, numpy and Pillow.

    flowsr export oftsr-x4 -o oftsr-x4-onnx                       # once, where flowsr is installed
    python examples/onnx_upscale.py oftsr-x4-onnx in.png out.png [--t 0.5] [--seed 0]

No flowsr and no torch needed. One network call: what the one-step students (oftsr, meanflow), the
regression baseline, a flow teacher's 1 Euler step and an SR network (bsrn-x4, rlfn-x4) do; several steps
and guidance loop over the same call as flowsr/samplers.py does. A model with a start network starts
from that network's output (its export in start/) instead of the bicubic upsampling.
Differences from ``flowsr upscale`` (measured in tests/test_onnx.py):
- the bicubic upsampling is Pillow's (float mode), the same cubic kernel (a = -0.5) as flowsr's
  MATLAB imresize, equal inside the image and up to a few grey levels apart in the outer 8 HR pixels
  (Pillow renormalises the kernel at the border, MATLAB mirrors the image);
- the source noise comes from numpy, not from flowsr's seeded bands, so the grain differs;
- alpha is dropped and greyscale becomes RGB; no tiling, so the whole image must fit in memory.
"""

import argparse
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image


def upscale(model_dir: Path, image: Image.Image, t: float | None = None, seed: int = 0,
            noise: np.ndarray | None = None) -> Image.Image:
    """LR PIL image -> SR PIL image (RGB, 8-bit); see :func:`predict`."""
    rgb = (predict(Path(model_dir), image, t, seed, noise) * 255).round().astype(np.uint8)
    return Image.fromarray(rgb.transpose(1, 2, 0))


def predict(model_dir: Path, image: Image.Image, t: float | None = None, seed: int = 0,
            noise: np.ndarray | None = None) -> np.ndarray:
    """One call of the exported network: LR PIL image -> SR (3, H, W) float in [0, 1]. ``noise``: the source
    noise, (1, 3, H, W) at the padded HR size (default: standard normal from ``seed``)."""
    config = json.loads((model_dir / "config.json").read_text())
    session = ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    dtype = np.float16 if config["onnx"]["dtype"] == "float16" else np.float32
    if config["kind"] == "sr":  # a feed-forward SR network (BSRN, RLFN): sr = net(lq), lq in [0, 1]
        lq = np.asarray(image.convert("RGB"), np.float32).transpose(2, 0, 1)[None] / 255
        return session.run(["sr"], {"lq": lq.astype(dtype)})[0][0].astype(np.float64).clip(0, 1)
    scale, multiple, sigma = config["scale"], config["onnx"]["size_multiple"], config["sigma_p"]
    width, height = image.width * scale, image.height * scale
    if config.get("start", "bicubic") == "bicubic":  # bicubic upsampling in float
        start = np.stack([np.asarray(image.convert("RGB").getchannel(c).convert("F").resize((width, height),
                          Image.BICUBIC)) for c in range(3)]).clip(0, 255) / 255
    else:  # the start network's output (exported beside the model, in start/)
        start = predict(model_dir / config["start"], image)
    # to [-1, 1], reflect-padded to multiples of the network's size
    cond = np.pad(start * 2 - 1, ((0, 0), (0, -height % multiple), (0, -width % multiple)), mode="reflect")[None]
    # source x0 = sqrt(1 - sigma^2) cond + sigma noise (regression nets start from cond itself)
    noise = np.random.default_rng(seed).standard_normal(cond.shape) if noise is None else noise
    x0 = cond if config["kind"] == "regression" else np.sqrt(1 - sigma**2) * cond + sigma * noise
    # h: the fidelity-realism knob of the distilled students, 0 for teachers and regression
    knob = (config["default_t"] if t is None else t) if config["kind"] in ("oftsr", "meanflow") else 0.0
    feed = {"x": x0.astype(dtype), "cond": cond.astype(dtype), "t": np.zeros(1, np.float32),
            "h": np.full(1, knob, np.float32)}
    sr = x0 + session.run(["v"], feed)[0].astype(np.float64)  # one step: x1 = x0 + v
    return (sr[0, :, :height, :width].clip(-1, 1) + 1) / 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", type=Path, help="directory written by flowsr export")
    parser.add_argument("input", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("--t", type=float, default=None, help="students' knob: 0 fidelity .. 1 realism")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    upscale(args.model, Image.open(args.input), args.t, args.seed).save(args.output)


if __name__ == "__main__":
    main()
