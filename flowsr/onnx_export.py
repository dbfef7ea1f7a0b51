"""``flowsr export``: write a model's network as ONNX, checked, beside a config.json describing the graph.

The graph is the network itself, ``v = net(x, t, h, cond)`` with batch, height and width dynamic, not a
sampler: one-step models need one call, teachers and few-step students loop over it exactly as
:mod:`flowsr.samplers` does, so every sampler, the OFTSR knob and guidance work on the export. A
feed-forward SR network (kind sr: BSRN, RLFN) is ``sr = net(lq)``; a flow model's start network is
exported beside it, into ``start/``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch

import flowsr
from flowsr.bench import network_flops_per_pixel
from flowsr.catalog import bundled_models, check_export_target, model_path, start_path, weights_sha256
from flowsr.checkpoint import atomic_write, load_model_dir
from flowsr.onnx_backend import (
    DTYPES,
    INPUTS,
    ONNX_FILE,
    OUTPUT,
    SR_INPUTS,
    SR_OUTPUT,
    is_onnx_dir,
    one_line,
    require,
)

PARITY_TOLERANCE = 1e-4  # max abs difference of one float32 network call, ONNX Runtime vs torch
MIN_OPSET = 18  # the lowest opset torch's exporter implements
START_DIR = "start"  # an exported flow model's start network, exported beside it


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


def sr_graph_spec(config, dtype: str, batch: int | None = None) -> dict:
    """The ``"onnx"`` section of a feed-forward SR network's export (kind sr): ``sr = net(lq)``; ``batch``: the
    graph's fixed batch size (1 for window transformers, see :class:`flowsr.nets.imported.SpandrelNet`), None
    for any batch."""
    s, b = config.scale, "batch" if batch is None else batch
    return {
        "file": ONNX_FILE,
        "dtype": dtype,
        "size_multiple": 1,
        "inputs": [
            {"name": SR_INPUTS[0], "dtype": dtype, "shape": [b, 3, "height", "width"], "range": [0, 1],
             "about": "low-resolution RGB image, float in [0, 1]; any height and width >= 1"
                      + ("" if batch is None else f"; {batch} image(s) a call")},
        ],
        "outputs": [
            {"name": SR_OUTPUT, "dtype": dtype, "shape": [b, 3, f"{s}*height", f"{s}*width"], "range": [0, 1],
             "about": f"the x{s} super-resolved image, about [0, 1] (it may overshoot slightly: clip to [0, 1])"},
        ],
        "height": "any >= 1", "width": "any >= 1",
    }


def export(model: str | Path, directory: str | Path, opset: int | None = None, dtype: str = "float32",
           force: bool = False, progress=None, _depth: int = 0) -> dict:
    """Export ``model`` (bundled name or model directory) to ``directory/model.onnx`` + ``config.json``.

    A U-Net's graph is ``v = net(x, t, h, cond)``, a feed-forward SR network's (kind sr) ``sr = net(lq)``. A
    model with a start network gets that network's export in ``directory/start/`` (recursively, as deep as
    :func:`flowsr.pipeline.load` follows starts), and its config.json names it (``"start": "start"``, with
    the SHA-256 of ``start/model.onnx``), so the directory runs without any torch weights.

    Each graph is checked with ``onnx.checker`` and one call through ONNX Runtime is compared with torch
    (float32: max abs difference at most :data:`PARITY_TOLERANCE`, else nothing is written). Returns the
    ``"onnx"`` section written to config.json. ``directory`` must be new, empty or a previous export of this
    model (``force``: any folder but a torch model's; :func:`flowsr.catalog.check_export_target`).
    ``progress(step)``, if given, is called with a few words before each step that takes long (loading,
    tracing, checking each graph). Raises ModelLoadError / ValueError with a one-line message.
    """
    progress = progress or (lambda step: None)
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
    progress(f"loading {source}")
    net, config = load_model_dir(source)
    directory = Path(directory)
    if directory.resolve() == source.resolve() or (directory / "model.safetensors").exists():
        raise ValueError(f"{directory}: holds a torch model (model.safetensors); export to another directory")
    sr = config.kind == "sr"
    without_h = sr or _h_zero_is_no_h(net)
    if config.kind in ("flow", "regression") and not without_h:
        raise ValueError(f"{source}: this {config.kind} model's interval MLP is not zero, so h = 0 differs from "
                         "calling it without h, as the samplers do; it cannot be exported")

    created = not directory.exists()
    start_created = not (directory / START_DIR).exists()
    try:
        if config.start != "bicubic":  # first the start, checked as flowsr.load checks it
            config = _export_start(source, config, directory / START_DIR, opset, dtype, _depth, progress)
        spec = _export_graph(onnx, ort, source, net, config, directory / ONNX_FILE, opset, dtype, progress)
        if sr and config.licence and (source / config.licence).is_file():  # the weights' licence travels with them
            licence = (source / config.licence).read_bytes()
            atomic_write(directory / config.licence, lambda p: p.write_bytes(licence))
    except BaseException:
        if created and directory.is_dir():
            shutil.rmtree(directory)  # a failed first export leaves nothing behind
        elif start_created and (directory / START_DIR).is_dir():
            shutil.rmtree(directory / START_DIR)
        raise
    if not sr:
        spec["h_zero_is_no_h"] = without_h
    spec["flops_per_pixel"] = network_flops_per_pixel(net, config)
    spec["exported_from"] = str(model)
    spec["weights_sha256"] = weights_sha256(source)  # the torch weights (a start's: Upscaler.start_origin)
    spec["versions"] = {"flowsr": flowsr.__version__, "torch": torch.__version__.split("+")[0],
                        "onnx": onnx.__version__, "onnxruntime": ort.__version__}
    payload = {**json.loads(config.to_json()), "onnx": spec}
    text = json.dumps(payload, indent=2, sort_keys=True) + "\n"
    atomic_write(directory / "config.json", lambda p: p.write_text(text))
    return spec


def _export_start(source: Path, config, target: Path, opset: int | None, dtype: str, depth: int, progress):
    """Export the start network of the model at ``source`` into ``target`` (an ONNX start is copied); returns
    ``config`` naming it ``"start"`` with its ``model.onnx``'s SHA-256. The start is checked first by
    :func:`flowsr.pipeline.load_start` (it exists, kind, scale, checksum, depth)."""
    from flowsr.pipeline import load_start

    load_start(source, config, device="cpu", dtype="fp32", _depth=depth)
    start = start_path(source, config.start)
    if is_onnx_dir(start):
        shutil.copytree(start, target, dirs_exist_ok=True)
    else:  # a bundled start is recorded by its name
        export(config.start if start == bundled_models().get(config.start) else start, target, opset, dtype,
               progress=progress, _depth=depth + 1)
    return dataclasses.replace(config, start=START_DIR, start_sha256=weights_sha256(target))


def _export_graph(onnx, ort, source: Path, net: torch.nn.Module, config, path: Path, opset: int | None,
                  dtype: str, progress) -> dict:
    """Trace ``net`` (float32, or a float16 copy) with dynamic batch (or the net's fixed ``export_batch``), height
    and width and write it to ``path``, checked (onnx.checker, ONNX Runtime against torch); returns the graph's
    ``"onnx"`` section."""
    sr = config.kind == "sr"
    m = 1 if sr else net.size_multiple
    export_net = net if dtype == "float32" else load_model_dir(source)[0].half()
    image_dtype = torch.float32 if dtype == "float32" else torch.float16
    # distinct example tensors of distinct sizes: aliased or equal-sized inputs would be merged by the tracer
    generator = torch.Generator().manual_seed(0)
    image_axes = {0: "batch", 2: "height", 3: "width"}
    fixed_batch = getattr(net, "export_batch", None) if sr else None
    if sr:  # the LR image; inputs below the ESA's minimum side are padded inside the graph
        example = (torch.rand(fixed_batch or 2, 3, 20, 24, generator=generator).to(image_dtype),)
        axes = image_axes if fixed_batch is None else {2: "height", 3: "width"}
        names, output, dynamic = list(SR_INPUTS), SR_OUTPUT, {SR_INPUTS[0]: axes}
    else:
        export_net = _Network(export_net)
        example = (torch.randn(2, 3, 2 * m, 3 * m, generator=generator).to(image_dtype),
                   torch.rand(2, generator=generator), torch.rand(2, generator=generator),
                   torch.randn(2, 3, 2 * m, 3 * m, generator=generator).to(image_dtype))
        names, output = list(INPUTS), OUTPUT
        dynamic = {"x": image_axes, "t": {0: "batch"}, "h": {0: "batch"}, "cond": image_axes}
    progress(f"tracing {source} ({dtype}, torch.onnx.export)")
    try:
        with _quiet():
            program = torch.onnx.export(export_net.eval(), example, dynamo=True, input_names=names,
                                        output_names=[output], dynamic_shapes=dynamic, opset_version=opset,
                                        verbose=False, external_data=False)
    except Exception as error:  # the exporter's failures come in many types; report one line
        raise ValueError(f"{source}: torch.onnx.export failed ({one_line(error)})") from error
    spec = sr_graph_spec(config, dtype, fixed_batch) if sr else graph_spec(config, dtype, m)

    def write(temporary: Path) -> None:
        progress(f"checking {path} (onnx.checker, one ONNX Runtime call against torch)")
        program.save(str(temporary))
        _name_output_axes(onnx, temporary, spec["outputs"][0]["shape"])
        try:
            onnx.checker.check_model(str(temporary), full_check=True)
        except onnx.checker.ValidationError as error:
            raise ValueError(f"{ONNX_FILE}: onnx.checker rejects the exported graph ({one_line(error)}); "
                             "nothing written") from None
        proto = onnx.load(str(temporary), load_external_data=False)
        spec["opset"] = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
        try:
            spec["check"] = sr_parity(net, temporary, ort, fixed_batch) if sr else parity(net, temporary, ort, m)
        except Exception as error:  # onnxruntime's exceptions subclass Exception directly
            raise ValueError(f"{path}: onnxruntime cannot run the exported {dtype} graph ({one_line(error)}); "
                             "nothing written") from None
        difference = spec["check"]["max_abs_diff"]
        if dtype == "float32" and not difference <= PARITY_TOLERANCE:
            raise ValueError(f"{path}: ONNX Runtime differs from torch by {difference:.3g} "
                             f"(> {PARITY_TOLERANCE:g}); nothing written")

    atomic_write(path, write)
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


def sr_parity(net: torch.nn.Module, path: Path, ort, batch: int | None = None) -> dict:
    """:func:`parity` of an SR network's graph ``sr = net(lq)`` at a size other than the traced one, one side
    below the ESA's minimum (padded inside the graph): one call at batch 1 and one at batch 3 (the graph was
    traced at 2), or at the graph's fixed ``batch``. The differences are over both calls."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    dtype = np.float16 if session.get_inputs()[0].type == "tensor(float16)" else np.float32
    generator = torch.Generator().manual_seed(1)
    differences = []
    for size in ((batch,) if batch else (1, 3)):
        lq = torch.rand(size, 3, 13, 18, generator=generator)
        with torch.no_grad():
            reference = net(lq).numpy()
        output = session.run([SR_OUTPUT], {SR_INPUTS[0]: lq.numpy().astype(dtype)})[0].astype(np.float32)
        differences.append(np.abs(output - reference).ravel())
    difference = np.concatenate(differences)
    return {"shape": [batch or 3, 3, 13, 18], "max_abs_diff": float(difference.max()),
            "mean_abs_diff": float(difference.mean())}


def _name_output_axes(onnx, path: Path, shape: list) -> None:
    """Declare the output's axes as the graph section states them (the U-Net's (batch, 3, height, width), as
    its inputs): the exporter spells the U-Net's height as its down- and upsampling arithmetic, equal to the
    input's for the sizes the graph accepts."""
    proto = onnx.load(str(path))
    for dim, name in zip(proto.graph.output[0].type.tensor_type.shape.dim, shape):
        if isinstance(name, str):
            dim.dim_param = name
    onnx.save(proto, str(path))


def _h_zero_is_no_h(net: torch.nn.Module) -> bool:
    """Whether ``net(..., h=0)`` equals ``net(...)`` bit for bit (interval MLP still zero, as in every teacher
    and regression net): the graph always takes h, and a call without h is fed h = 0."""
    side = net.size_multiple * math.ceil(32 / net.size_multiple)
    x, cond = torch.randn(1, 3, side, side), torch.randn(1, 3, side, side)
    with torch.no_grad():
        return torch.equal(net(x, torch.full((1,), 0.5), cond), net(x, torch.full((1,), 0.5), cond, torch.zeros(1)))


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


__all__ = ["export", "parity", "sr_parity", "graph_spec", "sr_graph_spec", "PARITY_TOLERANCE"]
