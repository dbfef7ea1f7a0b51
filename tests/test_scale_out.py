"""Sharded `flowsr upscale` and `flowsr eval` under torchrun (two gloo processes on the CPU) against
one process, byte for byte and metric for metric; eval of LR photographs without ground truth (issue 17)."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_image
from PIL import Image
from test_pipeline import make_model

import flowsr
from flowsr import perceptual
from flowsr.cli import main

TORCHRUN = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")
needs_torchrun = pytest.mark.skipif(not os.path.exists(TORCHRUN), reason="torchrun not installed")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(*args: str) -> subprocess.CompletedProcess:
    command = [TORCHRUN, "--nproc_per_node=2", f"--master_port={_free_port()}", "-m", "flowsr", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)


def one_process(*args: str) -> int:
    """``flowsr ARGS`` in this process (``--threads 1`` as the ranks use), restoring the thread count."""
    threads = torch.get_num_threads()
    try:
        return main(list(args))
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def inputs(tmp_path) -> Path:
    """Five LR images of different sizes and one broken file."""
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(7)
    for index in range(5):
        Image.fromarray(make_image(rng, 14 + 3 * index, 20)).save(folder / f"im{index}.png")
    (folder / "broken.png").write_bytes(b"not an image")
    return folder


@needs_torchrun
def test_sharded_upscale_equals_one_process_and_resumes_with_skip_existing(inputs, tmp_path, capsys):
    model = make_model(tmp_path / "m", steps=2)  # a flow model: the outputs depend on the seeded noise
    common = ["--model", str(model), "--seed", "3", "--threads", "1"]
    assert one_process("upscale", str(inputs), "-o", str(tmp_path / "single"), *common) == 1
    capsys.readouterr()
    result = torchrun("upscale", str(inputs), "-o", str(tmp_path / "sharded"), *common)
    assert result.returncode != 0  # broken.png failed
    summary = [line for line in result.stdout.splitlines() if " written, " in line]
    assert len(summary) == 1 and summary[0].startswith(f"5 written, 0 skipped, 1 failed -> {tmp_path / 'sharded'} "
                                                       "(2 processes, ")
    assert summary[0].endswith(" images/s)")
    assert [line for line in result.stderr.splitlines() if line.startswith("error:")] == [
        f"error: {inputs / 'broken.png'}: not an image file (or not PNG/JPEG/WebP/BMP/TIFF/GIF)"]
    names = sorted(p.name for p in (tmp_path / "single").iterdir())
    assert names == [f"im{i}.png" for i in range(5)] == sorted(p.name for p in (tmp_path / "sharded").iterdir())
    for name in names:  # each file done once, on either rank, byte for byte the one-process output
        assert (tmp_path / "sharded" / name).read_bytes() == (tmp_path / "single" / name).read_bytes(), name
    # a crashed job: two outputs never written; the rerun does only those
    (tmp_path / "sharded" / "im1.png").unlink()
    (tmp_path / "sharded" / "im4.png").unlink()
    result = torchrun("upscale", str(inputs), "-o", str(tmp_path / "sharded"), *common, "--skip-existing")
    assert [line for line in result.stdout.splitlines() if " written, " in line][0].startswith(
        "2 written, 3 skipped, 1 failed")
    for name in names:
        assert (tmp_path / "sharded" / name).read_bytes() == (tmp_path / "single" / name).read_bytes(), name


@needs_torchrun
def test_sharded_eval_equals_one_process(image_folder, tmp_path):
    Image.fromarray(make_image(np.random.default_rng(3), 60, 52)).save(image_folder / "odd.png")  # 7 images
    model = make_model(tmp_path / "m", steps=2)
    available = perceptual.available_metrics()  # the perceptual ones where their weights are installed
    metrics = "psnr,ssim,hf" + (",lpips" if "lpips_alex" in available else "")
    metrics += ",fid,kid" if "fid" in available else ""
    common = ["eval", "--model", str(model), "--steps", "1,2", "--data", str(image_folder),
              "--metrics", metrics, "--fid-patch", "32", "--threads", "1", "--reference", str(model),
              "--reference-steps", "2"]  # ref_psnr_y (+ ref_lpips): gathered like any per-image key
    assert one_process(*common, "--json", str(tmp_path / "single.json")) == 0
    result = torchrun(*common, "--json", str(tmp_path / "sharded.json"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("dataset images: 7 images") == 1  # printed by rank 0 only
    single, sharded = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("single", "sharded"))
    assert len(single["results"]) == 2 and single["results"][0]["n_images"] == 7
    assert "ref_psnr_y" in single["results"][1]["metrics"] and "ref_psnr_y" in single["results"][1]["per_image"][0]
    for one, many in zip(single["results"], sharded["results"], strict=True):
        one.pop("seconds_per_image"), many.pop("seconds_per_image")
        assert many == one  # per-image rows in order, means, FID/KID: identical
    assert [row["name"] for row in single["results"][1]["per_image"]] == sorted(p.name for p in image_folder.iterdir())


def test_eval_of_lr_photographs_without_ground_truth(tmp_path, capsys):
    folder = tmp_path / "RealPhotos" / "LR"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(2)
    lrs = {f"p{index}.png": make_image(rng, 40 + 8 * index, 48) for index in range(3)}
    for name, image in lrs.items():
        Image.fromarray(image).save(folder / name)
    out = tmp_path / "r.json"
    code = main(["eval", "--model", "bicubic", "--data", str(folder.parent), "--metrics", "psnr,ssim,niqe",
                 "--json", str(out), "--save", str(tmp_path / "saved"), "--report", str(tmp_path / "report"),
                 "--grid", "p1.png"])
    captured = capsys.readouterr().out
    assert code == 0 and "RealPhotos has no ground truth: psnr, ssim not computed" in captured
    assert "3 images, no-reference protocol" in captured
    payload = json.loads(out.read_text())
    assert payload["protocol"] == "no-reference" and payload["dataset"] == "RealPhotos"
    row = payload["results"][0]
    assert list(row["metrics"]) == ["niqe"] and row["n_images"] == 3
    bicubic = flowsr.load("bicubic")
    expected = [perceptual.niqe(bicubic.upscale(lrs[name])) for name in sorted(lrs)]
    assert [image["niqe"] for image in row["per_image"]] == pytest.approx(expected, rel=1e-9)
    assert row["metrics"]["niqe"] == pytest.approx(np.mean(expected), rel=1e-12)
    assert Image.open(tmp_path / "saved" / "bicubic_stepsdefault" / "p1.png").size == (4 * 48, 4 * 48)
    assert (tmp_path / "report" / "results.md").exists()
    # the folder of photographs itself: named LR (auto), or any name with --protocol no-reference
    assert main(["eval", "--model", "bicubic", "--data", str(folder), "--json", str(out)]) == 0
    assert json.loads(out.read_text())["results"][0]["metrics"] == row["metrics"]
    plain = tmp_path / "photos"
    shutil.copytree(folder, plain)
    assert main(["eval", "--model", "bicubic", "--data", str(plain), "--json", str(out)]) == 0
    assert json.loads(out.read_text())["protocol"] == "synthetic"  # a plain folder is HR by default ...
    assert main(["eval", "--model", "bicubic", "--data", str(plain), "--protocol", "no-reference",
                 "--json", str(out)]) == 0
    assert json.loads(out.read_text())["results"][0]["metrics"] == row["metrics"]  # ... unless told
