"""Habits of SR command-line tools (issue 22): --outscale, --ext / --quality, "did you mean" for models and presets."""

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import make_image

import flowsr
from flowsr.cli import main, out_size
from flowsr.io import read_image
from flowsr.ops import lanczos


def photo(path, height=15, width=22, exif=None):
    image = PIL.Image.fromarray(make_image(np.random.default_rng(3), height, width))
    image.save(path, **({"exif": exif} if exif else {}))
    return path


def test_outscale_resamples_the_models_output_with_lanczos_to_the_rounded_size(tmp_path):
    source = photo(tmp_path / "a.png")
    assert main(["upscale", str(source), "-o", str(tmp_path / "out"), "--model", "bicubic", "--outscale", "2.5"]) == 0
    written = read_image(tmp_path / "out" / "a.png").rgb
    assert written.shape == (3, 38, 55)  # 15 x 2.5 = 37.5 -> 38 (half up), 22 x 2.5 = 55
    native = flowsr.load("bicubic").upscale(read_image(source).rgb, seed=0)  # the model's x4 ...
    expected = (lanczos(native, (38, 55)) * 255).round() / 255  # ... then Lanczos, as the help says
    assert torch.equal(written, expected)
    assert out_size(15, 22, 4, None) == (60, 88) and out_size(1, 1, 4, 0.01) == (1, 1)


def test_outscale_below_the_model_scale_shrinks_without_aliasing(tmp_path):
    stripes = np.zeros((32, 32, 3), np.uint8)
    stripes[:, ::2] = 255  # the finest pattern there is: below x1 it cannot be drawn and must become grey
    PIL.Image.fromarray(stripes).save(tmp_path / "s.png")
    assert main(["upscale", str(tmp_path / "s.png"), "-o", str(tmp_path / "out"), "--model", "bicubic",
                 "--outscale", "0.5"]) == 0  # x4 by the model, then shrunk 8 times
    out = np.asarray(PIL.Image.open(tmp_path / "out" / "s.png")).astype(float)
    assert out.shape == (16, 16, 3) and abs(out[4:-4, 4:-4].mean() - 127.5) < 3 and out[4:-4, 4:-4].std() < 3


def test_ext_and_quality_choose_the_format_and_keep_exif(tmp_path):
    exif = PIL.Image.Exif()
    exif[0x010F] = "FlowCam"
    source = photo(tmp_path / "cam.jpg", exif=exif.tobytes())
    for ext, quality in (("webp", 90), ("jpg", 60), ("png", 95)):
        assert main(["upscale", str(source), "-o", str(tmp_path / "out"), "--model", "bicubic", "--ext", ext,
                     "--quality", str(quality)]) == 0
        written = PIL.Image.open(tmp_path / "out" / f"cam.{ext}")
        assert written.format == {"webp": "WEBP", "jpg": "JPEG", "png": "PNG"}[ext]
        assert written.size == (88, 60) and written.getexif().get(0x010F) == "FlowCam"
    assert main(["upscale", str(source), "-o", str(tmp_path / "auto"), "--model", "bicubic", "--ext", "auto"]) == 0
    assert (tmp_path / "auto" / "cam.jpg").is_file()


def test_ext_keeps_the_never_overwrite_rule(tmp_path, capsys):
    source = photo(tmp_path / "cam.jpg")
    assert main(["upscale", str(source), "-o", str(tmp_path), "--model", "bicubic", "--ext", "auto"]) == 1
    assert "would overwrite an input" in capsys.readouterr().err
    assert main(["upscale", str(source), "-o", str(tmp_path), "--model", "bicubic", "--ext", "jpg",
                 "--suffix", "_x4"]) == 0
    assert (tmp_path / "cam_x4.jpg").is_file()


def test_jpeg_output_of_an_image_with_alpha_says_it_drops_alpha(tmp_path, capsys):
    PIL.Image.fromarray(np.full((6, 5, 4), 200, np.uint8), "RGBA").save(tmp_path / "a.png")
    assert main(["upscale", str(tmp_path / "a.png"), "-o", str(tmp_path / "out"), "--model", "bicubic",
                 "--ext", "jpg"]) == 0
    assert f"note: {tmp_path / 'a.png'}: JPEG has no alpha channel; alpha dropped" in capsys.readouterr().out


@pytest.mark.parametrize("option, value", [("--outscale", "0"), ("--outscale", "nan"), ("--quality", "101"),
                                           ("--ext", "gif")])
def test_bad_values_are_refused_by_the_parser(tmp_path, option, value, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["upscale", str(photo(tmp_path / "a.png")), "-o", str(tmp_path / "out"), option, value])
    assert stop.value.code == 2 and option in capsys.readouterr().err


def test_a_misspelled_model_or_preset_gets_a_suggestion(tmp_path, capsys):
    source = photo(tmp_path / "a.png")
    assert main(["upscale", str(source), "-o", str(tmp_path / "out"), "--model", "bicubc"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: bicubc: no such model directory or bundled model; did you mean bicubic? (bundled: ")
    assert err.count("\n") == 1
    assert main(["upscale", str(source), "-o", str(tmp_path / "out"), "--model", "zzzz"]) == 1
    assert "did you mean" not in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"unknown preset 'tiny-techer'; did you mean tiny-teacher\? \(presets: "):
        flowsr.config.preset("tiny-techer")
