"""The published x4 start networks (BSRN, RLFN): strict loading of the authors' weights, a known PSNR on a
Set5 image, the small-input padding path, the config's validation, torch.func and ONNX export."""

import importlib.util
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from flowsr.data import uint8_hwc
from flowsr.io import read_image
from flowsr.metrics import psnr
from flowsr.nets import BSRN_X4, RLFN_X4, SRNetConfig, bsrn, build_sr_net, count_parameters, rlfn
from flowsr.ops import imresize, modcrop

SHARED = Path(__file__).resolve().parents[2] / "shared"
WEIGHTS = SHARED / "weights"
BUTTERFLY = SHARED / "data" / "test" / "Set5" / "HR" / "butterfly.png"

# name -> (preset, weights file, parameters, butterfly.png x4 PSNR-Y measured with benchmarks/start_nets.py)
NETS = {"bsrn": (BSRN_X4, "bsrn_x4.safetensors", 352_400, 29.0129),
        "rlfn": (RLFN_X4, "rlfn_x4.safetensors", 543_740, 28.6919)}
BICUBIC_BUTTERFLY = 22.0995  # the same protocol with flowsr.ops.imresize x4

HAS_ONNX = all(importlib.util.find_spec(m) for m in ("onnx", "onnxruntime", "onnxscript"))

needs_shared = pytest.mark.skipif(not (WEIGHTS / "bsrn_x4.safetensors").is_file() or not BUTTERFLY.is_file(),
                                  reason=f"shared weights/data not found beside the repository ({SHARED})")


def _net(name: str) -> torch.nn.Module:
    from safetensors.torch import load_file

    preset, file, _, _ = NETS[name]
    net = build_sr_net(SRNetConfig(**preset), scale=4).eval()
    net.load_state_dict(load_file(WEIGHTS / file), strict=True)
    return net


@pytest.fixture(scope="module")
def butterfly():
    """Set5 butterfly.png under the x4 protocol: (LR (1,3,64,64) float in [0,1], HR (256,256,3) uint8)."""
    hr = modcrop(uint8_hwc(read_image(BUTTERFLY).rgb), 4)
    lq = imresize(hr, scale=1 / 4)
    return torch.from_numpy(lq).permute(2, 0, 1)[None].float() / 255, hr


@needs_shared
@pytest.mark.parametrize("name", list(NETS))
def test_strict_load_output_range_and_known_psnr(name, butterfly):
    net = _net(name)
    assert count_parameters(net) == NETS[name][2]
    assert net.size_multiple == 1
    lq, hr = butterfly
    with torch.no_grad():
        sr = net(lq)
    assert sr.shape == (1, 3, 256, 256)
    assert -0.1 < sr.min() < 0.05 and 1.0 < sr.max() < 1.1  # near [0, 1], not clamped (overshoots 1 here)
    assert (sr.mean() - lq.mean()).abs() < 0.005
    value = psnr(uint8_hwc(sr[0]), hr, crop_border=4)
    assert value >= BICUBIC_BUTTERFLY + 6.0
    # float32 vs float64 or thread counts move it by < 1e-4 dB; ESA's align_corners=True would by 0.009 / 0.04
    assert value == pytest.approx(NETS[name][3], abs=0.005)


@needs_shared
@pytest.mark.parametrize("name", list(NETS))
def test_small_input_is_padded_to_the_minimum_side(name, butterfly):
    net = _net(name)
    esa, side = (net.B1.esa, bsrn.MIN_SIDE) if name == "bsrn" else (net.block_1.esa, rlfn.MIN_SIDE)
    width = esa.conv1.in_channels
    with torch.no_grad():
        esa(torch.rand(1, width, side, side))  # the smallest side ESA accepts ...
        with pytest.raises(RuntimeError):
            esa(torch.rand(1, width, side - 1, side))  # ... one less fails
        tiny = butterfly[0][..., 20:32, 30:42]
        padded = F.pad(tiny, (0, side - 12, 0, side - 12), mode="replicate")
        out = net(tiny)
        assert out.shape == (1, 3, 48, 48)
        assert torch.equal(out, net(padded)[..., :48, :48])


def test_config_validation():
    assert SRNetConfig(**RLFN_X4).esa_channels == 16
    with pytest.raises(ValueError, match="arch"):
        SRNetConfig(arch="edsr", channels=64, blocks=8)
    with pytest.raises(ValueError, match="blocks"):
        SRNetConfig(arch="rlfn", channels=52, blocks=0)
    with pytest.raises(ValueError, match="channels"):
        SRNetConfig(arch="bsrn", channels=8, blocks=8)
    net = build_sr_net(SRNetConfig(arch="bsrn", channels=16, blocks=2), scale=2)
    with torch.no_grad():
        assert net(torch.rand(1, 3, 20, 17)).shape == (1, 3, 40, 34)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")  # torch's own jvp decompositions
@pytest.mark.parametrize("arch", ["bsrn", "rlfn"])
def test_torch_func_and_onnx_with_dynamic_height_and_width(arch, tmp_path):
    torch.manual_seed(0)
    net = build_sr_net(SRNetConfig(arch=arch, channels=16, blocks=1), scale=4).eval()
    x = torch.rand(2, 3, 12, 17)
    # forward-mode AD and vmap, as the flow objectives use them
    out, tangent = torch.func.jvp(net, (x,), (torch.ones_like(x),))
    assert tangent.shape == out.shape == (2, 3, 48, 68)
    assert torch.allclose(torch.func.vmap(lambda a: net(a[None])[0])(x), out, atol=1e-6)
    if not HAS_ONNX:
        pytest.skip('needs the onnx extra: pip install "flowsr[onnx]"')
    import onnxruntime

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(net, (torch.rand(1, 3, 20, 24),), dynamo=True, input_names=["lq"],
                                    output_names=["sr"], dynamic_shapes={"lq": {0: "batch", 2: "height", 3: "width"}})
    program.save(str(tmp_path / "net.onnx"))
    session = onnxruntime.InferenceSession(str(tmp_path / "net.onnx"), providers=["CPUExecutionProvider"])
    for shape in [(1, 3, 9, 12), (2, 3, 31, 15)]:  # padded below 15 pixels, and not
        lq = torch.rand(shape)
        with torch.no_grad():
            expected = net(lq).numpy()
        got = session.run(None, {"lq": lq.numpy()})[0]
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() < 1e-4
