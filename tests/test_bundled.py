"""Bundled models, `flowsr models`, the default model, reports and the speed benchmark."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import flowsr
from flowsr import report
from flowsr.bench import bench_inference, format_rows
from flowsr.cli import main
from flowsr.pipeline import Settings, bundled_models, default_model


def test_bundled_models_load_by_name_and_the_default_is_one_step(capsys):
    names = bundled_models()
    if not names:
        pytest.skip("no bundled weights in this checkout")
    assert default_model() in names
    model = flowsr.load()
    assert model.name == default_model() and model.nfe(Settings()) == 1
    for name in names:
        upscaler = flowsr.load(name)
        trained_here = upscaler.config.kind != "sr"  # sr: published networks, trained by their authors
        assert upscaler.config.scale == 4 and (upscaler.config.training["steps"] > 0 if trained_here
                                               else upscaler.config.attribution and upscaler.config.licence)
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "(default)" in out and all(name in out for name in names)


def test_default_upscale_of_the_bundled_examples(tmp_path):
    code = main(["upscale", "examples/", "-o", str(tmp_path)])
    assert code == 0
    for name in ("cat.png", "coffee.png", "rocket.png"):
        assert Image.open(tmp_path / name).size == (960, 640)


def test_report_table_plot_and_grid(tmp_path, image_folder):
    out = tmp_path / "report"
    assert main(["eval", "--model", "bicubic", "--data", str(image_folder), "--report", str(out),
                 "--grid", "img0.png", "--metrics", "psnr,ssim,hf"]) == 0
    table = (out / "results.md").read_text()
    assert "| bicubic | 0 |" in table and "PSNR-Y" in table
    assert (out / "grid_img0.png").stat().st_size > 0
    row = {"model": "m", "kind": "oftsr", "steps": 1, "t": 0.5, "nfe": 1, "guidance": 1.0,
           "metrics": {"psnr_y": 30.0, "lpips": 0.2}, "seconds_per_image": 0.1}
    assert report.label(row) == "m, t=0.5"
    report.tradeoff_plot([row, {**row, "t": 1.0, "metrics": {"psnr_y": 28.0, "lpips": 0.1}}], out / "p.png")
    assert (out / "p.png").stat().st_size > 0
    teacher = {**row, "kind": "flow", "t": None}  # guided and unguided rows of one model are separate lines
    rows = [{**teacher, "steps": n, "guidance": w} for w in (1.0, 1.5) for n in (1, 4)]
    assert {name: [r["steps"] for r in points] for name, points in report.tradeoff_series(rows).items()} == {
        "m": [1, 4], "m, w=1.5": [1, 4]}
    sweep = [{**row, "t": t, "metrics": {"psnr_y": 30 - t, "hf_ratio": t}} for t in (0.0, 0.5, 1.0)]
    assert list(report.knob_sweeps(sweep + [{**row, "model": "other"}])) == ["m"]  # one t is no sweep
    report.knob_plot(sweep, out / "k.png")
    assert (out / "k.png").stat().st_size > 0
    assert main(["eval", "--model", "bicubic", "--data", str(image_folder), "--grid", "nope.png"]) == 1


def test_bench_inference_reports_latency_and_flops(tmp_path):
    model = flowsr.load("bicubic")
    row = bench_inference(model, Settings(), size=64, repeat=3)
    assert row["latency_ms_median"] > 0 and row["nfe"] == 0 and row["megapixels_per_s"] > 0
    assert "latency_ms_median" in format_rows([row], ["model", "latency_ms_median"])
    out = tmp_path / "bench.json"
    assert main(["bench", "--model", "bicubic", "--size", "32", "--repeat", "2", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["rows"][0]["size"] == 32


def test_compiled_network_gives_the_eager_output_and_bench_labels_rows(tmp_path, monkeypatch):
    import torch

    # dynamo's graph capture for real, code generation skipped (inductor needs minutes on 2 cores;
    # `flowsr bench --compile none,default` measures it)
    real_compile, modes = torch.compile, []

    def capture_only(module, mode=None):
        modes.append(mode)
        return real_compile(module, backend="aot_eager")

    monkeypatch.setattr(torch, "compile", capture_only)

    from flowsr.config import ModelConfig
    from flowsr.nets import NetConfig, UNet
    from flowsr.pipeline import Upscaler

    torch.manual_seed(0)
    cfg = NetConfig(channels=8, channel_mult=(1, 2), num_blocks=1, attention_levels=())
    model = Upscaler(UNet(cfg), ModelConfig(kind="oftsr", scale=2, net=cfg), "tiny", device="cpu", dtype="fp32")
    lq = torch.rand(1, 3, 12, 16)
    eager = model.upscale_tensor(lq, Settings(t=0.5), seed=3)
    compiled = model.compile("default").upscale_tensor(lq, Settings(t=0.5), seed=3)
    assert model.compile_mode == "default" and model.net is not getattr(model.net, "_orig_mod", None) is not None
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)
    row = bench_inference(model, Settings(), size=24, repeat=2)
    assert row["compile"] == "default" and row["gflops_per_image"] > 0
    assert model.compile("none").compile_mode == "none" and not hasattr(model.net, "_orig_mod")
    with pytest.raises(ValueError, match="compile mode"):
        model.compile("fastest")
    # the CLI flag reaches the model: the output equals the eager one
    from PIL import Image

    Image.fromarray((lq[0].permute(1, 2, 0).numpy() * 255).astype("uint8")).save(tmp_path / "a.png")
    net_dir = tmp_path / "m"
    from flowsr.checkpoint import save_model_dir

    save_model_dir(net_dir, model.net, model.config)
    calls = len(modes)
    for mode in ("none", "reduce-overhead"):
        assert main(["upscale", str(tmp_path / "a.png"), "-o", str(tmp_path / mode), "--model", str(net_dir),
                     "--compile", mode]) == 0
    assert modes[calls:] == ["reduce-overhead"]
    assert main(["upscale", str(tmp_path / "a.png"), "-o", str(tmp_path / "bad"), "--model", str(net_dir),
                 "--compile", "fastest"]) == 1 and not (tmp_path / "bad" / "a.png").exists()
    same = [Image.open(tmp_path / mode / "a.png") for mode in ("none", "reduce-overhead")]
    assert abs(torch.tensor(np.array(same[0]), dtype=torch.int16) - torch.tensor(np.array(same[1]))).max() <= 1


def test_machine_label_names_the_cpu_its_cores_and_the_threads():
    import os

    from flowsr.bench import machine

    assert machine("cpu", threads=3).endswith(f", {os.cpu_count()} cores, 3 threads")
    assert machine("cpu").endswith(f", {torch.get_num_threads()} threads")
    assert not machine("cpu").startswith(",")  # a CPU name comes first
