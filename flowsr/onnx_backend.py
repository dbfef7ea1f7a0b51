"""ONNX Runtime backend: an exported network (``flowsr export``) called like :class:`flowsr.nets.UNet`.

An *ONNX model directory* holds ``model.onnx`` (the network, inputs ``x, t, h, cond``, output ``v``;
for a feed-forward SR network of kind sr, input ``lq``, output ``sr``), ``config.json`` (the model's
:class:`~flowsr.config.ModelConfig` plus an ``"onnx"`` section describing the graph) and, for a flow
model with a start network, that network's own export in ``start/``. :class:`OnnxNet` has the U-Net's
signature ``net(x, t, cond, h=None) -> v`` on torch tensors, so the samplers, the OFTSR knob, guidance,
tiling and the source noise of :mod:`flowsr.pipeline` run unchanged on it; :class:`OnnxSRNet` has the SR
network's ``net(lq) -> sr``. onnxruntime is an optional extra: ``pip install "flowsr[onnx]"``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from flowsr.catalog import ModelLoadError, read_config_json
from flowsr.config import ModelConfig

ONNX_FILE = "model.onnx"
INPUTS = ("x", "t", "h", "cond")  # graph input names, in the exported order
OUTPUT = "v"
SR_INPUTS = ("lq",)  # the graph of a feed-forward SR network (kind sr): lq in [0, 1] -> sr
SR_OUTPUT = "sr"
DTYPES = {"float32": np.float32, "float16": np.float16}
OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "layout", "all")
EXECUTION_MODES = ("sequential", "parallel")
INSTALL = 'pip install "flowsr[onnx]"'


def require(module: str, purpose: str = "running an ONNX model"):
    """Import ``module`` (onnx, onnxruntime, onnxscript) or raise ModelLoadError saying what to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ModelLoadError(f"{purpose} needs {module}, which is not installed: {INSTALL}") from None


def is_onnx_dir(path: Path) -> bool:
    return (Path(path) / ONNX_FILE).is_file()


@dataclass
class OrtOptions:
    """ONNX Runtime session settings. ``threads``: intra-op threads (None: torch's thread count, so
    ``OMP_NUM_THREADS`` limits both backends alike; 0: ONNX Runtime's default, one per physical core);
    ``optimization``: graph optimisation level (one of :data:`OPTIMIZATION_LEVELS`); ``execution``:
    sequential or parallel (independent branches of the graph on inter-op threads)."""

    threads: int | None = None
    optimization: str = "all"
    execution: str = "sequential"

    def __post_init__(self):
        if self.optimization not in OPTIMIZATION_LEVELS:
            raise ValueError(f"ONNX Runtime optimisation level must be one of {', '.join(OPTIMIZATION_LEVELS)}, "
                             f"not {self.optimization!r}")
        if self.execution not in EXECUTION_MODES:
            raise ValueError(f"ONNX Runtime execution mode must be sequential or parallel, not {self.execution!r}")
        if self.threads is not None and self.threads < 0:
            raise ValueError(f"ONNX Runtime threads must be >= 0, got {self.threads}")

    @property
    def intra_op_threads(self) -> int:
        return torch.get_num_threads() if self.threads is None else self.threads

    def session_options(self, ort):
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.intra_op_threads
        options.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "layout": ort.GraphOptimizationLevel.ORT_ENABLE_LAYOUT,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[self.optimization]
        options.execution_mode = (ort.ExecutionMode.ORT_PARALLEL if self.execution == "parallel"
                                  else ort.ExecutionMode.ORT_SEQUENTIAL)
        options.log_severity_level = 3  # errors only
        return options


def resolve_device(device: str = "auto") -> torch.device:
    """``auto``: CUDA when torch and onnxruntime both have it, else the CPU; ``cuda`` without onnxruntime's
    CUDA provider raises ModelLoadError."""
    ort = require("onnxruntime")
    has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    if device == "auto":
        return torch.device("cuda" if has_cuda and torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not has_cuda:
        raise ModelLoadError("--device cuda: onnxruntime has no CUDA provider here "
                             "(pip install onnxruntime-gpu instead of onnxruntime)")
    return device


class OnnxNet:
    """A ``model.onnx`` exported by ``flowsr export``, called as ``net(x, t, cond, h=None) -> v``.

    ``x``, ``cond``: (B, 3, H, W) torch tensors, H and W multiples of :attr:`size_multiple`; ``t``, ``h``:
    scalars or (B,) in [0, 1]. ``h=None`` is fed as 0, exact when the export found ``h_zero_is_no_h`` (every
    flow teacher and regression net: their interval MLP is zero), else refused. Returns float32 on ``x``'s
    device; inputs go through host memory as numpy arrays, also with the CUDA provider.
    """

    inputs, output = INPUTS, OUTPUT  # the graph's names, checked when the session opens

    def __init__(self, path: Path, graph: dict, device: torch.device, options: OrtOptions | None = None):
        ort = require("onnxruntime")
        self.path, self.graph, self.device = Path(path), graph, device
        self.options = options or OrtOptions()
        self.threads = self.options.intra_op_threads  # 0: ONNX Runtime's default
        self.size_multiple = int(graph["size_multiple"])
        self.flops_per_pixel = float(graph.get("flops_per_pixel", 0.0))
        self.dtype = graph["dtype"]
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda":
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
        try:
            self.session = ort.InferenceSession(str(self.path), self.options.session_options(ort), providers=providers)
        except Exception as error:  # onnxruntime's own exception types subclass Exception directly
            raise ModelLoadError(f"{self.path}: onnxruntime cannot load it ({one_line(error)})") from None
        names = [i.name for i in self.session.get_inputs()], [o.name for o in self.session.get_outputs()]
        if sorted(names[0]) != sorted(self.inputs) or names[1] != [self.output]:
            raise ModelLoadError(f"{self.path}: graph inputs {names[0]} and outputs {names[1]} are not flowsr's "
                                 f"{', '.join(self.inputs)} -> {self.output} (export it with flowsr export)")
        self.image_dtype = DTYPES[graph["dtype"]]

    def with_options(self, options: OrtOptions) -> OnnxNet:
        """The same graph in a new session with other settings."""
        return type(self)(self.path, self.graph, self.device, options)

    def __call__(self, x: torch.Tensor, t, cond: torch.Tensor, h=None) -> torch.Tensor:
        if x.ndim != 4 or cond.shape != x.shape:
            raise ValueError(f"x and cond must both be (B, C, H, W); got {tuple(x.shape)} and {tuple(cond.shape)}")
        m = self.size_multiple
        if x.shape[-2] % m or x.shape[-1] % m:
            raise ValueError(f"input H, W = {tuple(x.shape[-2:])} must be multiples of {m}; pad the input first")
        if h is None and not self.graph.get("h_zero_is_no_h", False):
            raise ValueError(f"{self.path}: this network depends on h (a distilled student): pass h")
        batch = x.shape[0]
        feed = {"x": self._image(x), "cond": self._image(cond), "t": _times(t, batch),
                "h": _times(0.0 if h is None else h, batch)}
        try:
            (v,) = self.session.run([OUTPUT], feed)
        except Exception as error:  # onnxruntime's exceptions; the CLI reports RuntimeError per file
            raise RuntimeError(f"onnxruntime: {one_line(error)}") from None
        return torch.from_numpy(v).to(x.device, torch.float32)

    def _image(self, tensor: torch.Tensor) -> np.ndarray:
        return np.ascontiguousarray(tensor.detach().float().cpu().numpy(), dtype=self.image_dtype)


class OnnxSRNet(OnnxNet):
    """A feed-forward SR network (kind sr, e.g. BSRN) exported by ``flowsr export``, called as ``net(lq) -> sr``.

    ``lq``: (B, 3, h, w) torch tensor in [0, 1], any h, w >= 1; returns (B, 3, scale * h, scale * w) float32,
    about [0, 1] (not clipped), on ``lq``'s device.
    """

    inputs, output = SR_INPUTS, SR_OUTPUT

    def __call__(self, lq: torch.Tensor) -> torch.Tensor:
        if lq.ndim != 4 or lq.shape[1] != 3:
            raise ValueError(f"lq must be (B, 3, h, w); got {tuple(lq.shape)}")
        fixed = self.session.get_inputs()[0].shape[0]  # a name, or the graph's fixed batch (window transformers)
        chunks = lq.split(fixed) if isinstance(fixed, int) and fixed > 0 else [lq]
        try:
            sr = np.concatenate([self.session.run([SR_OUTPUT], {SR_INPUTS[0]: self._image(c)})[0] for c in chunks])
        except Exception as error:  # onnxruntime's exceptions; the CLI reports RuntimeError per file
            raise RuntimeError(f"onnxruntime: {one_line(error)}") from None
        return torch.from_numpy(sr).to(lq.device, torch.float32)


def _times(value, batch: int) -> np.ndarray:
    """Scalar or (B,) time -> (B,) float32 array."""
    array = value.detach().float().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value, np.float32)
    array = array.astype(np.float32).reshape(-1)
    if array.size == 1:
        return np.full(batch, array[0], np.float32)
    if array.shape != (batch,):
        raise ValueError(f"time tensor must be a scalar or of shape ({batch},), got {tuple(array.shape)}")
    return array


def one_line(error: Exception) -> str:
    """An error's message on one line, cut to 300 characters."""
    text = " ".join(str(error).split())
    return text[:300] or type(error).__name__


def read_onnx_config(directory: Path) -> tuple[ModelConfig, dict]:
    """``config.json`` of an ONNX model directory -> (ModelConfig, the ``"onnx"`` graph section)."""
    path = Path(directory) / "config.json"
    data = read_config_json(directory)
    graph = data.pop("onnx", None)
    if not isinstance(graph, dict):
        raise ModelLoadError(f"{path}: no \"onnx\" section describing {ONNX_FILE} (write it with flowsr export)")
    try:
        config = ModelConfig.from_dict(data, str(path))
    except (ValueError, TypeError) as error:
        raise ModelLoadError(str(error)) from None
    multiple = graph.get("size_multiple")
    if not isinstance(multiple, int) or multiple < 1 or graph.get("dtype") not in DTYPES:
        raise ModelLoadError(f"{path}: the \"onnx\" section needs size_multiple (a positive integer) and "
                             f"dtype ({' or '.join(DTYPES)})")
    return config, graph


def load_onnx_dir(directory: Path, device: str = "auto", options: OrtOptions | None = None
                  ) -> tuple[OnnxNet, ModelConfig]:
    """Open ``directory/model.onnx`` in an ONNX Runtime session (CUDA provider on ``cuda``): an
    :class:`OnnxSRNet` when the graph section's inputs are the SR network's ``lq``, else an :class:`OnnxNet`."""
    directory = Path(directory)
    require("onnxruntime", f"{directory}: running an ONNX model")
    config, graph = read_onnx_config(directory)
    inputs = graph.get("inputs")
    sr_graph = isinstance(inputs, list) and [i.get("name") for i in inputs if isinstance(i, dict)] == list(SR_INPUTS)
    if sr_graph != (config.kind == "sr"):
        raise ModelLoadError(f"{directory / 'config.json'}: a {config.kind} model, but its \"onnx\" section describes "
                             f"{'an SR network (lq -> sr)' if sr_graph else 'a U-Net (x, t, h, cond -> v)'}")
    try:
        device = resolve_device(device)
    except ModelLoadError as error:
        raise ModelLoadError(f"{directory}: {error}") from None
    network = OnnxSRNet if sr_graph else OnnxNet
    return network(directory / ONNX_FILE, graph, device, options), config
