"""flowsr import (issue 22): other projects' SR networks, recognised by spandrel, as flowsr model directories.

The networks are built here with spandrel's own architecture classes (tiny widths and depths, random weights),
saved with torch.save (.pth) and safetensors, imported, and compared with spandrel's own call.
"""

import json

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import make_image
from safetensors.torch import save_file

import flowsr
from flowsr.catalog import weights_sha256
from flowsr.checkpoint import ModelLoadError, load_model_dir, save_model_dir
from flowsr.cli import main
from flowsr.config import ModelConfig
from flowsr.nets import NetConfig, UNet

try:
    import spandrel
    from spandrel.architectures.ESRGAN import ESRGAN
    from spandrel.architectures.SwinIR import SwinIR
except Exception as error:  # missing, or a torchvision built for another torch
    pytest.skip(f"needs spandrel (pip install 'flowsr[import]'): {' '.join(str(error).split())[:120]}",
                allow_module_level=True)


def tiny_esrgan(scale=4):
    torch.manual_seed(0)
    return ESRGAN(num_filters=16, num_blocks=2, scale=scale).eval()


def tiny_swinir():
    torch.manual_seed(1)
    return SwinIR(img_size=16, embed_dim=12, depths=[2], num_heads=[2], window_size=4, upscale=2,
                  upsampler="pixelshuffle", mlp_ratio=2.0).eval()


def save(net, path):
    if path.suffix == ".pth":
        torch.save(net.state_dict(), path)
    else:
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return path


NETWORKS = {"esrgan": (tiny_esrgan, ".pth", "ESRGAN", 4), "swinir": (tiny_swinir, ".safetensors", "SwinIR", 2)}


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """name -> (model directory, the network spandrel built from the same file)."""
    root = tmp_path_factory.mktemp("import")
    out = {}
    for name, (build, suffix, _, _) in NETWORKS.items():
        source = save(build(), root / f"{name}{suffix}")
        assert main(["import", str(source), "-o", str(root / name)]) == 0
        out[name] = root / name, spandrel.ModelLoader().load_from_file(source).eval()
    return out


@pytest.mark.parametrize("name", NETWORKS)
def test_import_writes_a_safetensors_model_with_its_architecture_and_scale(imported, name):
    directory, _ = imported[name]
    assert sorted(p.name for p in directory.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((directory / "config.json").read_text())
    _, _, arch, scale = NETWORKS[name]
    assert config["kind"] == "sr" and config["scale"] == scale
    assert config["sr_net"]["arch"] == "spandrel" and config["sr_net"]["spandrel_arch"] == arch


@pytest.mark.parametrize("name", NETWORKS)
@pytest.mark.parametrize("size", [(21, 30), (9, 13)])  # (9, 13): below SwinIR's minimum side, padded
def test_upscale_equals_spandrels_own_call(imported, name, size):
    directory, descriptor = imported[name]
    lq = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = descriptor(lq.clone())
    model = flowsr.load(directory)
    assert model.config.kind == "sr" and model.scale == descriptor.scale
    sr = model.upscale_tensor(lq)
    assert sr.shape == expected.shape and torch.allclose(sr, expected, atol=1e-6, rtol=0)


def test_a_pickle_that_holds_code_is_refused_in_one_line(tmp_path, capsys):
    torch.save(tiny_esrgan(), tmp_path / "whole.pth")  # the module itself: needs its classes, i.e. code
    assert main(["import", str(tmp_path / "whole.pth"), "-o", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {tmp_path / 'whole.pth'}: refused: this pickle needs more")
    assert "weights_only=True" in err and not (tmp_path / "out").exists()


def test_what_is_not_a_single_image_sr_network_is_refused(tmp_path, capsys):
    save_file({"conv.weight": torch.zeros(3, 3, 3, 3)}, str(tmp_path / "odd.safetensors"))
    assert main(["import", str(tmp_path / "odd.safetensors"), "-o", str(tmp_path / "a")]) == 1
    assert "spandrel does not recognise this network" in capsys.readouterr().err
    save(tiny_esrgan(scale=1), tmp_path / "x1.pth")  # a x1 restoration network
    assert main(["import", str(tmp_path / "x1.pth"), "-o", str(tmp_path / "b")]) == 1
    assert "is not a super-resolution network of scale 2..8" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_non_empty_target_needs_force(imported, tmp_path, capsys):
    source = save(tiny_esrgan(), tmp_path / "e.pth")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    assert main(["import", str(source), "-o", str(tmp_path / "busy")]) == 1
    assert "not empty" in capsys.readouterr().err
    assert main(["import", str(source), "-o", str(tmp_path / "busy"), "--force"]) == 0
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"


def test_config_and_weights_must_agree(imported, tmp_path):
    directory, _ = imported["esrgan"]
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "model.safetensors").write_bytes((directory / "model.safetensors").read_bytes())
    config = json.loads((directory / "config.json").read_text())
    config["sr_net"]["spandrel_arch"] = "SwinIR"
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="spandrel finds ESRGAN x4 in these weights, config.json says SwinIR x4"):
        load_model_dir(copy)


def test_loading_without_spandrel_says_what_to_install(imported, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "spandrel", None)  # import spandrel raises ImportError
    with pytest.raises(ModelLoadError, match=r"imported with spandrel; loading it needs spandrel .*flowsr\[import\]"):
        load_model_dir(imported["esrgan"][0])


@pytest.mark.parametrize("name", NETWORKS)
def test_eval_runs_on_an_imported_model(imported, name, tmp_path, capsys):
    directory, _ = imported[name]
    data = tmp_path / "set"
    data.mkdir()
    for index in range(2):
        PIL.Image.fromarray(make_image(np.random.default_rng(index), 48, 40)).save(data / f"{index}.png")
    scale = NETWORKS[name][3]
    assert main(["eval", "--model", str(directory), "--data", str(data), "--scale", str(scale),
                 "--json", str(tmp_path / "r.json")]) == 0
    row = json.loads((tmp_path / "r.json").read_text())["results"][0]
    assert row["kind"] == "sr" and row["n_images"] == 2 and np.isfinite(row["metrics"]["psnr_y"])


def test_esrgan_exports_to_onnx_and_runs_like_torch(imported, tmp_path):
    pytest.importorskip("onnxruntime")
    directory, _ = imported["esrgan"]
    assert main(["export", str(directory), "-o", str(tmp_path / "onnx")]) == 0
    check = json.loads((tmp_path / "onnx" / "config.json").read_text())["onnx"]["check"]
    assert check["max_abs_diff"] < 1e-5
    lq = torch.rand(1, 3, 19, 27, generator=torch.Generator().manual_seed(3))
    torch_out = flowsr.load(directory).upscale_tensor(lq)
    onnx_out = flowsr.load(tmp_path / "onnx").upscale_tensor(lq)
    assert (torch_out - onnx_out).abs().max() < 1e-5


def test_swinir_exports_one_image_a_call_and_runs_like_torch(imported, tmp_path):
    """A window transformer's graph takes one image a call (its window_reverse fixes the batch at the traced one);
    flowsr's ONNX runner feeds a batch image by image, and every size and batch equals torch to rounding."""
    pytest.importorskip("onnxruntime")
    from flowsr.onnx_backend import load_onnx_dir

    directory, _ = imported["swinir"]
    assert main(["export", str(directory), "-o", str(tmp_path / "onnx")]) == 0
    spec = json.loads((tmp_path / "onnx" / "config.json").read_text())["onnx"]
    assert spec["inputs"][0]["shape"] == [1, 3, "height", "width"] and spec["check"]["max_abs_diff"] < 1e-5
    torch_net, onnx_net = flowsr.load(directory), load_onnx_dir(tmp_path / "onnx", device="cpu")[0]
    for size in [(13, 18), (16, 16), (25, 31)]:
        lq = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(4))
        difference = flowsr.load(tmp_path / "onnx").upscale_tensor(lq) - torch_net.upscale_tensor(lq)
        assert difference.abs().max() < 1e-5
    lq = torch.rand(3, 3, 12, 20, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert (onnx_net(lq) - torch_net.net(lq)).abs().max() < 1e-5


def test_a_graph_that_only_runs_right_at_its_traced_batch_is_refused(imported, tmp_path, monkeypatch):
    """Traced with a dynamic batch (at 2), SwinIR's graph scrambles the attention at batch 1 and 3 (2e-4 .. 5e-4
    off with these random weights; garbage with trained ones): the parity check, at batch 1 and 3, refuses it."""
    pytest.importorskip("onnxruntime")
    from flowsr.nets.imported import SpandrelNet

    directory, _ = imported["swinir"]
    original = SpandrelNet.__init__

    def dynamic_batch(self, descriptor):
        original(self, descriptor)
        self.export_batch = None

    monkeypatch.setattr(SpandrelNet, "__init__", dynamic_batch)
    assert main(["export", str(directory), "-o", str(tmp_path / "refused")]) == 1
    assert not (tmp_path / "refused").exists()


def test_an_imported_network_is_a_flow_models_start(imported, tmp_path):
    start, descriptor = imported["esrgan"]
    net = NetConfig(channels=8, channel_mult=(1, 2), num_blocks=1, attention_levels=(), patch=2)
    config = ModelConfig(kind="flow", scale=4, net=net, default_steps=2, start=str(start),
                         start_sha256=weights_sha256(start))
    save_model_dir(tmp_path / "flow", UNet(net), config)
    model = flowsr.load(tmp_path / "flow")
    assert model.start is not None and model.start.config.sr_net.spandrel_arch == "ESRGAN"
    lq = torch.rand(1, 3, 12, 10, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert torch.allclose(model.start.predict(lq), descriptor(lq.clone()), atol=1e-6, rtol=0)
    assert model.upscale_tensor(lq).shape == (1, 3, 48, 40)


def test_serve_runs_an_imported_model_and_reports_its_tiles(imported):
    import io
    import time

    from flowsr.serve import App

    app = App({"swinir": flowsr.load(imported["swinir"][0])}, tile=32, tile_overlap=4, max_memory=8 << 30).start()
    try:
        image = io.BytesIO()
        PIL.Image.fromarray(make_image(np.random.default_rng(6), 70, 90)).save(image, "PNG")
        job = app.submit(image.getvalue(), {"name": "x.png"})
        deadline = time.monotonic() + 120
        while job.state not in ("done", "error", "cancelled") and time.monotonic() < deadline:
            time.sleep(0.02)
        assert job.state == "done", job.error
        assert job.tiles_done == job.tiles_total == 3 * 4 and job.info["output"]["width"] == 180
    finally:
        app.stop()
