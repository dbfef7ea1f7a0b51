"""The fast training path (issue 21): crops cut on the device, no per-step host sync, foreach/fused updates;
and ``fast=false``, the path before it."""

import copy
import json
import math

import pytest
import torch
from conftest import TINY_OVERRIDES, poison_loss_at_call
from safetensors import safe_open

import flowsr.train as train_module
from flowsr.config import apply_overrides, preset
from flowsr.data import DeviceCrops, crop_batches, epoch_order
from flowsr.nets import NetConfig, UNet
from flowsr.objectives import unwrap
from flowsr.train import ema_update, host_values, read_log, train


def images(count=5, channels=6):
    generator = torch.Generator().manual_seed(0)
    return [torch.randint(0, 256, (channels, 40 + 3 * i, 50 - 2 * i), dtype=torch.uint8, generator=generator)
            for i in range(count)]


def test_device_crops_are_crops_of_the_epoch_order_flipped_and_rotated():
    pictures = images()
    crops = DeviceCrops(pictures, 16, 7, seed=3, rank=1)
    batch = crops.batch(11)
    assert batch.shape == (7, 6, 16, 16) and batch.dtype == torch.uint8
    # every row is a patch of the image its crop number visits, flipped then rotated like Crops does
    for row, n in enumerate(range(11, 18)):
        image = pictures[int(epoch_order(3, 1, n // 5, 5)[n % 5])]
        candidates = [torch.rot90(patch.flip(-1) if flip else patch, k, dims=(1, 2))
                      for top in range(image.shape[1] - 15) for left in range(image.shape[2] - 15)
                      for patch in [image[:, top:top + 16, left:left + 16]] for flip in (0, 1) for k in range(4)]
        assert any(torch.equal(batch[row], c) for c in candidates), row


def test_device_crop_stream_is_a_function_of_seed_rank_and_crop_number():
    pictures = images(channels=3)
    reference = DeviceCrops(pictures, 16, 4, seed=0)
    first = [next(reference) for _ in range(6)]
    # a resumed stream (start = crops seen) continues with the same batches
    resumed = DeviceCrops(pictures, 16, 4, seed=0, start=8)
    assert all(torch.equal(next(resumed), expected) for expected in first[2:])
    # another seed, another rank: other crops
    for other in (DeviceCrops(pictures, 16, 4, seed=1), DeviceCrops(pictures, 16, 4, seed=0, rank=1)):
        assert not any(torch.equal(next(other), expected) for expected in first)
    # places and orientations vary from crop to crop
    assert len({tuple(b.float().mean((1, 2)).tolist()) for b in torch.cat(first)}) == 24


def test_crop_batches_cuts_on_the_device_in_memory_mode_only(image_folder):
    batches, line = crop_batches(image_folder, 32, 3, seed=5, mode="memory", device="cpu")
    assert isinstance(batches, DeviceCrops) and "in memory, cut on cpu (data_mode=memory)" in line
    assert next(batches).shape == (3, 3, 32, 32)
    batches, line = crop_batches(image_folder, 32, 3, seed=5, mode="stream", num_workers=0, device="cpu")
    assert not isinstance(batches, DeviceCrops) and "streamed by the training process" in line


def test_foreach_ema_equals_the_loop_ema_exactly():
    torch.manual_seed(0)
    net = UNet(NetConfig(channels=8, channel_mult=(1, 2), num_blocks=1, attention_levels=()))
    loop, batched = copy.deepcopy(net), copy.deepcopy(net)
    for decay in (0.5, 0.9, 0.999):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
        ema_update(loop, net, decay)
        ema_update(batched, net, decay, foreach=True)
    assert all(torch.equal(a, b) for a, b in zip(loop.state_dict().values(), batched.state_dict().values()))


def test_host_values_fetch_tensors_as_the_floats_item_gives():
    loss = torch.tensor(0.123456789, dtype=torch.float32)
    row = host_values({"step": 3, "loss": loss, "lr": 1e-3, "near": torch.tensor(0.25)})
    assert row == {"step": 3, "loss": loss.item(), "lr": 1e-3, "near": 0.25}
    assert list(row) == ["step", "loss", "lr", "near"] and host_values({"step": 1}) == {"step": 1}


def test_unwrap_reaches_the_module_inside_compile():
    net = torch.nn.Linear(2, 2)
    assert unwrap(net) is net and unwrap(torch.compile(net)) is net
    fn = lambda x: x  # noqa: E731 - a plain function passes through
    assert unwrap(fn) is fn


def config(data, *extra):
    return apply_overrides(preset("tiny-teacher"), [*TINY_OVERRIDES, f"data={data}", "max_steps=6", *extra])


def losses(out):
    return [row["loss"] for row in read_log(out) if "loss" in row]


def test_fast_and_old_path_take_the_same_steps_on_the_same_crops(image_folder, tmp_path):
    # streamed crops are the same on both paths; in fp32 eager the steps differ only in fused/foreach rounding
    same = ["data_mode=stream", "num_workers=0", "amp=none", "channels_last=false", "compile=false"]
    old = train(config(image_folder, *same, "fast=false"), tmp_path / "old")
    new = train(config(image_folder, *same, "fast=true"), tmp_path / "new")
    assert losses(new) == pytest.approx(losses(old), rel=1e-4, abs=1e-6)
    assert json.loads((old / "train_config.json").read_text())["fast"] is False
    assert json.loads((new / "train_config.json").read_text())["fast"] is True


@pytest.mark.parametrize("fast", ["true", "false"])
def test_both_paths_resume_exactly(image_folder, tmp_path, monkeypatch, fast):
    from test_train import _assert_same_run, _interrupted_then_resumed

    reference = train(config(image_folder, f"fast={fast}"), tmp_path / "reference")
    _interrupted_then_resumed(lambda: config(image_folder, f"fast={fast}"), tmp_path / "resumed", monkeypatch)
    _assert_same_run(tmp_path / "resumed", reference)


def test_fast_path_checks_losses_every_log_row_and_keeps_the_last_good_checkpoint(image_folder, tmp_path,
                                                                                   monkeypatch):
    out = tmp_path / "run"
    snapshot = poison_loss_at_call(monkeypatch, out, 6, float("nan"))  # step index 5: NaN (the weights go NaN too)
    # checked at log rows (every 4 steps) and before checkpoints (every 2): found before the step-6 checkpoint
    with pytest.raises(train_module.TrainingDiverged, match="loss is nan at step 5; the last good checkpoint"):
        train(config(image_folder, "log_every=4", "ckpt_every=2", "max_steps=12"), out)
    assert (out / "checkpoint.safetensors").read_bytes() == snapshot["checkpoint"]
    with safe_open(str(out / "checkpoint.safetensors"), "pt") as handle:
        assert handle.metadata()["step"] == "4"
    assert [row["step"] for row in read_log(out)] == [4]


def test_a_failing_compile_falls_back_to_eager_with_one_line(image_folder, tmp_path, monkeypatch, capsys):
    class Broken(torch.nn.Module):
        def __init__(self, module):
            super().__init__()
            self._orig_mod = module

        def forward(self, *args, **kwargs):
            raise RuntimeError("backend exploded\nmore detail")

    monkeypatch.setattr(torch, "compile", Broken)
    out = train(config(image_folder, "compile=true", "max_steps=2"), tmp_path / "run")
    printed = capsys.readouterr().out
    assert printed.count("torch.compile failed (RuntimeError: backend exploded); training eager") == 1
    assert len(losses(out)) == 2


@pytest.mark.parametrize("mode", ["memory", "stream"])
def test_a_start_network_run_trains_on_both_feeds(image_folder, tmp_path, monkeypatch, capsys, mode):
    # memory: (HR, start image) stacked in 6-channel crops cut on the device; stream: the start network per batch
    monkeypatch.setenv("FLOWSR_CACHE", str(tmp_path / "cache"))
    out = train(config(image_folder, "start=bsrn-x4", "sigma_p=0.1", f"data_mode={mode}", "num_workers=0",
                       "max_steps=2", "crop=64", "batch_size=2"), tmp_path / "run")
    printed = capsys.readouterr().out
    assert ("cut on cpu" in printed and "with their start images" in printed) == (mode == "memory")
    assert len(losses(out)) == 2 and all(map(math.isfinite, losses(out)))


def test_bench_train_times_every_objective_on_both_paths(image_folder, tmp_path, capsys):
    from flowsr.cli import main

    assert main(["bench", "--train", "tiny-teacher", "--crop", "32", "--batch", "2", "--repeat", "1",
                 "--data", str(image_folder), "--device", "cpu", "--json", str(tmp_path / "bench.json")]) == 0
    payload = json.loads((tmp_path / "bench.json").read_text())
    assert payload["command"] == f"flowsr bench --train tiny-teacher --crop 32 --batch 2 --repeat 1 --data " \
        f"{image_folder} --device cpu --json {tmp_path / 'bench.json'}"
    rows = payload["rows"]
    assert [(r["objective"], r["path"]) for r in rows] == [(o, p) for o in ("flow_matching", "regression", "oftsr",
                                                                             "meanflow") for p in ("old", "fast")]
    assert all(r["crops_per_s"] > 0 and r["gflop_per_step"] > 0 and 0 < r["fraction_of_fp32_matmul"] for r in rows)
    assert [r["preset"] for r in rows[::2]] == ["tiny-teacher", "tiny-regression", "tiny-oftsr", "tiny-meanflow"]
    assert rows[0]["speedup"] == 1 and "fraction_of_bf16_matmul" in capsys.readouterr().out
    for old, fast in zip(rows[::2], rows[1::2]):  # the bound: the old step over the loss alone
        assert old["loss_ms"] > 0 and fast["loss_ms"] > 0
        assert old["step_ms"] == pytest.approx(1e3 / old["steps_per_s"])
        assert fast["speedup_bound"] == pytest.approx(old["step_ms"] / fast["loss_ms"])
    assert rows[-1]["vs_flow_matching"] == pytest.approx(rows[-1]["step_ms"] / rows[1]["step_ms"])  # MeanFlow, fast


def test_bench_train_refuses_an_unknown_path_or_objective(capsys):
    from flowsr.cli import main

    assert main(["bench", "--train", "tiny-teacher", "--paths", "fast,eager", "--device", "cpu"]) != 0
    assert "--paths: old, fast and/or compiled, not fast,eager" in capsys.readouterr().err
    assert main(["bench", "--train", "tiny-teacher", "--objectives", "meanflow,sds", "--device", "cpu"]) != 0
    assert "--objectives: some of flow_matching, regression, oftsr, meanflow, not meanflow,sds" in \
        capsys.readouterr().err


def test_bench_train_times_the_objectives_asked_for(image_folder, tmp_path):
    from flowsr.cli import main

    assert main(["bench", "--train", "tiny-teacher", "--objectives", "meanflow,flow_matching", "--paths", "fast",
                 "--crop", "32", "--batch", "2", "--repeat", "1", "--data", str(image_folder), "--device", "cpu",
                 "--json", str(tmp_path / "bench.json")]) == 0
    rows = json.loads((tmp_path / "bench.json").read_text())["rows"]
    assert [(r["objective"], r["path"]) for r in rows] == [("meanflow", "fast"), ("flow_matching", "fast")]
    assert rows[0]["vs_flow_matching"] == pytest.approx(rows[0]["step_ms"] / rows[1]["step_ms"])
