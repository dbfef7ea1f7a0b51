"""``flowsr export``: write a model's network as ONNX, checked, beside a config.json describing the graph.

The graph is the network itself, ``v = net(x, t, h, cond)`` with batch, height and width dynamic, not a
sampler: one-step models need one call, teachers and few-step students loop over it exactly as
:mod:`flowsr.samplers` does, so every sampler, the OFTSR knob and guidance work on the export.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

import flowsr
from flowsr.catalog import check_export_target, model_path
from flowsr.checkpoint import atomic_write, load_model_dir
from flowsr.onnx_backend import DTYPES, INPUTS, ONNX_FILE, OUTPUT, is_onnx_dir, one_line, require

PARITY_TOLERANCE = 1e-4  # max abs difference of one float32 network call, ONNX Runtime vs torch
MIN_OPSET = 18  # the lowest opset torch's exporter implements


class _Network(torch.nn.Module):
    """The network with the graph's input order ``(x, t, h, cond)``."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x, t, h, cond):
        return self.net(x, t, cond, h)


def graph_spec(config, dtype: str, size_multiple: int) -> dict:
    """The ``"onnx"`` section of config.json: inputs and outputs with names, shapes, dtypes and value ranges."""
    image = ["batch", 3, "height", "width"]
    return {
        "file": ONNX_FILE,
        "dtype": dtype,
        "size_multiple": size_multiple,
        "inputs": [
            {"name": "x", "dtype": dtype, "shape": image, "range": [-1, 1],
             "about": "state of the flow at time t, roughly in [-1, 1]; at t = 0 the source "
                      "x0 = sqrt(1 - sigma_p^2) * cond + sigma_p * noise, noise ~ N(0, 1) (x0 = cond for regression)"},
            {"name": "t", "dtype": "float32", "shape": ["batch"], "range": [0, 1],
             "about": "time: 0 = noisy LR side, 1 = HR side"},
            {"name": "h", "dtype": "float32", "shape": ["batch"], "range": [0, 1],
             "about": "interval: students return the average velocity over [t, t + h] (h = the knob t at one "
                      "step); 0 for flow teachers and regression"},
            {"name": "cond", "dtype": dtype, "shape": image, "range": [-1, 1],
             "about": f"bicubic x{config.scale} upsampled LR image as 2 * up - 1, padded (reflect) to multiples "
                      "of size_multiple; zeros = no condition (classifier-free guidance)"},
        ],
        "outputs": [
            {"name": OUTPUT, "dtype": dtype, "shape": image, "range": [-2, 2],
             "about": "velocity (students: average velocity), roughly in [-2, 2]; one step: "
                      "sr = (clip(x + v, -1, 1) + 1) / 2, cropped to the unpadded size"},
        ],
        "height": f"multiple of {size_multiple}", "width": f"multiple of {size_multiple}",
    }


def export(model: str | Path, directory: str | Path, opset: int | None = None, dtype: str = "float32",
           force: bool = False) -> dict:
    """Export ``model`` (bundled name or model directory) to ``directory/model.onnx`` + ``config.json``.

    The graph is checked with ``onnx.checker`` and one call through ONNX Runtime is compared with torch
    (float32: max abs difference at most :data:`PARITY_TOLERANCE`, else nothing is written). Returns the
    ``"onnx"`` section written to config.json. ``directory`` must be new, empty or a previous export of this
    model (``force``: any folder but a torch model's; :func:`flowsr.catalog.check_export_target`).
    Raises ModelLoadError / ValueError with a one-line message.
    """
    onnx = require("onnx", "flowsr export")
    require("onnxscript", "flowsr export")
    ort = require("onnxruntime", "flowsr export")
    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be {' or '.join(DTYPES)}, not {dtype!r}")
    if opset is not None and opset < MIN_OPSET:
        raise ValueError(f"--opset {opset}: the torch exporter writes opset {MIN_OPSET} or later "
                         "(converting this network further down yields an invalid graph)")
    source = model_path(model)
    if source is None:
        raise ValueError("bicubic has no network to export")
    check_export_target(str(model), Path(directory), force)
    if is_onnx_dir(source):
        raise ValueError(f"{source}: already an ONNX export; export the torch model directory instead")
    net, config = load_model_dir(source)
    directory = Path(directory)
    if directory.resolve() == source.resolve() or (directory / "model.safetensors").exists():
        raise ValueError(f"{directory}: holds a torch model (model.safetensors); export to another directory")
    without_h = _h_zero_is_no_h(net)
    if config.kind in ("flow", "regression") and not without_h:
        raise ValueError(f"{source}: this {config.kind} model's interval MLP is not zero, so h = 0 differs from "
                         "calling it without h, as the samplers do; it cannot be exported")

    m = net.size_multiple
    export_net = _Network(net if dtype == "float32" else load_model_dir(source)[0].half()).eval()
    image_dtype = torch.float32 if dtype == "float32" else torch.float16
    # distinct example tensors of distinct sizes: aliased or equal-sized inputs would be merged by the tracer
    generator = torch.Generator().manual_seed(0)
    example = (torch.randn(2, 3, 2 * m, 3 * m, generator=generator).to(image_dtype),
               torch.rand(2, generator=generator), torch.rand(2, generator=generator),
               torch.randn(2, 3, 2 * m, 3 * m, generator=generator).to(image_dtype))
    image_axes = {0: "batch", 2: "height", 3: "width"}
    dynamic = {"x": image_axes, "t": {0: "batch"}, "h": {0: "batch"}, "cond": image_axes}
    try:
        with _quiet():
            program = torch.onnx.export(export_net, example, dynamo=True, input_names=list(INPUTS),
                                        output_names=[OUTPUT], dynamic_shapes=dynamic, opset_version=opset,
                                        verbose=False, external_data=False)
    except Exception as error:  # the exporter's failures come in many types; report one line
        raise ValueError(f"{source}: torch.onnx.export failed ({one_line(error)})") from error
    spec = graph_spec(config, dtype, m)
    spec["h_zero_is_no_h"] = without_h

    def write(path: Path) -> None:
        program.save(str(path))
        _name_output_axes(onnx, path)
        try:
            onnx.checker.check_model(str(path), full_check=True)
        except onnx.checker.ValidationError as error:
            raise ValueError(f"{ONNX_FILE}: onnx.checker rejects the exported graph ({one_line(error)}); "
                             "nothing written") from None
        proto = onnx.load(str(path), load_external_data=False)
        spec["opset"] = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
        try:
            spec["check"] = parity(net, path, ort, m)
        except Exception as error:  # onnxruntime's exceptions subclass Exception directly
            raise ValueError(f"{ONNX_FILE}: onnxruntime cannot run the exported graph ({one_line(error)}); "
                             "nothing written") from None
        difference = spec["check"]["max_abs_diff"]
        if dtype == "float32" and not difference <= PARITY_TOLERANCE:
            raise ValueError(f"{path.name}: ONNX Runtime differs from torch by {difference:.3g} "
                             f"(> {PARITY_TOLERANCE:g}); nothing written")

    created = not directory.exists()
    try:
        atomic_write(directory / ONNX_FILE, write)
    except BaseException:
        if created and directory.is_dir() and not any(directory.iterdir()):
            directory.rmdir()  # a failed first export leaves no empty directory behind
        raise
    spec["flops_per_pixel"] = _flops_per_pixel(net)
    spec["exported_from"] = str(model)
    spec["versions"] = {"flowsr": flowsr.__version__, "torch": torch.__version__.split("+")[0],
                        "onnx": onnx.__version__, "onnxruntime": ort.__version__}
    payload = {**json.loads(config.to_json()), "onnx": spec}
    text = json.dumps(payload, indent=2, sort_keys=True) + "\n"
    atomic_write(directory / "config.json", lambda p: p.write_text(text))
    return spec


def parity(net: torch.nn.Module, path: Path, ort, multiple: int) -> dict:
    """One network call, ONNX Runtime (CPU) against the float32 torch network, at a size and batch other
    than the traced ones: ``{"shape", "max_abs_diff", "mean_abs_diff"}``."""
    generator = torch.Generator().manual_seed(1)
    cond = torch.rand(1, 3, 3 * multiple, 2 * multiple, generator=generator) * 2 - 1
    x = math.sqrt(1 - 0.2**2) * cond + 0.2 * torch.randn(cond.shape, generator=generator)
    t, h = torch.rand(1, generator=generator), torch.rand(1, generator=generator)
    with torch.no_grad():
        reference = net(x, t, cond, h).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    dtype = np.float16 if session.get_inputs()[0].type == "tensor(float16)" else np.float32
    feed = {"x": x.numpy().astype(dtype), "t": t.numpy(), "h": h.numpy(), "cond": cond.numpy().astype(dtype)}
    difference = np.abs(session.run([OUTPUT], feed)[0].astype(np.float32) - reference)
    return {"shape": list(x.shape), "max_abs_diff": float(difference.max()),
            "mean_abs_diff": float(difference.mean())}


def _name_output_axes(onnx, path: Path) -> None:
    """Declare the output (batch, 3, height, width), as the inputs: the exporter spells its height as the
    U-Net's down- and upsampling arithmetic, equal to the input's for the sizes the graph accepts."""
    proto = onnx.load(str(path))
    for dim, name in zip(proto.graph.output[0].type.tensor_type.shape.dim, ("batch", None, "height", "width")):
        if name is not None:
            dim.dim_param = name
    onnx.save(proto, str(path))


def _h_zero_is_no_h(net: torch.nn.Module) -> bool:
    """Whether ``net(..., h=0)`` equals ``net(...)`` bit for bit (interval MLP still zero, as in every teacher
    and regression net): the graph always takes h, and a call without h is fed h = 0."""
    side = net.size_multiple * math.ceil(32 / net.size_multiple)
    x, cond = torch.randn(1, 3, side, side), torch.randn(1, 3, side, side)
    with torch.no_grad():
        return torch.equal(net(x, torch.full((1,), 0.5), cond), net(x, torch.full((1,), 0.5), cond, torch.zeros(1)))


def _flops_per_pixel(net: torch.nn.Module) -> float:
    """FLOPs of one network call per output pixel (the bench's FLOP count for ONNX models)."""
    side = net.size_multiple * math.ceil(64 / net.size_multiple)
    x = torch.zeros(1, 3, side, side)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(x, torch.zeros(1), x, h=torch.zeros(1))
    return counter.get_total_flops() / side**2


@contextlib.contextmanager
def _quiet():
    """Silence the exporter's progress lines, version notes and deprecation warnings (errors still raise)."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "onnx_ir")]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


__all__ = ["export", "parity", "graph_spec", "PARITY_TOLERANCE"]
