"""Inference API and CLI: input types, tiling, seeds, model loading errors, eval JSON, degrade."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SHARED, make_image
from PIL import Image

import flowsr
import flowsr.ops
from flowsr.checkpoint import ModelLoadError, save_model_dir
from flowsr.cli import main
from flowsr.config import ModelConfig
from flowsr.metrics import psnr
from flowsr.nets import NetConfig, UNet
from flowsr.pipeline import Settings, image_seed

TINY = NetConfig(channels=16, channel_mult=(1, 2), num_blocks=1, attention_levels=())


def make_model(directory: Path, kind: str = "flow", steps: int = 2, seed: int = 0,
               scale_weights: float = 0.02) -> Path:
    torch.manual_seed(seed)
    net = UNet(TINY)
    with torch.no_grad():  # non-trivial weights, including the zero-initialised layers
        for p in net.parameters():
            p.add_(scale_weights * torch.randn_like(p))
    save_model_dir(directory, net, ModelConfig(kind=kind, scale=4, net=TINY, default_steps=steps))
    return directory


def test_api_accepts_pil_numpy_and_tensors(tmp_path):
    model = flowsr.load(make_model(tmp_path / "m"))
    array = make_image(np.random.default_rng(1), 12, 10)
    out = model.upscale(array, seed=3)
    assert out.shape == (48, 40, 3) and out.dtype == np.uint8
    assert isinstance(model.upscale(Image.fromarray(array)), Image.Image)
    assert model.upscale(Image.fromarray(array[..., 0])).mode == "L"
    tensor = torch.from_numpy(array).permute(2, 0, 1).float() / 255
    assert model.upscale(tensor).shape == (3, 48, 40)
    assert model.upscale(tensor[None].repeat(2, 1, 1, 1)).shape == (2, 3, 48, 40)
    # seeded: same seed same output, other seed other output (the source carries noise)
    assert np.array_equal(model.upscale(array, seed=3), out)
    assert not np.array_equal(model.upscale(array, seed=4), out)


def test_rgba_alpha_is_upscaled_and_reattached(tmp_path):
    model = flowsr.load("bicubic")
    rgba = np.dstack([make_image(np.random.default_rng(2), 8, 8), np.full((8, 8), 200, np.uint8)])
    out = model.upscale(Image.fromarray(rgba, "RGBA"))
    assert out.mode == "RGBA" and out.size == (32, 32)
    assert np.all(np.asarray(out)[..., 3] == 200)


def test_tiled_matches_untiled(tmp_path):
    to_u8 = lambda x: (x[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)  # noqa: E731
    gt = make_image(np.random.default_rng(3), 160, 192)
    lq = torch.from_numpy(gt).permute(2, 0, 1)[None].float() / 255
    lq = flowsr.ops.imresize(lq, scale=1 / 4)
    # the blending itself is seamless: bicubic tiles agree with the whole image
    bicubic = flowsr.load("bicubic")
    assert psnr(to_u8(bicubic.upscale_tensor(lq, tile=16, tile_overlap=8)),
                to_u8(bicubic.upscale_tensor(lq))) > 45
    # a network (GroupNorm statistics differ per tile): quality within 0.1 dB of the untiled run
    for kind in ("regression", "flow"):
        model = flowsr.load(make_model(tmp_path / kind, kind=kind, steps=1, scale_weights=0.003))
        whole = psnr(to_u8(model.upscale_tensor(lq, seed=1)), gt, crop_border=4)
        tiled = psnr(to_u8(model.upscale_tensor(lq, seed=1, tile=24, tile_overlap=8)), gt, crop_border=4)
        assert abs(whole - tiled) < 0.1, (kind, whole, tiled)


def test_settings_are_checked_per_kind(tmp_path):
    teacher = flowsr.load(make_model(tmp_path / "teacher"))
    assert teacher.nfe(Settings(steps=4)) == 4
    assert teacher.resolve(teacher.resolve(Settings())) == teacher.resolve(Settings())
    assert teacher.nfe(Settings(steps=4, guidance=2.0)) == 8
    assert teacher.nfe(Settings(steps=4, sampler="heun")) == 8
    with pytest.raises(ValueError, match="students"):
        teacher.resolve(Settings(t=0.5))
    student = flowsr.load(make_model(tmp_path / "oftsr", kind="oftsr", steps=1))
    assert student.nfe(Settings(t=0.3)) == 1
    with pytest.raises(ValueError, match="one-step"):
        student.resolve(Settings(steps=4))
    meanflow = flowsr.load(make_model(tmp_path / "mf", kind="meanflow", steps=1))
    assert meanflow.nfe(Settings(steps=2)) == 2


def test_bad_model_directories_are_refused_clearly(tmp_path):
    with pytest.raises(ModelLoadError, match="no such model"):
        flowsr.load(tmp_path / "missing")
    directory = make_model(tmp_path / "m")
    (directory / "model.safetensors").unlink()
    torch.save({}, directory / "model.pt")
    with pytest.raises(ModelLoadError, match="pickle files are refused"):
        flowsr.load(directory)
    other = make_model(tmp_path / "other")
    config = json.loads((other / "config.json").read_text())
    config["net"]["channels"] = 32
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="shape"):
        flowsr.load(other)
    config["surprise"] = 1
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="unknown key"):
        flowsr.load(other)
    with pytest.raises(ModelLoadError, match="x4, not x2"):
        flowsr.load(make_model(tmp_path / "x4"), scale=2)


def test_image_seed_depends_on_name_not_order():
    assert image_seed(0, "a.png") == image_seed(0, "a.png")
    assert image_seed(0, "a.png") != image_seed(0, "b.png") != image_seed(1, "b.png")


def test_upscale_cli_processes_good_files_and_reports_bad(tmp_path, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    rng = np.random.default_rng(4)
    Image.fromarray(make_image(rng, 10, 12)).save(inputs / "a.png")
    Image.fromarray(make_image(rng, 9, 9)[..., 0]).save(inputs / "grey.png")
    (inputs / "broken.png").write_bytes(b"not an image")
    code = main(["upscale", str(inputs), "-o", str(tmp_path / "out"), "--model",
                 str(make_model(tmp_path / "m")), "--steps", "1"])
    err = capsys.readouterr().err
    assert code == 1 and "broken.png" in err
    assert Image.open(tmp_path / "out" / "a.png").size == (48, 40)
    assert Image.open(tmp_path / "out" / "grey.png").mode == "L"
    # the output folder is the input folder: refused unless a suffix keeps the inputs safe
    before = (inputs / "a.png").read_bytes()
    assert main(["upscale", str(inputs / "a.png"), "-o", str(inputs), "--model", "bicubic"]) == 1
    assert (inputs / "a.png").read_bytes() == before
    assert main(["upscale", str(inputs / "a.png"), "-o", str(inputs), "--model", "bicubic",
                 "--suffix", "_x4"]) == 0
    assert (inputs / "a_x4.png").exists() and (inputs / "a.png").read_bytes() == before


def test_eval_json_schema_and_bad_folders(tmp_path, image_folder, capsys):
    out = tmp_path / "result.json"
    assert main(["eval", "--model", "bicubic", "--data", str(image_folder), "--scale", "4",
                 "--json", str(out), "-v"]) == 0
    payload = json.loads(out.read_text())
    assert set(payload) == {"dataset", "protocol", "results"} and len(payload["results"]) == 1
    result = payload["results"][0]
    for key in ("model", "dataset", "protocol", "scale", "nfe", "n_images", "metrics",
                "seconds_per_image", "device", "per_image"):
        assert key in result
    assert result["protocol"] == "synthetic" and result["n_images"] == 6 and result["nfe"] == 0
    assert {"psnr_y", "ssim_y"} <= set(result["metrics"]) and {"name", "psnr_y"} <= set(result["per_image"][0])
    assert "synthetic protocol" in capsys.readouterr().out

    assert main(["eval", "--model", "bicubic", "--data", str(tmp_path / "nope")]) == 1
    (tmp_path / "empty").mkdir()
    assert main(["eval", "--model", "bicubic", "--data", str(tmp_path / "empty")]) == 1
    assert "no images" in capsys.readouterr().err

    paired = tmp_path / "paired"
    (paired / "HR").mkdir(parents=True)
    (paired / "LR").mkdir()
    rng = np.random.default_rng(5)
    for name, size in (("a.png", 8), ("b.png", 8), ("c.png", 7)):
        Image.fromarray(make_image(rng, 32, 32)).save(paired / "HR" / name)
        Image.fromarray(make_image(rng, size, size)).save(paired / "LR" / name)
    Image.fromarray(make_image(rng, 32, 32)).save(paired / "HR" / "only_hr.png")
    assert main(["eval", "--model", "bicubic", "--data", str(paired), "--json", str(out)]) == 1
    captured = capsys.readouterr()
    assert "paired protocol" in captured.out
    assert "only_hr.png" in captured.err and "c.png" in captured.err
    assert json.loads(out.read_text())["results"][0]["n_images"] == 2


@pytest.mark.skipif(not (SHARED / "test" / "Set5").is_dir(), reason="../shared/data not present")
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_degrade_reproduces_matlab_lr_files(tmp_path, scale):
    hr = SHARED / "test" / "Set5" / "HR"
    assert main(["degrade", "-i", str(hr), "-o", str(tmp_path), "--scale", str(scale)]) == 0
    for reference in sorted((SHARED / "test" / "Set5" / "LR_bicubic" / f"X{scale}").glob("*.png")):
        ours = np.asarray(Image.open(tmp_path / reference.name.replace(f"x{scale}", "")))
        assert np.array_equal(ours, np.asarray(Image.open(reference))), reference.name


@pytest.mark.skipif(not (SHARED / "test" / "Set5").is_dir(), reason="../shared/data not present")
def test_bicubic_baseline_matches_published_set5(tmp_path):
    out = tmp_path / "set5.json"
    assert main(["eval", "--model", "bicubic", "--data", str(SHARED / "test" / "Set5" / "HR"), "--json", str(out)]) == 0
    metrics = json.loads(out.read_text())["results"][0]["metrics"]
    assert abs(metrics["psnr_y"] - 28.42) <= 0.02 and abs(metrics["ssim_y"] - 0.8104) <= 0.002


def test_progress_is_called_from_zero_after_every_tile():
    from flowsr.pipeline import tile_count

    model = flowsr.load("bicubic")
    calls = []
    model.upscale_tensor(torch.rand(1, 3, 40, 50), tile=16, tile_overlap=4, progress=lambda *c: calls.append(c))
    assert tile_count(40, 50, 16, 4) == 3 * 4  # LR starts 0, 12, 24 down and 0, 12, 24, 34 across
    assert calls == [(done, 12) for done in range(13)]
    calls.clear()
    model.upscale_tensor(torch.rand(1, 3, 10, 12), progress=lambda *c: calls.append(c))  # untiled: one pass
    assert calls == [(0, 1), (1, 1)]


def test_progress_may_stop_the_work():
    model = flowsr.load("bicubic")

    def stop(done, total):
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        model.upscale_tensor(torch.rand(1, 3, 40, 40), tile=16, tile_overlap=4, progress=stop)
