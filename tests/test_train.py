"""The training loop: checkpoint round trip, exact resume, DDP with torchrun, presets and overrides."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import TINY_OVERRIDES
from safetensors.torch import load_file

import flowsr.train as train_module
from flowsr.checkpoint import load_model_dir
from flowsr.config import PRESETS, apply_overrides, preset
from flowsr.train import read_log, train


def tiny_config(data, *extra):
    cfg = preset("tiny-teacher")
    return apply_overrides(cfg, [*TINY_OVERRIDES, f"data={data}", "max_steps=6", *extra])


def losses(out):
    return [row["loss"] for row in read_log(out) if "loss" in row]


def test_run_writes_a_loadable_model(image_folder, tmp_path):
    out = train(tiny_config(image_folder), tmp_path / "run")
    net, config = load_model_dir(out)
    assert config.kind == "flow" and config.training["steps"] == 6
    assert len(losses(out)) == 6 and all(torch.isfinite(torch.tensor(losses(out))))
    x = torch.zeros(1, 3, 32, 32)
    assert net(x, torch.zeros(1), x).shape == x.shape


def _interrupted_then_resumed(cfg_factory, out, monkeypatch):
    """Run until the 5th batch raises (checkpoint at step 3 is the last), then resume to the end."""
    calls = {"n": 0}
    real_make_batch = train_module.make_batch

    def interrupted_make_batch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real_make_batch(*args, **kwargs)

    monkeypatch.setattr(train_module, "make_batch", interrupted_make_batch)
    with pytest.raises(KeyboardInterrupt):
        train(cfg_factory(), out)
    monkeypatch.setattr(train_module, "make_batch", real_make_batch)
    assert len(losses(out)) == 4
    train(cfg_factory(), out, resume=True)


def _assert_same_run(a, b):
    assert losses(a) == losses(b)
    final, expected = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert all(torch.equal(final[k], expected[k]) for k in expected)


def test_resume_reproduces_the_uninterrupted_run(image_folder, tmp_path, monkeypatch):
    reference = train(tiny_config(image_folder), tmp_path / "reference")
    _interrupted_then_resumed(lambda: tiny_config(image_folder), tmp_path / "resumed", monkeypatch)
    _assert_same_run(tmp_path / "resumed", reference)


@pytest.mark.parametrize("name", ["tiny-oftsr", "tiny-meanflow"])
def test_distillation_resumes_exactly(image_folder, tmp_path, monkeypatch, name):
    teacher = train(tiny_config(image_folder, "max_steps=2"), tmp_path / "teacher")

    def student_config():
        return apply_overrides(preset(name), [*TINY_OVERRIDES, f"data={image_folder}", "max_steps=6",
                                              f"teacher={teacher}", "guidance=1.5"])

    reference = train(student_config(), tmp_path / "reference")
    # the CFG scale the student learnt (eval --reference's default): OFTSR ignores guidance
    assert load_model_dir(reference)[1].training["teacher_guidance"] == (1.5 if name == "tiny-meanflow" else 1.0)
    _interrupted_then_resumed(student_config, tmp_path / "resumed", monkeypatch)
    _assert_same_run(tmp_path / "resumed", reference)


def test_fresh_run_refuses_to_overwrite_a_run(image_folder, tmp_path):
    out = train(tiny_config(image_folder, "max_steps=3"), tmp_path / "run")
    before = (out / "checkpoint.safetensors").read_bytes()
    with pytest.raises(FileExistsError, match="--resume"):
        train(tiny_config(image_folder), out)
    assert (out / "checkpoint.safetensors").read_bytes() == before


def test_empty_training_folder_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no usable training images"):
        train(tiny_config(tmp_path / "empty"), tmp_path / "run")


def test_distillation_students_start_from_the_teacher(image_folder, tmp_path):
    teacher = train(tiny_config(image_folder, "max_steps=3"), tmp_path / "teacher")
    for name in ("tiny-oftsr", "tiny-meanflow"):
        cfg = apply_overrides(preset(name), [*TINY_OVERRIDES, f"data={image_folder}", "max_steps=2",
                                             f"teacher={teacher}"])
        out = train(cfg, tmp_path / name)
        _, config = load_model_dir(out)
        assert config.kind == name.split("-")[1] and config.default_steps == 1
        assert len(losses(out)) == 2


def test_init_starts_from_a_trained_model(image_folder, tmp_path):
    base = train(tiny_config(image_folder, "max_steps=3"), tmp_path / "base")
    # a different net.channels on the command line is replaced by the init model's network
    out = train(tiny_config(image_folder, "max_steps=1", "lr=0", f"init={base}", "net.channels=16"),
                tmp_path / "init")
    expected, got = load_file(str(base / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert all(torch.allclose(got[k], expected[k], rtol=0, atol=1e-6) for k in expected)
    _, config = load_model_dir(out)
    assert config.training["init"] == str(base) and config.training["steps_total"] == 3 + 1
    # and training moves on from there
    moved = train(tiny_config(image_folder, "max_steps=2", f"init={base}"), tmp_path / "moved")
    moved = load_file(str(moved / "model.safetensors"))
    assert max((moved[k] - expected[k]).abs().max() for k in expected) > 1e-4


def test_overrides_are_checked():
    cfg = preset("tiny-teacher")
    apply_overrides(cfg, ["net.channels=8", "lr=0.5", "channels_last=false", "net.channel_mult=1,2"])
    assert cfg.net.channels == 8 and cfg.lr == 0.5 and cfg.channels_last is False
    assert cfg.net.channel_mult == (1, 2)
    with pytest.raises(ValueError, match="unknown config key"):
        apply_overrides(cfg, ["learning_rate=1"])
    with pytest.raises(ValueError, match="expected int"):
        apply_overrides(cfg, ["max_steps=ten"])
    with pytest.raises(ValueError, match="unknown preset"):
        preset("nope")


@pytest.mark.parametrize("name, overrides, message", [
    ("tiny-meanflow", ["mf_omega=0.75", "mf_kappa=0.5"], "invalid config: mf_omega=0.75 mf_kappa=0.5 apply only to "
     "mf_target=conditional; with mf_target=teacher leave mf_omega=1 mf_kappa=0 and use guidance=1.5"),
    # a preset's teacher-target settings, named as the preset's, with the overrides that undo them
    ("meanflow-x4-pm", ["mf_target=conditional"], "invalid config: mf_student_states=0.5 (from preset "
     "meanflow-x4-pm) applies only to mf_target=teacher; with mf_target=conditional add mf_student_states=0 "
     "and give MeanFlow's own CFG scale as mf_omega / (1 - mf_kappa)"),
    ("meanflow-x4-pm", ["mf_target=conditional", "guidance=1.5"], "invalid config: guidance=1.5 mf_student_states=0.5 "
     "apply only to mf_target=teacher; with mf_target=conditional add guidance=1 mf_student_states=0 "
     "and give MeanFlow's own CFG scale as mf_omega / (1 - mf_kappa), e.g. mf_omega=1.5 for scale 1.5"),
    ("tiny-meanflow", ["mf_target=conditional", "guidance=2", "mf_kappa=0.5"],
     "invalid config: guidance=2 applies only to mf_target=teacher; with mf_target=conditional add guidance=1 and "
     "give MeanFlow's own CFG scale as mf_omega / (1 - mf_kappa), e.g. mf_omega=1 for scale 2"),
    ("tiny-meanflow", ["mf_target=conditional", "mf_kappa=1"], "invalid config: MeanFlow's CFG scale "
     "mf_omega / (1 - mf_kappa) must be in (0, 20] (mf_omega > 0, mf_kappa < 1), got mf_omega=1 mf_kappa=1"),
    ("tiny-meanflow", ["mf_target=conditional", "mf_kappa=1.5"], "got mf_omega=1 mf_kappa=1.5"),
    ("tiny-meanflow", ["mf_target=conditional", "mf_omega=0"], "got mf_omega=0 mf_kappa=0"),
    ("tiny-meanflow", ["mf_target=conditional", "mf_omega=3", "mf_kappa=0.9"], "got mf_omega=3 mf_kappa=0.9"),
])
def test_meanflow_cfg_options_its_target_ignores_are_refused(name, overrides, message):
    cfg = apply_overrides(preset(name), overrides)
    with pytest.raises(ValueError) as error:
        cfg.validate()
    assert message in str(error.value) and "\n" not in str(error.value)


def test_presets_and_the_cfg_ablation_recipes_are_valid():
    for name in PRESETS:
        preset(name).validate()
    # issue 24 (docs/cfg_ablation.md): the start-network MeanFlow presets distil the unguided teacher
    assert preset("meanflow-x4-pm").distilled_guidance() == preset("tiny-meanflow-pm").distilled_guidance() == 1.0
    # benchmarks/cfg_ablation.sh: w1.5 (teacher CFG) and mf-w1.5 (MeanFlow's own CFG) on the preset it trains
    teacher_cfg = apply_overrides(preset("meanflow-x4-pm"), ["guidance=1.5"])
    own_cfg = apply_overrides(preset("meanflow-x4-pm"), ["mf_target=conditional", "mf_kappa=0.5", "mf_omega=0.75",
                                                         "guidance=1", "mf_student_states=0"])
    for cfg in (teacher_cfg, own_cfg):
        cfg.validate()
        assert cfg.distilled_guidance() == 1.5
    assert preset("tiny-oftsr").distilled_guidance() == 1.0


def test_conditional_meanflow_records_its_own_cfg_scale(image_folder, tmp_path):
    """mf_target=conditional needs no teacher; it records omega / (1 - kappa), eval --reference's default."""
    import flowsr
    from flowsr.evaluate import Reference

    cfg = apply_overrides(preset("tiny-meanflow"), [*TINY_OVERRIDES, f"data={image_folder}", "max_steps=1",
                                                    "teacher=", "mf_target=conditional", "mf_omega=0.6",
                                                    "mf_kappa=0.6"])
    out = train(cfg, tmp_path / "student")
    model = flowsr.load(str(out), device="cpu")
    assert model.config.training["teacher_guidance"] == pytest.approx(0.6 / (1 - 0.6))
    assert Reference(upscaler=model).guidance_for(model) == pytest.approx(1.5)


@pytest.mark.skipif(shutil.which("torchrun") is None and not os.path.exists(
    os.path.join(os.path.dirname(sys.executable), "torchrun")), reason="torchrun not installed")
def test_torchrun_two_gloo_processes(image_folder, tmp_path):
    out = tmp_path / "ddp"
    torchrun = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")
    command = [torchrun, "--nproc_per_node=2", "--master_port=29517", "-m", "flowsr", "train",
               "--preset", "tiny-teacher", "--out", str(out), *TINY_OVERRIDES, f"data={image_folder}",
               "max_steps=3", "device=cpu", "data_mode=stream", "num_workers=1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "data: 3 images (rank 0 of 2), 0 MB decoded, streamed by 1 worker process" in result.stdout
    net, config = load_model_dir(out)
    assert config.training["batch_size"] == 4  # 2 per process x 2 processes
    assert json.loads((out / "train_config.json").read_text())["max_steps"] == 3
