"""CLI and library hardening (issue 15): inputs checked before they are read, memory bounded for extreme
shapes, `train --out` that cannot destroy a model, every config.json field checked, file modes, colour
profiles, stale temporaries, one-line errors, argument checks before torch, progress output.
RELIABILITY.md maps each fault to its test here.

Cases that would exhaust memory or hang on a careless implementation run `python -m flowsr` in a
subprocess with an address-space cap and a time limit, so they fail instead of taking the machine down."""

import contextlib
import copy
import fcntl
import importlib.util
import json
import math
import os
import resource
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageCms
import PIL.PngImagePlugin
import pytest
import torch
from conftest import TINY_OVERRIDES, make_image
from safetensors.torch import load_file, save_file

import flowsr
from flowsr.checkpoint import ModelLoadError, save_model_dir, save_training_checkpoint
from flowsr.cli import build_parser, main
from flowsr.config import ModelConfig
from flowsr.nets import NetConfig, UNet
from flowsr.pipeline import Settings

ROOT = Path(__file__).resolve().parents[1]
TINY = NetConfig(channels=16, channel_mult=(1, 2), num_blocks=1, attention_levels=())
RNG = np.random.default_rng(15)
MEMORY_CAP = 4 * 1024**3  # address space of the capped subprocesses (importing torch takes ~0.6 GB)


def tiny_model(directory: Path, kind: str = "flow", **config) -> Path:
    torch.manual_seed(0)
    net = UNet(TINY)
    save_model_dir(directory, net, ModelConfig(kind=kind, scale=4, net=TINY, default_steps=1, **config))
    return directory


def png_file(path: Path, height: int = 12, width: int = 10) -> Path:
    PIL.Image.fromarray(make_image(RNG, height, width)).save(path)
    return path


def flowsr_capped(*args, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -m flowsr ARGS` with MEMORY_CAP of address space; pytest.fail if it runs past ``timeout``."""
    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    try:
        return subprocess.run([sys.executable, "-m", "flowsr", *map(str, args)], env=env, capture_output=True,
                              text=True, timeout=timeout, preexec_fn=cap)
    except subprocess.TimeoutExpired:
        pytest.fail(f"flowsr {' '.join(map(str, args))} still running after {timeout} s")


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# == 7. inputs are checked before they are read ======================================================


def test_fifo_and_device_inputs_are_refused_without_reading(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)  # nobody writes: reading it would wait forever
    good = png_file(tmp_path / "good.png")
    result = flowsr_capped("upscale", fifo, "/dev/zero", good, "-o", tmp_path / "out", "--model", "bicubic",
                           timeout=60)
    errors = error_lines(result.stderr)
    assert result.returncode == 1 and len(errors) == 2, result.stderr
    assert f"error: {fifo}: cannot read file (a FIFO, not a regular file)" in errors
    assert "error: /dev/zero: cannot read file (a character device, not a regular file)" in errors
    assert (tmp_path / "out" / "good.png").is_file()


def test_huge_file_that_starts_with_a_small_png_is_refused_by_size_then_read_only_as_far_as_needed(tmp_path):
    big = png_file(tmp_path / "big.png")
    with open(big, "r+b") as handle:
        handle.truncate(6 * 1024**3)  # 6 GB, sparse: a valid 12x10 PNG, then zeros
    result = flowsr_capped("upscale", big, "-o", tmp_path / "out", "--model", "bicubic")
    assert result.returncode == 1, result.stderr
    assert error_lines(result.stderr) == [f"error: {big}: file too large: {6 * 1024**3} bytes > limit 603979776 "
                                          "for an image of at most 67108864 pixels (pass --allow-large to override)"]
    # past the size limit, the decoder still reads only the image, never the whole file
    result = flowsr_capped("upscale", big, "-o", tmp_path / "out", "--model", "bicubic", "--allow-large")
    assert result.returncode == 0, result.stderr
    assert PIL.Image.open(tmp_path / "out" / "big.png").size == (40, 48)


# == 8. memory bounded whatever the aspect ratio ======================================================


def test_an_image_too_wide_to_stream_is_refused_up_front(tmp_path):
    ramp = np.linspace(0, 255, 8_000_000).astype(np.uint8)
    wide = tmp_path / "wide.png"
    PIL.Image.fromarray(np.stack([ramp] * 3, -1)[None]).save(wide)  # 1 x 8,000,000: a 24 KB file
    assert wide.stat().st_size < 100_000
    good = png_file(tmp_path / "good.png")
    result = flowsr_capped("upscale", wide, good, "-o", tmp_path / "out", "--model", "bicubic")
    errors = error_lines(result.stderr)
    assert result.returncode == 1 and len(errors) == 1, result.stderr
    assert errors[0].startswith(f"error: {wide}: 8000000x1 is too wide to stream: its output rows would need about ")
    assert "GiB (limit 2 GiB)" in errors[0]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good.png"]


def test_row_buffer_limit_is_checked_by_the_library(tmp_path):
    model = flowsr.load(tiny_model(tmp_path / "m"))
    image = torch.rand(1, 3, 8, 40)
    model.max_row_buffers = 10_000
    with pytest.raises(ValueError, match="40x8 is too wide to stream"):
        model.upscale_tensor(image, tile=4)
    model.max_row_buffers = None  # no limit
    assert model.upscale_tensor(image, tile=4).shape == (1, 3, 32, 160)


# == 9. train --out ==================================================================================


def _train(out: Path, data: Path, *extra: str, resume: bool = False) -> int:
    return main(["train", "--preset", "tiny-teacher", "--out", str(out), *(["--resume"] if resume else []),
                 *TINY_OVERRIDES[:-1], "ckpt_every=2", f"data={data}", "max_steps=2", *extra])


def test_train_refuses_to_write_into_a_model_directory(tmp_path, image_folder, capsys):
    model = tiny_model(tmp_path / "model")
    before = {p.name: p.read_bytes() for p in model.iterdir()}
    assert _train(model, image_folder) == 1
    err = error_lines(capsys.readouterr().err)
    assert err == [f"error: {model}: not empty and not a training run (it holds config.json, model.safetensors); "
                   "choose a new or empty --out"]
    assert {p.name: p.read_bytes() for p in model.iterdir()} == before


def test_train_holds_a_lock_for_the_runs_lifetime(tmp_path, image_folder, capsys):
    out = tmp_path / "run"
    out.mkdir()
    with open(out / ".train.lock", "w") as held:  # what a live run holds
        held.write("4242\n")
        held.flush()
        fcntl.flock(held, fcntl.LOCK_EX)
        assert _train(out, image_folder) == 1
        assert _train(out, image_folder, resume=True) == 1
    err = error_lines(capsys.readouterr().err)
    assert err == [f"error: {out}: another flowsr train (pid 4242) is using this directory; wait for it or "
                   "choose another --out"] * 2
    assert sorted(p.name for p in out.iterdir()) == [".train.lock"]  # nothing written
    # once free (a stale lock file of a killed run is fine), the run starts, and removes the lock at the end
    assert _train(out, image_folder) == 0
    assert (out / "checkpoint.safetensors").is_file() and not (out / ".train.lock").exists()


def test_a_run_killed_before_its_first_checkpoint_can_be_started_again(tmp_path, image_folder):
    out = tmp_path / "run"
    out.mkdir()
    (out / "train_config.json").write_text("{}\n")
    (out / "log.jsonl").write_text('{"step": 1, "loss": 0.5}\n')
    assert _train(out, image_folder) == 0
    assert [row["step"] for row in flowsr.train.read_log(out) if "loss" in row] == [1, 2]


def test_another_run_in_the_same_directory_is_refused_while_one_trains(tmp_path, image_folder):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "flowsr", "train", "--preset", "tiny-teacher", "--out", str(out),
               *TINY_OVERRIDES[:-1], f"data={image_folder}", "max_steps=100000", "ckpt_every=100000"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    first = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (out / "log.jsonl").exists() and time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.05)
        assert (out / "log.jsonl").exists(), "the first run did not start"
        second = subprocess.run([*command[:-2], "max_steps=2"], env=env, capture_output=True, text=True, timeout=120)
        assert second.returncode == 1
        assert f"another flowsr train (pid {first.pid}) is using this directory" in second.stderr
    finally:
        first.kill()
        first.wait()


# == 10. every config.json field and the weights are checked =========================================


def _edit_config(directory: Path, **changes) -> None:
    path = directory / "config.json"
    data = json.loads(path.read_text())
    for key, value in changes.items():
        target = data
        *parents, leaf = key.split("__")
        for part in parents:
            target = target[part]
        target[leaf] = value
    path.write_text(json.dumps(data))  # NaN and Infinity are written as such, as a hand-edit would


@pytest.mark.parametrize("change, message", [
    ({"sigma_p": math.nan}, "ModelConfig.sigma_p: expected a finite number, got nan"),
    ({"default_guidance": math.nan}, "ModelConfig.default_guidance: expected a finite number, got nan"),
    ({"default_guidance": 1e9}, "default_guidance must be in [0, 20] (1 = off), got 1000000000.0"),
    ({"default_t": math.inf}, "ModelConfig.default_t: expected a finite number, got inf"),
    ({"scale": 0}, "scale must be in [1, 8], got 0"),
    ({"scale": 1000}, "scale must be in [1, 8], got 1000"),
    ({"scale": True}, "ModelConfig.scale: expected int, got True"),
    ({"scale": "4"}, "ModelConfig.scale: expected int, got '4'"),
    ({"default_steps": 10**9}, "default_steps must be an integer in [1, 1000], got 1000000000"),
    ({"default_steps": 1.5}, "ModelConfig.default_steps: expected int, got 1.5"),
    ({"sigma_p": 1.5}, "sigma_p must be in [0, 1), got 1.5"),
    ({"kind": 3}, "ModelConfig.kind: expected str, got 3"),
    ({"net__channels": True}, "NetConfig.channels: expected int, got True"),
    ({"net__channel_mult": [1, 2.5]}, "NetConfig.channel_mult: expected int, got 2.5"),
    ({"net__num_blocks": 0}, "net.num_blocks must be >= 1"),
    ({"net__dropout": math.nan}, "NetConfig.dropout: expected a finite number, got nan"),
    ({"net__linear_skip": 1}, "NetConfig.linear_skip: expected bool, got 1"),
])
def test_every_config_field_is_checked_for_type_and_range(tmp_path, change, message):
    model = tiny_model(tmp_path / "m")
    _edit_config(model, **change)
    with pytest.raises(ModelLoadError) as info:
        flowsr.load(model)
    assert str(info.value).startswith(str(model / "config.json") + ": ") and message in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("dtype", [torch.bool, torch.int64, torch.uint8])
def test_weights_that_are_not_floating_point_are_refused(tmp_path, dtype):
    model = tiny_model(tmp_path / "m")
    state = load_file(model / "model.safetensors")
    first = sorted(state)[0]
    state[first] = state[first].to(dtype)
    save_file(state, model / "model.safetensors")
    with pytest.raises(ModelLoadError, match=f"{first} holds {str(dtype)[6:]} values; weights must be floating"):
        flowsr.load(model)


def test_a_nan_config_is_one_line_through_the_cli_and_writes_nothing(tmp_path, capsys):
    model = tiny_model(tmp_path / "m")
    _edit_config(model, sigma_p=math.nan)  # was: all-black outputs, exit code 0
    code = main(["upscale", str(png_file(tmp_path / "a.png")), "-o", str(tmp_path / "out"), "--model", str(model)])
    err = error_lines(capsys.readouterr().err)
    assert code == 1 and err == [f"error: {model / 'config.json'}: ModelConfig.sigma_p: expected a finite number, "
                                 "got nan"]
    assert not (tmp_path / "out" / "a.png").exists()


@pytest.mark.parametrize("args, message", [
    (["--steps", "1001"], "steps must be an integer in [1, 1000], got 1001"),
    (["--guidance", "nan"], "guidance must be in [0, 20] (1 = off), got nan"),
    (["--t", "nan"], "t must be in [0, 1], got nan"),
])
def test_sampling_arguments_are_bounded(tmp_path, capsys, args, message):
    model = tiny_model(tmp_path / "m")
    code = main(["upscale", str(png_file(tmp_path / "a.png")), "-o", str(tmp_path / "out"), "--model", str(model),
                 *args])
    assert code == 1 and error_lines(capsys.readouterr().err) == [f"error: {message}"]


# == 11. file modes, colour, stale temporaries ========================================================


def test_model_and_checkpoint_files_get_0666_less_the_umask(tmp_path):
    mask = os.umask(0)
    os.umask(mask)
    net = UNet(TINY)
    save_model_dir(tmp_path / "m", net, ModelConfig(kind="flow", scale=4, net=TINY))
    optimizer = torch.optim.AdamW(net.parameters())
    save_training_checkpoint(tmp_path / "m" / "checkpoint.safetensors", net=net, ema=copy.deepcopy(net),
                             optimizer=optimizer, step=1, meta={}, rng={})
    for name in ("model.safetensors", "config.json", "checkpoint.safetensors"):
        assert (tmp_path / "m" / name).stat().st_mode & 0o777 == 0o666 & ~mask, name


def _srgb_profile() -> bytes:
    return PIL.ImageCms.ImageCmsProfile(PIL.ImageCms.createProfile("sRGB")).tobytes()


def test_icc_profile_gamma_and_chromaticities_are_kept(tmp_path, capsys):
    profile = _srgb_profile()
    chunks = PIL.PngImagePlugin.PngInfo()
    chunks.add(b"gAMA", struct.pack(">I", 55555))
    chunks.add(b"cHRM", struct.pack(">8I", 31270, 32900, 64000, 33000, 30000, 60000, 15000, 6000))
    source = tmp_path / "in"
    source.mkdir()
    PIL.Image.fromarray(make_image(RNG, 8, 6)).save(source / "tagged.png", icc_profile=profile, pnginfo=chunks)
    PIL.Image.fromarray(make_image(RNG, 8, 6)).save(source / "photo.jpg", icc_profile=profile, quality=95)
    grey = PIL.Image.fromarray(make_image(RNG, 8, 6)[..., 0], "L")
    grey.save(source / "grey.png", icc_profile=profile)  # an RGB profile on grey pixels: dropped, with a note
    code = main(["upscale", str(source), "-o", str(tmp_path / "out"), "--model", "bicubic"])
    out = capsys.readouterr().out
    assert code == 0
    tagged = PIL.Image.open(tmp_path / "out" / "tagged.png")
    assert tagged.info["icc_profile"] == profile and tagged.info["gamma"] == 0.55555
    assert tagged.info["chromaticity"] == (0.3127, 0.329, 0.64, 0.33, 0.3, 0.6, 0.15, 0.06)
    assert PIL.Image.open(tmp_path / "out" / "photo.png").info["icc_profile"] == profile
    assert "icc_profile" not in PIL.Image.open(tmp_path / "out" / "grey.png").info
    assert "ICC profile for RGB pixels dropped (the pixels are read as grey)" in out
    # the library keeps them too: PIL in, PIL out; Image in, save_image out
    image = flowsr.io.read_image(source / "tagged.png")
    assert image.color.icc_profile == profile and image.color.gamma == 0.55555
    assert flowsr.load("bicubic").upscale(PIL.Image.open(source / "photo.jpg")).info["icc_profile"] == profile
    flowsr.io.save_image(tmp_path / "copy.png", image)
    assert PIL.Image.open(tmp_path / "copy.png").info["gamma"] == 0.55555


def test_a_killed_upscale_leaves_a_temporary_that_the_next_run_removes(tmp_path, capsys):
    source = tmp_path / "in"
    source.mkdir()
    PIL.Image.fromarray(RNG.integers(0, 256, (1200, 1200, 3), dtype=np.uint8)).save(source / "big.png")
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-m", "flowsr", "upscale", str(source), "-o", str(out),
                                "--model", "bicubic"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline and not (out.is_dir() and leftovers(out)):
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert out.is_dir() and leftovers(out), "the upscale ended before it could be killed mid-write"
    stale = leftovers(out)
    # a write in progress (its temporary is locked) is left alone
    live = out / ".other.png.abcd1234.flowsr.tmp"
    with open(live, "wb") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        (source / "big.png").unlink()
        png_file(source / "small.png")
        assert main(["upscale", str(source), "-o", str(out), "--model", "bicubic"]) == 0
        assert leftovers(out) == [live.name]
    assert f"note: removed {out / stale[0]}, the temporary file of a write that was interrupted" in \
        capsys.readouterr().out


def sighup_as_a_terminal_does():
    """In the child: SIGHUP at its default, also when the tests run under nohup (which ignores it, and flowsr
    then keeps ignoring it on purpose)."""
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_or_sighup_during_an_upscale_removes_its_temporary(tmp_path, sig):
    """issue 23.5: as Ctrl-C (was: SIGTERM killed it, rc -15, leaving a 111 MB temporary)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for attempt, side in enumerate((1200, 1800, 2400)):  # a busy machine may miss the write: a larger image
        source, out = tmp_path / f"in{attempt}", tmp_path / f"out{attempt}"
        source.mkdir()
        PIL.Image.fromarray(RNG.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(source / "big.png")
        process = subprocess.Popen([sys.executable, "-m", "flowsr", "upscale", str(source), "-o", str(out),
                                    "--model", "bicubic"], env=env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True, preexec_fn=sighup_as_a_terminal_does)
        deadline = time.monotonic() + 120
        while process.poll() is None and time.monotonic() < deadline and not (out.is_dir() and leftovers(out)):
            time.sleep(0.01)
        if process.poll() is None:
            break
        process.communicate()  # it finished before the signal could be sent: again, larger
    process.send_signal(sig)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 128 + sig, err
    assert err.strip().splitlines()[-1] == f"interrupted ({signal.Signals(sig).name})"
    assert "Traceback" not in err
    assert out.is_dir() and leftovers(out) == [] and list(out.iterdir()) == []


# == 12. one-line errors ==============================================================================


def test_resume_with_a_changed_network_is_one_line(tmp_path, image_folder, capsys):
    out = tmp_path / "run"
    assert _train(out, image_folder) == 0
    capsys.readouterr()
    assert _train(out, image_folder, "net.channels=32", "max_steps=4", resume=True) == 1
    err = capsys.readouterr().err
    message = error_lines(err[err.index("error: "):])
    assert len(message) == 1 and "Traceback" not in err
    assert message[0] == (f"error: {out / 'checkpoint.safetensors'}: --resume cannot change net.channels: the run "
                          f"has 16, this run asks 32; resume with the settings of {out / 'train_config.json'} (only "
                          "limits, logging and the LR schedule's end may change), or start a new --out")


@pytest.mark.parametrize("change, key", [("objective=regression", "objective"), ("scale=2", "scale"),
                                         ("seed=7", "seed"), ("lr=0.01", "lr"), ("net.num_blocks=2", "net.num_blocks")])
def test_resume_refuses_a_changed_task_and_writes_nothing(tmp_path, image_folder, capsys, change, key):
    """issue 23.4: objective=regression on a flow-matching run trained on and wrote a config no command could
    load; scale=2 left config.json and train_config.json disagreeing."""
    out = tmp_path / "run"
    assert _train(out, image_folder) == 0
    before = {name: (out / name).read_bytes() for name in ("checkpoint.safetensors", "config.json",
                                                            "train_config.json", "log.jsonl")}
    capsys.readouterr()
    assert _train(out, image_folder, change, "max_steps=4", resume=True) == 1
    err = capsys.readouterr().err
    assert error_lines(err) == [error_lines(err)[0]] and f"--resume cannot change {key}: the run has " in err
    assert {name: (out / name).read_bytes() for name in before} == before


def test_resume_may_change_limits_and_logging(tmp_path, image_folder):
    out = tmp_path / "run"
    assert _train(out, image_folder) == 0
    assert _train(out, image_folder, "max_steps=4", "log_every=2", "ckpt_every=4", "lr_min_ratio=0.5",
                  "time_limit=600", "num_workers=0", resume=True) == 0
    assert json.loads((out / "config.json").read_text())["training"]["steps"] == 4


def test_serve_port_out_of_range_is_one_line_before_loading(capsys):
    assert main(["serve", "--port", "99999", "--model", "bicubic"]) == 2
    assert error_lines(capsys.readouterr().err) == ["error: --port must be in 0..65535 (0: any free port), got 99999"]


@pytest.mark.parametrize("option, value", [("--max-megapixels", "inf"), ("--max-upload-mb", "nan"),
                                           ("--max-megapixels", "-1"), ("--max-memory-gb", "inf")])
def test_serve_limits_must_be_finite_and_positive(option, value):
    result = flowsr_capped("serve", "--port", "0", "--model", "bicubic", option, value, timeout=60)
    assert result.returncode == 2
    assert error_lines(result.stderr) == [f"error: {option} must be a positive number, got {float(value):g}"]


def test_eval_json_refuses_to_overwrite_an_input_image(tmp_path, image_folder, capsys):
    target = image_folder / "img0.png"
    before = target.read_bytes()
    assert main(["eval", "--model", "bicubic", "--data", str(image_folder), "--json", str(target)]) == 1
    assert error_lines(capsys.readouterr().err) == [f"error: --json {target}: is an input image of {image_folder}; "
                                                    "refusing to overwrite it"]
    assert target.read_bytes() == before


# == what a new user ran into ==========================================================================


def _torch_imported_after(args: list[str]) -> tuple[int, bool, str]:
    code = ("import sys; from flowsr.cli import main; code = main(sys.argv[1:]); "
            "print('torch' in sys.modules); sys.exit(code)")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=60)
    return result.returncode, result.stdout.splitlines()[-1] == "True", result.stderr


def test_argument_errors_arrive_before_torch_is_imported(tmp_path):
    student = tmp_path / "student"  # a config.json is enough: the weights are never reached
    student.mkdir()
    (student / "config.json").write_text(json.dumps({"kind": "oftsr", "scale": 4, "net": {}, "default_t": 0.5}))
    image = png_file(tmp_path / "a.png")
    for args, message in [
        (["--model", "nope"], "error: nope: no such model directory or bundled model (bundled: bicubic"),
        (["--model", str(student), "--steps", "4"], f"error: {student.name} (oftsr) is a one-step model: steps must "
                                                    "be 1, got 4"),
        (["--model", "bicubic", "--t", "0.5"], "error: --t (the fidelity-realism knob) applies to distilled students"),
    ]:
        code, torch_imported, err = _torch_imported_after(["upscale", str(image), "-o", str(tmp_path / "o"), *args])
        assert code == 1 and not torch_imported and err.startswith(message), (args, err)
    code, torch_imported, err = _torch_imported_after(["models"])
    assert code == 0 and not torch_imported, err


def test_t_is_refused_alike_for_every_model_without_the_knob(tmp_path):
    bicubic, teacher = flowsr.load("bicubic"), flowsr.load(tiny_model(tmp_path / "teacher"))
    regression = flowsr.load(tiny_model(tmp_path / "regression", kind="regression"))
    for model in (bicubic, teacher, regression):
        with pytest.raises(ValueError, match=r"--t \(the fidelity-realism knob\) applies to distilled students"):
            model.resolve(Settings(t=0.5))
    student = flowsr.load(tiny_model(tmp_path / "student", kind="oftsr"))
    assert student.resolve(Settings(t=0.5)).t == 0.5


def test_upscale_help_explains_every_option():
    parser = build_parser()
    upscale = next(a for a in parser._subparsers._group_actions[0].choices.values() if a.prog.endswith("upscale"))
    undocumented = [a.option_strings[0] for a in upscale._actions if a.option_strings and not a.help]
    assert undocumented == []


def test_progress_one_line_per_image_without_a_terminal(tmp_path, capsys):
    source = tmp_path / "in"
    source.mkdir()
    png_file(source / "a.png")
    png_file(source / "b.png", 6, 4)
    assert main(["upscale", str(source), "-o", str(tmp_path / "out"), "--model", "bicubic"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith(f"[1/2] {source / 'a.png'} -> {tmp_path / 'out' / 'a.png'} (10x12 -> 40x48, ")
    assert lines[2].startswith(f"[2/2] {source / 'b.png'} -> {tmp_path / 'out' / 'b.png'} (4x6 -> 16x24, ")


def upscale_two_images_on_a_terminal(tmp_path, monkeypatch, *flags) -> None:
    """`flowsr upscale` of a folder of two PNGs with bicubic, stderr seen as a terminal."""
    source = tmp_path / "in"
    source.mkdir()
    png_file(source / "a.png")
    png_file(source / "b.png")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert main(["upscale", str(source), "-o", str(tmp_path / "out"), "--model", "bicubic", *flags]) == 0


def test_progress_bars_per_image_and_overall_on_a_terminal(tmp_path, capsys, monkeypatch):
    upscale_two_images_on_a_terminal(tmp_path, monkeypatch)
    captured = capsys.readouterr()
    assert "upscale: 100%" in captured.err and "2/2" in captured.err  # overall
    assert "a.png:" in captured.err and "0/1 [" in captured.err and "tile/s" in captured.err  # per image, in tiles
    assert "[1/2]" not in captured.out


def test_quiet_shows_no_bars_and_no_line_per_image(tmp_path, capsys, monkeypatch):
    upscale_two_images_on_a_terminal(tmp_path, monkeypatch, "--quiet")
    captured = capsys.readouterr()
    assert captured.err == "" and "[1/2]" not in captured.out and "2 written" in captured.out


def test_eval_shows_image_progress_on_a_terminal(tmp_path, capsys, monkeypatch):
    data = tmp_path / "set"
    data.mkdir()
    png_file(data / "a.png", 48, 48)
    png_file(data / "b.png", 48, 48)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert main(["eval", "--model", "bicubic", "--data", str(data)]) == 0
    err = capsys.readouterr().err
    assert "bicubic:" in err and "/2 [" in err and "img/s" in err
    assert main(["eval", "--model", "bicubic", "--data", str(data), "--quiet"]) == 0
    assert "img/s" not in capsys.readouterr().err


def test_tests_that_need_shared_data_skip_with_their_reason(tmp_path):
    """The perceptual tests copied where no ../shared exists: skips with reasons (-rs), no errors."""
    repo = tmp_path / "clone"
    (repo / "tests").mkdir(parents=True)
    shutil.copy(ROOT / "pyproject.toml", repo)
    shutil.copy(ROOT / "tests" / "test_perceptual.py", repo / "tests")
    shutil.copy(ROOT / "tests" / "conftest.py", repo / "tests")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-k", "lpips or niqe_inputs"],
                            cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and " error" not in result.stdout, result.stdout[-3000:]
    assert "SKIPPED [" in result.stdout and "shared data not found" in result.stdout, result.stdout[-3000:]


def test_the_examples_are_small_natural_images_with_their_licence():
    images = sorted(p for p in (ROOT / "examples").iterdir() if p.suffix == ".png")
    assert 2 <= len(images) <= 3
    licence = (ROOT / "examples" / "README.md").read_text()
    for image in images:
        assert image.stat().st_size < 100_000 and image.name in licence
        with contextlib.closing(PIL.Image.open(image)) as im:
            assert im.mode == "RGB" and min(im.size) >= 96
        pixels = np.asarray(PIL.Image.open(image), dtype=np.float64)
        assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 5000  # a photograph, not a pattern


# == issue 23, 1. a compressed image cannot decode larger than its declared size =====================

def _grey_tile_ifd(width: int, height: int, tile: int, payload_bytes: int) -> bytes:
    """A second TIFF directory, all values inline: grey, deflate, one tile at offset 8 (the first's data)."""
    entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8), (259, 3, 1, 8), (262, 3, 1, 1),
               (277, 3, 1, 1), (322, 4, 1, tile), (323, 4, 1, tile), (324, 4, 1, 8), (325, 4, 1, payload_bytes)]
    out = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        out += struct.pack("<HHIHH" if kind == 3 else "<HHII", tag, kind, count, value, *((0,) if kind == 3 else ()))
    return out + struct.pack("<I", 0)


def decoder_bombs(folder: Path) -> dict[str, Path]:
    """TIFF files whose tags ask the decoder for far more memory than their declared image (each would
    take 190-330 MB to read before the check), and the one-line refusal each gets."""
    from conftest import deflate_zeros, tiff_bytes

    tile = deflate_zeros(8192 * 8192 * 3)  # 190 KB -> 192 MiB
    cases = {
        "tile.tif": (tiff_bytes(1000, 1000, tile, tile=(8192, 8192)), "TIFF tile of 8192x8192 pixels would take"),
        "lzw_tile.tif": (tiff_bytes(64, 64, tile, tile=(8192, 8192), compression=5), "TIFF tile of 8192x8192"),
        "strips.tif": (tiff_bytes(1000, 1000, bytes(3000), rows_per_strip=1, compression=1, chunks=1_000_000),
                       "TIFF lists 1000000 strips for an image of 1000"),
        "tag.tif": (tiff_bytes(100, 100, deflate_zeros(30000), extra=[(320, 3, 4_000_000, 8)]),
                    "TIFF tag 320 holds 4000000 numbers"),
    }
    paths = {}
    for name, (data, _) in cases.items():
        paths[name] = folder / name
        paths[name].write_bytes(data)
    return {name: (paths[name], message) for name, (_, message) in cases.items()}


PEAK_CODE = """
import json, sys
from flowsr.io import ImageReadError, read_image
def hwm():
    return int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1]) // 1024
rows = []
for path in sys.argv[1:]:
    before = hwm()
    try:
        image = read_image(path)
        outcome = 'read %dx%d%s' % (image.rgb.shape[-1], image.rgb.shape[-2], ' ' + '; '.join(image.notes))
    except ImageReadError as error:
        outcome = 'error: %s' % error
    rows.append((path, outcome, hwm() - before))
print(json.dumps(rows))
"""


def test_decoder_bombs_are_refused_before_decoding_with_flat_memory(tmp_path):
    bombs = decoder_bombs(tmp_path)
    from conftest import deflate_zeros, tiff_bytes

    # a real small tiled image with a tile larger than the image (as writers make them), and a multi-page
    # TIFF whose second page is a bomb: both read, in their declared size
    small = np.zeros((256, 256, 3), np.uint8)
    small[:10, :10] = 200
    (tmp_path / "small_tiled.tif").write_bytes(tiff_bytes(10, 10, zlib.compress(small.tobytes()), tile=(256, 256)))
    bomb = deflate_zeros(8192 * 8192)
    (tmp_path / "pages.tif").write_bytes(tiff_bytes(8, 8, bomb, tile=(16, 16), next_ifd=_grey_tile_ifd(
        8, 8, 8192, len(bomb))))
    # a tile in its bounds whose LZW data is garbage: libtiff's own stderr line is silenced, the error is ours
    (tmp_path / "garbage.tif").write_bytes(tiff_bytes(64, 64, deflate_zeros(64 * 64 * 3), tile=(64, 64),
                                                      compression=5))
    paths = [str(path) for path, _ in bombs.values()] + [str(tmp_path / name) for name in
                                                          ("small_tiled.tif", "pages.tif", "garbage.tif")]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", PEAK_CODE, *paths], capture_output=True, text=True, env=env,
                            timeout=120)
    assert result.returncode == 0 and result.stderr == "", result.stderr  # no libtiff line either
    rows = {Path(path).name: (outcome, grown) for path, outcome, grown in json.loads(result.stdout)}
    for name, (_, message) in bombs.items():
        outcome, grown = rows[name]
        assert outcome.startswith(f"error: {tmp_path / name}: {message}"), outcome
        assert grown < 40, (name, grown)  # MB: refused from the tags, before Pillow builds or decodes anything
    assert rows["small_tiled.tif"][0] == "read 10x10 "
    assert rows["pages.tif"][0].startswith("read 8x8 animated: first frame used")
    assert rows["pages.tif"][1] < 40
    assert rows["garbage.tif"][0] == f"error: {tmp_path / 'garbage.tif'}: truncated or corrupt image (decoder error -2)"


def test_a_decoder_bomb_is_one_line_through_upscale(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    bombs = decoder_bombs(tmp_path / "in")
    png_file(tmp_path / "in" / "good.png")
    assert main(["upscale", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--model", "bicubic"]) == 1
    err = capsys.readouterr().err
    assert len(error_lines(err)) == len(bombs) and all(line.startswith("error: ") for line in error_lines(err))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good.png"]


# == issue 23, 3. flowsr export never replaces a user's files =======================================

def test_export_refuses_a_non_empty_folder_that_is_not_this_model_s_export_before_any_work(tmp_path):
    from flowsr.catalog import check_export_target

    model = tiny_model(tmp_path / "m")
    other = tiny_model(tmp_path / "other")
    user = tmp_path / "user"
    user.mkdir()
    (user / "config.json").write_text('{"mine": true}\n')
    previous = tmp_path / "previous"  # an export of the other model
    previous.mkdir()
    (previous / "model.onnx").write_bytes(b"onnx")
    (previous / "config.json").write_text(json.dumps({"onnx": {"exported_from": str(other)}}))
    for target, held in [(user, "config.json"), (previous, "config.json, model.onnx")]:
        started = time.monotonic()
        code, torch_imported, err = _torch_imported_after(["export", str(model), "-o", str(target)])
        assert code == 1 and not torch_imported, err
        assert err == (f"error: {target}: not empty and not an export of {model} (it holds {held}); choose a new "
                       "or empty -o, or pass --force to replace its model.onnx and config.json\n")
        assert time.monotonic() - started < 10  # (the export itself takes ~18 s)
    assert (user / "config.json").read_text() == '{"mine": true}\n'
    # a previous export of the same model may be refreshed; --force writes anywhere but a torch model
    (previous / "config.json").write_text(json.dumps({"onnx": {"exported_from": str(model)}}))
    check_export_target(str(model), previous)
    check_export_target(str(model), user, force=True)
    with pytest.raises(ValueError, match="holds a torch model"):
        check_export_target(str(model), other, force=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="exists and is not a folder"):
        check_export_target(str(model), tmp_path / "file")


# == issue 23, 7. every number has a stated range, checked before work starts =========================

@pytest.mark.parametrize("args, message", [
    (["upscale", "a.png", "-o", "o", "--threads", "100000"], "argument --threads: must be an integer in [0, 256], "
                                                             "got '100000'"),  # was: a segfault
    (["upscale", "a.png", "-o", "o", "--threads", "-3"], "argument --threads: must be an integer in [0, 256]"),
    (["upscale", "a.png", "-o", "o", "--tile", "1"], "argument --tile: must be -1 (never tile), 0 (automatic) or an "
                                                     "integer in [16, 8192], got '1'"),  # was: ran for ever
    (["upscale", "a.png", "-o", "o", "--tile-overlap", "-5"], "--tile-overlap: must be an integer in [0, 512]"),
    (["upscale", "a.png", "-o", "o", "--seed", "-1"], "--seed: must be an integer in [0, 9223372036854775807]"),
    (["eval", "--data", "d", "--steps", "4,0"], "argument --steps: must be a list of integers in [1, 1000], got '0'"),
    (["eval", "--data", "d", "--t", "0.5,nan"], "argument --t: must be a list of numbers in [0, 1], got 'nan'"),
    (["eval", "--data", "d", "--fid-patch", "100000"], "argument --fid-patch: must be an integer in [8, 4096]"),
    (["degrade", "-i", "a", "-o", "b", "--scale", "9"], "argument --scale: must be an integer in [1, 8]"),
    (["bench", "--size", "64,100000"], "argument --size: must be a list of integers in [8, 16384]"),
    (["bench", "--batch", "0"], "argument --batch: must be an integer in [1, 1024]"),
    (["serve", "--tile", "3"], "argument --tile: must be -1 (never tile), 0 (automatic) or an integer in [16, 8192]"),
    (["shard", "a", "-o", "b", "--shard-size", "0"], "argument --shard-size: must be an integer in [1, 1048576]"),
])
def test_every_option_is_checked_against_its_range_by_the_parser(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err.strip().splitlines()[-1], err


@pytest.mark.parametrize("override, message", [
    ("log_every=0", "log_every must be in [1, 1e+09], got 0"),  # was: a traceback after the first steps
    ("ckpt_every=0", "ckpt_every must be in [1, 1e+09], got 0"),
    ("crop=-64", "crop must be in [8, 2048], got -64"),
    ("net.channels=0", "net.channels must be in [1, 1024], got 0"),
    ("net.channel_mult=1,0", "net.channel_mult must be in [1, 16], got 0"),
    ("lr=1e30", "lr must be in [0, 1], got 1e+30"),  # was: "the last good checkpoint is kept" (there was none)
    ("batch_size=1000000", "batch_size must be in [1, 4096], got 1000000"),  # was: OOM-killed without a word
    ("val_images=-1", "val_images must be in [0, 10000], got -1"),
])
def test_every_config_key_is_checked_before_the_run_starts(tmp_path, image_folder, capsys, override, message):
    out = tmp_path / "run"
    assert _train(out, image_folder, override) == 1
    assert error_lines(capsys.readouterr().err) == [f"error: invalid config: {message}"]
    assert not out.exists()


def test_a_loss_that_diverges_before_any_checkpoint_says_so(tmp_path, image_folder, capsys, monkeypatch):
    import flowsr.train as train_module

    real = train_module.build_loss

    def build_loss(cfg, teacher=None):
        loss_fn = real(cfg, teacher)
        return lambda net, batch: (loss_fn(net, batch)[0] * math.nan, {})

    monkeypatch.setattr(train_module, "build_loss", build_loss)
    out = tmp_path / "run"
    assert _train(out, image_folder) == 1
    assert error_lines(capsys.readouterr().err)[-1] == ("error: loss is nan at step 0; no checkpoint was written yet; "
                                                         "lower lr or check the data")


# == issue 23, 8. model files are bounded and checked as strictly as images ===========================

def _bad_model(directory: Path, case: str) -> tuple[Path, str]:
    """A model directory broken as ``case`` says, and the error line upscale, serve and export give for it."""
    tiny_model(directory)
    config, weights = directory / "config.json", directory / "model.safetensors"
    if case == "deep_json":  # was: a RecursionError traceback
        config.write_text("[" * 100_000 + "]" * 100_000)
        return directory, f"error: {config}: not valid JSON (nested more than 32 deep)"
    if case == "nested_40":
        config.write_text(json.dumps({**json.loads(config.read_text()), "training": json.loads("[" * 40 + "]" * 40)}))
        return directory, f"error: {config}: not valid JSON (nested more than 32 deep)"
    if case == "huge_config":  # was: 1 GB accepted, 2.2 GB peak
        config.write_text(json.dumps({**json.loads(config.read_text()), "training": {"notes": "x" * (2 << 20)}}))
        return directory, f"error: {config}: larger than 1048576 bytes; not a flowsr config.json"
    if case == "long_integer":  # was: Python's own message, without the file's name
        config.write_text(config.read_text().replace('"scale": 4', '"scale": ' + "9" * 5000))
        return directory, f"error: {config}: not valid JSON (Exceeds the limit (4300 digits) for integer string"
    if case in ("config_fifo", "weights_fifo"):  # was: "missing"
        target = config if case == "config_fifo" else weights
        target.unlink()
        os.mkfifo(target)
        return directory, f"error: {target}: not a regular file (a FIFO)"
    if case in ("config_folder", "weights_folder"):
        target = config if case == "config_folder" else weights
        target.unlink()
        target.mkdir()
        return directory, f"error: {target}: not a regular file (a folder)"
    raise ValueError(case)


@contextlib.contextmanager
def time_limit(seconds: int):
    """Fail (instead of hanging) when the block runs over ``seconds``, e.g. blocked reading a FIFO."""
    def expired(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("case", ["deep_json", "nested_40", "huge_config", "long_integer", "config_fifo",
                                  "weights_fifo", "config_folder", "weights_folder"])
def test_bad_model_files_are_one_line_in_upscale_serve_and_export(tmp_path, case, capsys):
    model, message = _bad_model(tmp_path / "m", case)
    image = png_file(tmp_path / "a.png")
    commands = [["upscale", image, "-o", tmp_path / "out", "--model", model],
                ["serve", "--model", model, "--port", "0"]]
    if importlib.util.find_spec("onnx") and importlib.util.find_spec("onnxruntime"):  # the onnx extra
        commands.append(["export", model, "-o", tmp_path / "onnx"])
    for args in commands:
        with time_limit(60):  # a FIFO read by mistake would block
            code = main([str(arg) for arg in args])
        lines = error_lines(capsys.readouterr().err)
        assert code == 1 and len(lines) == 1 and lines[0].startswith(message), (args[0], lines)
    assert not (tmp_path / "out").exists() and not (tmp_path / "onnx").exists()


# == issue 23, 6. training memory is estimated before the run, large images read without the spike ====

def test_a_training_step_that_cannot_fit_is_refused_before_it_starts(tmp_path, image_folder, capsys):
    out = tmp_path / "run"  # was (batch_size=1000000): OOM-killed without a word
    assert _train(out, image_folder, "batch_size=4096", "crop=512") == 1
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and lines[0].startswith("error: a training step of batch_size=4096 crops of 512px "
                                                   "needs about ")
    assert lines[0].endswith("available; lower batch_size or crop")
    assert list(out.iterdir()) == []


def _big_png(path: Path, height: int, width: int) -> Path:
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[::7, ::5] = 200
    PIL.Image.fromarray(pixels).save(path, compress_level=1)
    return path


def test_training_data_that_cannot_fit_is_refused(tmp_path, capsys, monkeypatch):
    import flowsr.memory

    data = tmp_path / "data"
    data.mkdir()
    _big_png(data / "big.png", 4000, 4000)
    monkeypatch.setattr(flowsr.memory, "available_bytes", lambda: 120 << 20)  # a small machine
    out = tmp_path / "run"
    assert main(["train", "--preset", "tiny-teacher", "--out", str(out), *TINY_OVERRIDES, f"data={data}",
                 "data_mode=memory", "max_steps=2"]) == 1
    lines = error_lines(capsys.readouterr().err)
    assert lines == [f"error: {data}: the training data needs about 0.19 GB (0.04 GB of images in memory, and "
                     f"{data / 'big.png'} (4000x4000) decoded at once), more than the 0.12 GB available; use "
                     "data_mode=stream, fewer num_workers, or smaller images"]


def test_a_large_training_image_is_read_without_the_float_decode_spike(tmp_path):
    """An 8000x8000 PNG took 2201 MB to read as a training image (float planes); now 609 MB."""
    path = _big_png(tmp_path / "big.png", 4000, 4000)
    code = ("import sys\nfrom flowsr.data import Item, read_item\n"
            "def hwm(): return int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1])\n"
            f"before = hwm(); image = read_item(Item({str(path)!r}, 0, -1, 4000, 4000, 'big.png'), 64)\n"
            "print(tuple(image.shape), int(image[0, 0, 0]), int(image[0, 1, 0]), (hwm() - before) // 1024)")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    shape, first, second, grown = result.stdout.rsplit(")", 1)[0] + ")", *result.stdout.rsplit(")", 1)[1].split()
    assert shape == "(3, 4000, 4000)" and (int(first), int(second)) == (200, 0), result.stderr
    assert int(grown) < 12 * 16, grown  # MB: 10 bytes a pixel (was 35)
