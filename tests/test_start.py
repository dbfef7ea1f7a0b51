"""Start networks (PMRF's posterior-mean start): a flow whose source and condition are built from
``start(lq)`` instead of ``up(lq)``; loading, checks, inference features and training with a frozen start."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_OVERRIDES, make_image
from PIL import Image

import flowsr
from flowsr.catalog import ModelLoadError, bundled_models, weights_sha256
from flowsr.checkpoint import load_model_dir, save_model_dir
from flowsr.cli import main
from flowsr.config import ModelConfig, apply_overrides, preset
from flowsr.data import crop_batches, make_batch, start_image
from flowsr.evaluate import Reference
from flowsr.nets import NetConfig, UNet
from flowsr.ops import imresize
from flowsr.train import train

TINY = NetConfig(channels=16, channel_mult=(1, 2), num_blocks=1, attention_levels=(), prediction="endpoint",
                 time_scale=1.0)
BSRN_SHA = weights_sha256(bundled_models()["bsrn-x4"])


def make_start_model(directory: Path, kind: str = "flow", start: str = "bsrn-x4", sha: str = BSRN_SHA,
                     noise: float = 0.0, seed: int = 0, sigma_p: float = 0.1) -> Path:
    """A tiny model starting from ``start``; ``noise`` = 0 keeps the zero-initialised output layers zero, so an
    endpoint net predicts x1 = cond exactly and a one-step sample is start(lq) itself."""
    torch.manual_seed(seed)
    net = UNet(TINY)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(noise * torch.randn_like(p))
        if noise == 0:
            net.out_conv.weight.zero_()
            net.out_conv.bias.zero_()
    save_model_dir(directory, net, ModelConfig(kind=kind, scale=4, net=TINY, default_steps=1, sigma_p=sigma_p,
                                               start=start, start_sha256=sha))
    return directory


def lq_image(seed=0, height=24, width=20) -> torch.Tensor:
    gt = make_image(np.random.default_rng(seed), height * 4, width * 4)
    return imresize(torch.from_numpy(gt).permute(2, 0, 1)[None].float() / 255, scale=1 / 4).clamp(0, 1)


def test_a_flow_with_zero_velocity_correction_returns_its_start_network_output(tmp_path):
    lq = lq_image()
    bsrn = flowsr.load("bsrn-x4", device="cpu")
    expected = bsrn.upscale_tensor(lq)
    for kind in ("flow", "regression"):
        model = flowsr.load(make_start_model(tmp_path / kind, kind=kind), device="cpu")
        assert model.start is not None and model.start.name == "bsrn-x4"
        out = model.upscale_tensor(lq, seed=3)
        assert torch.allclose(out, expected, atol=1e-5), (kind, (out - expected).abs().max())
    # the same model from a bicubic start returns the bicubic upsample
    bicubic = flowsr.load(make_start_model(tmp_path / "bicubic", start="bicubic", sha=""), device="cpu")
    assert torch.allclose(bicubic.upscale_tensor(lq), flowsr.load("bicubic").upscale_tensor(lq), atol=1e-5)


def test_start_network_models_keep_seeds_alpha_16_bit_and_tiling(tmp_path):
    model_dir = make_start_model(tmp_path / "m", noise=0.02)
    model = flowsr.load(model_dir, device="cpu")
    lq = lq_image(1, 40, 36)
    a, b = model.upscale_tensor(lq, seed=1), model.upscale_tensor(lq, seed=2)
    assert torch.equal(a, model.upscale_tensor(lq, seed=1)) and not torch.equal(a, b)  # noise from the seed
    # tiled: the start network runs per tile with the same overlap rules; close to the whole-image run
    tiled = model.upscale_tensor(lq, seed=1, tile=20, tile_overlap=8)
    mse = (tiled - a).square().mean().item()
    assert 10 * np.log10(1 / mse) > 35
    # 16-bit RGBA through the CLI: alpha kept, bit depth kept
    rgba = np.dstack([make_image(np.random.default_rng(4), 20, 16), np.full((20, 16), 40000 // 257, np.uint8)])
    Image.fromarray(rgba.astype(np.uint8), "RGBA").save(tmp_path / "in.png")
    grey16 = (make_image(np.random.default_rng(5), 12, 12)[..., 0].astype(np.uint16) * 257)
    Image.fromarray(grey16).save(tmp_path / "grey16.png")
    assert main(["upscale", str(tmp_path / "in.png"), str(tmp_path / "grey16.png"), "-o", str(tmp_path / "out"),
                 "--model", str(model_dir), "--device", "cpu"]) == 0
    out = Image.open(tmp_path / "out" / "in.png")
    assert out.mode == "RGBA" and out.size == (64, 80)
    assert np.all(np.asarray(out)[..., 3] == 40000 // 257)
    grey = Image.open(tmp_path / "out" / "grey16.png")
    assert grey.size == (48, 48) and grey.mode.startswith("I")


def test_missing_mismatched_or_wrong_kind_starts_are_refused_naming_both(tmp_path):
    missing = make_start_model(tmp_path / "missing", start="no-such-start")
    with pytest.raises(ModelLoadError, match="missing.*no-such-start"):
        flowsr.load(missing)
    changed = make_start_model(tmp_path / "changed", sha="0" * 64)
    with pytest.raises(ModelLoadError, match="changed.*bsrn-x4.*does not match"):
        flowsr.load(changed)
    # a start of another scale
    x2 = tmp_path / "x2"
    save_model_dir(x2, UNet(TINY), ModelConfig(kind="regression", scale=2, net=TINY))
    with pytest.raises(ModelLoadError, match="x4 model.*x2"):
        flowsr.load(make_start_model(tmp_path / "scale", start=str(x2), sha=weights_sha256(x2)))
    # a flow model cannot be a start (it is not one deterministic pass)
    flow = make_start_model(tmp_path / "flow", start="bicubic", sha="")
    with pytest.raises(ModelLoadError, match="flow model; a start must be"):
        flowsr.load(make_start_model(tmp_path / "of-flow", start=str(flow), sha=weights_sha256(flow)))
    # a config naming a start without its checksum is not a valid config
    data = json.loads((missing / "config.json").read_text())
    data["start_sha256"] = ""
    (missing / "config.json").write_text(json.dumps(data))
    with pytest.raises(ModelLoadError, match="start_sha256"):
        flowsr.load(missing)


def test_a_relative_start_is_found_beside_the_model_and_travels_with_it(tmp_path):
    model_dir = make_start_model(tmp_path / "m", start="start", sha=BSRN_SHA)
    shutil.copytree(bundled_models()["bsrn-x4"], model_dir / "start")
    moved = tmp_path / "elsewhere" / "m"
    shutil.copytree(model_dir, moved)
    model = flowsr.load(moved, device="cpu")
    assert model.start is not None and model.start.config.kind == "sr"


def test_reference_must_share_the_start(tmp_path):
    teacher = flowsr.load(make_start_model(tmp_path / "t", start="bicubic", sha=""))
    student = flowsr.load(make_start_model(tmp_path / "s", kind="oftsr"))
    with pytest.raises(ValueError, match="starts from bicubic.*bsrn-x4"):
        Reference(teacher).check(student)
    Reference(flowsr.load(make_start_model(tmp_path / "t2"))).check(student)


def test_start_images_are_cached_stacked_under_the_crops(image_folder, tmp_path):
    bsrn = flowsr.load("bsrn-x4", device="cpu")
    batches, line = crop_batches(image_folder, 32, 2, seed=0, mode="memory", start_net=bsrn.predict, scale=4,
                                 start_cache=tmp_path / "cache")
    assert "with their start images" in line
    crops = next(batches)
    assert crops.shape == (2, 6, 32, 32) and crops.dtype == torch.uint8
    batch = make_batch(crops, 4, torch.device("cpu"))
    assert torch.equal(batch["gt"], crops[:, :3].float() / 255 * 2 - 1)
    assert torch.equal(batch["cond"], crops[:, 3:].float() / 255 * 2 - 1)
    # the cache holds one PNG per image, read back identically by a second stream
    assert len(list((tmp_path / "cache").glob("*.png"))) == len(list(image_folder.glob("*.png")))
    again, _ = crop_batches(image_folder, 32, 2, seed=0, mode="memory", start_net=None, scale=4)
    cached, _ = crop_batches(image_folder, 32, 2, seed=0, mode="memory", start_net=bsrn.predict, scale=4,
                             start_cache=tmp_path / "cache")
    assert torch.equal(next(cached), crops) and torch.equal(next(again), crops[:, :3])
    # a start image is the start network's output on the whole image's LR (rounded to 8 bits)
    image = torch.from_numpy(np.array(Image.open(image_folder / "img0.png"))).permute(2, 0, 1)
    base = start_image(image, 4, bsrn.predict)
    assert base.shape == (3, 48, 64)


def test_training_with_a_start_network_and_students_inherit_it(image_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("FLOWSR_CACHE", str(tmp_path / "cache"))
    cfg = apply_overrides(preset("tiny-teacher-pm"), [*TINY_OVERRIDES, f"data={image_folder}", "max_steps=3"])
    teacher = train(cfg, tmp_path / "teacher")
    _, config = load_model_dir(teacher)
    assert config.start == "bsrn-x4" and config.start_sha256 == BSRN_SHA and config.sigma_p == 0.1
    student_cfg = apply_overrides(preset("tiny-oftsr-pm"), [*TINY_OVERRIDES, f"data={image_folder}", "max_steps=2",
                                                            f"teacher={teacher}", "start=bicubic"])
    student = train(student_cfg, tmp_path / "student")
    _, student_config = load_model_dir(student)
    assert student_config.start == "bsrn-x4" and student_config.sigma_p == 0.1  # the teacher's, whatever was asked
    assert flowsr.load(student).upscale(np.zeros((8, 8, 3), np.uint8)).shape == (32, 32, 3)
    # init= from a model with another start is refused, naming both starts
    bicubic = apply_overrides(preset("tiny-teacher"), [*TINY_OVERRIDES, f"data={image_folder}", "max_steps=1",
                                                        f"init={teacher}"])
    with pytest.raises(ModelLoadError, match="starts from bsrn-x4.*bicubic"):
        train(bicubic, tmp_path / "other")
