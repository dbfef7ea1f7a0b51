"""ONNX export and the ONNX Runtime backend: parity with torch, the pipeline's features, CLI, serve, bench,
the dependency-free example script, and the errors a user sees.

Exported once per module: four tiny random networks (one per model kind, two architectures), a tiny
MeanFlow student starting from the bundled BSRN (its export holds BSRN's in start/), two tiny SR networks,
and every model in flowsr/weights/ (whatever the bundle holds).
"""

import importlib.util
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SHARED, make_image
from PIL import Image

import flowsr
from flowsr.catalog import read_config_json, weights_sha256
from flowsr.checkpoint import ModelLoadError, save_model_dir
from flowsr.cli import main
from flowsr.config import ModelConfig
from flowsr.nets import NetConfig, SRNetConfig, UNet, build_sr_net
from flowsr.pipeline import Settings, _SourceNoise, bundled_models

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "onnx_upscale.py"
SET5_LR = SHARED / "test" / "Set5" / "LR_bicubic" / "X4" / "birdx4.png"
HAS_ONNX = all(importlib.util.find_spec(m) for m in ("onnx", "onnxruntime", "onnxscript"))
needs_onnx = pytest.mark.skipif(not HAS_ONNX, reason='needs the onnx extra: pip install "flowsr[onnx]"')
BUNDLED = list(bundled_models())
BUNDLED_SR = [name for name, path in bundled_models().items() if read_config_json(path)["kind"] == "sr"]
BUNDLED_FLOW = [name for name in BUNDLED if name not in BUNDLED_SR]
LEVEL = 1 / 255

# two small architectures covering every code path of the network: attention, pixel-unshuffle patches,
# the linear skip, group norm, the endpoint parameterisation, both time scales; students use A, the others B
ARCH_A = NetConfig(channels=16, channel_mult=(1, 2), num_blocks=1, attention_levels=(1,), patch=2,
                   linear_skip=True)
ARCH_B = NetConfig(channels=16, channel_mult=(1, 2), num_blocks=1, attention_levels=(), norm="group",
                   prediction="endpoint", time_scale=1.0)
TINY = {"oftsr": ARCH_A, "meanflow": ARCH_A, "regression": ARCH_B, "flow": ARCH_B}
SAME_NETWORK = {"meanflow": "oftsr", "flow": "regression"}  # kinds whose export is the other's, relabelled


def tiny_model(directory: Path, kind: str) -> Path:
    """A tiny random model of ``kind``: every weight perturbed (so no zero-initialised branch is idle),
    except the interval MLP of teachers and regression nets, which training never touches."""
    torch.manual_seed(len(kind))
    net = UNet(TINY[kind])
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
        if kind in ("flow", "regression"):
            torch.nn.init.zeros_(net.interval_mlp[-1].weight)
            torch.nn.init.zeros_(net.interval_mlp[-1].bias)
    config = ModelConfig(kind=kind, scale=4, net=TINY[kind], default_t=0.5 if kind == "oftsr" else 1.0,
                         name=f"tiny-{kind}")
    save_model_dir(directory, net, config)
    return directory


def relabel(source: Path, target: Path, kind: str) -> Path:
    """A copy of a model directory (torch or ONNX) whose config.json says ``kind``."""
    import shutil

    shutil.copytree(source, target)
    config = json.loads((target / "config.json").read_text())
    (target / "config.json").write_text(json.dumps({**config, "kind": kind, "name": f"tiny-{kind}", "default_t": 1.0}))
    return target


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """kind -> (torch model directory, its ONNX export); two exports (each takes seconds) serve four kinds,
    the network being the same for a teacher and a regression net, and for the two students."""
    if not HAS_ONNX:
        pytest.skip('needs the onnx extra: pip install "flowsr[onnx]"')
    from flowsr.onnx_export import export

    base = tmp_path_factory.mktemp("tiny")
    dirs = {}
    for kind in ("oftsr", "regression"):
        source = tiny_model(base / kind, kind)
        export(source, base / f"{kind}-onnx")
        dirs[kind] = (source, base / f"{kind}-onnx")
    for kind, other in SAME_NETWORK.items():
        dirs[kind] = tuple(relabel(path, base / path.name.replace(other, kind), kind) for path in dirs[other])
    return dirs


@pytest.fixture(scope="module")
def bundled_onnx(tmp_path_factory):
    """name -> ONNX export of that bundled model, exported on first use."""
    base, done = tmp_path_factory.mktemp("bundled"), {}

    def get(name: str) -> Path:
        if name not in done:
            from flowsr.onnx_export import export

            export(name, base / name)
            done[name] = base / name
        return done[name]

    return get


def net_inputs(multiple: int, batch: int = 3, seed: int = 0):
    """x, t, h, cond at a batch and size other than the ones the export traced."""
    generator = torch.Generator().manual_seed(seed)
    cond = torch.rand(batch, 3, 2 * multiple, 5 * multiple, generator=generator) * 2 - 1
    x = 0.98 * cond + 0.2 * torch.randn(cond.shape, generator=generator)
    return x, torch.rand(batch, generator=generator), torch.rand(batch, generator=generator), cond


def max_diff(a, b) -> float:
    return float((torch.as_tensor(np.asarray(a), dtype=torch.float64)
                  - torch.as_tensor(np.asarray(b), dtype=torch.float64)).abs().max())


# -- the exported graph ------------------------------------------------------------------------------


@needs_onnx
def test_export_writes_a_checked_graph_with_dynamic_axes_and_the_model_config(tiny):
    import onnx

    source, exported = tiny["oftsr"]
    onnx.checker.check_model(str(exported / "model.onnx"), full_check=True)
    graph = onnx.load(str(exported / "model.onnx")).graph
    shapes = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
              for i in [*graph.input, *graph.output]}
    image = ["batch", 3, "height", "width"]
    assert shapes == {"x": image, "t": ["batch"], "h": ["batch"], "cond": image, "v": image}
    data = json.loads((exported / "config.json").read_text())
    spec = data.pop("onnx")
    assert ModelConfig.from_dict(data) == ModelConfig.from_dict(json.loads((source / "config.json").read_text()))
    assert [i["name"] for i in spec["inputs"]] == ["x", "t", "h", "cond"] and spec["outputs"][0]["name"] == "v"
    assert spec["size_multiple"] == 4 and spec["dtype"] == "float32" and spec["opset"] >= 18
    assert spec["check"]["max_abs_diff"] <= 1e-4 and spec["flops_per_pixel"] > 0
    assert all(len(i["range"]) == 2 and i["shape"] for i in spec["inputs"] + spec["outputs"])


@needs_onnx
@pytest.mark.parametrize("kind", list(TINY))
def test_one_network_call_matches_torch(tiny, kind):
    source, exported = tiny[kind]
    torch_net, onnx_net = flowsr.load(source).net, flowsr.load(exported).net
    x, t, h, cond = net_inputs(onnx_net.size_multiple)
    with torch.no_grad():
        assert max_diff(onnx_net(x, t, cond, h), torch_net(x, t, cond, h)) <= 1e-4
        if kind in ("flow", "regression"):  # called without h by the samplers: the graph is fed h = 0
            assert max_diff(onnx_net(x, 0.25, cond), torch_net(x, 0.25, cond)) <= 1e-4
        else:  # the interval input is live in students, and a call without it is refused
            assert max_diff(onnx_net(x, t, cond, 1 - h), onnx_net(x, t, cond, h)) > 1e-3
            with pytest.raises(ValueError, match="pass h"):
                onnx_net(x, 0.25, cond)


@needs_onnx
@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_model_network_call_matches_torch(bundled_onnx, name):
    torch_net, onnx_net = flowsr.load(name).net, flowsr.load(bundled_onnx(name)).net
    with torch.no_grad():
        if name in BUNDLED_SR:
            lq = torch.rand(2, 3, 11, 23, generator=torch.Generator().manual_seed(0))
            assert max_diff(onnx_net(lq), torch_net(lq)) <= 1e-4
        else:
            x, t, h, cond = net_inputs(onnx_net.size_multiple, batch=2)
            assert max_diff(onnx_net(x, t, cond, h), torch_net(x, t, cond, h)) <= 1e-4


# -- through the pipeline ----------------------------------------------------------------------------

PIPELINE_SETTINGS = {
    "flow": [Settings(steps=2, sampler="heun", guidance=1.5), Settings(steps=3)],
    "oftsr": [Settings(t=0.0), Settings(t=0.7)],
    "meanflow": [Settings(steps=2), Settings(t=0.3, guidance=2.0)],
    "regression": [Settings(color_fix="wavelet")],
}


@needs_onnx
@pytest.mark.parametrize("kind", list(TINY))
def test_samplers_knob_guidance_tiling_and_alpha_match_torch(tiny, kind):
    source, exported = tiny[kind]
    torch_model, onnx_model = flowsr.load(source), flowsr.load(exported)
    assert onnx_model.backend == "onnxruntime" and torch_model.backend == "torch"
    lq = torch.rand(1, 4, 18, 22, generator=torch.Generator().manual_seed(2))  # RGB + alpha
    for settings in PIPELINE_SETTINGS[kind]:
        assert onnx_model.nfe(settings) == torch_model.nfe(settings)
        for tile in (0, 8):
            expected = torch_model.upscale_tensor(lq, settings, seed=7, tile=tile, tile_overlap=2)
            got = onnx_model.upscale_tensor(lq, settings, seed=7, tile=tile, tile_overlap=2)
            # several calls, guidance and the endpoint net's 1 / (1 - t) amplify the per-call 1e-5:
            # still a quarter of a grey level
            assert got.shape == (1, 4, 72, 88) and max_diff(got, expected) <= 1e-3, (settings, tile)
    if kind != "regression":  # the seeded source noise reaches the graph
        other = onnx_model.upscale_tensor(lq, PIPELINE_SETTINGS[kind][0], seed=8)
        assert max_diff(other, onnx_model.upscale_tensor(lq, PIPELINE_SETTINGS[kind][0], seed=7)) > 1e-3


@needs_onnx
def test_float16_export_runs_and_stays_close_to_float32(tiny, tmp_path):
    from flowsr.onnx_export import export

    source, _ = tiny["oftsr"]
    spec = export(source, tmp_path / "half", dtype="float16")
    assert spec["dtype"] == "float16" and json.loads((tmp_path / "half" / "config.json").read_text())["onnx"] == spec
    half, full = flowsr.load(tmp_path / "half"), flowsr.load(source)
    x, t, h, cond = net_inputs(half.net.size_multiple)
    difference = max_diff(half.net(x, t, cond, h), full.net(x, t, cond, h))
    assert 0 < difference < 0.05 and 0 < spec["check"]["max_abs_diff"] < 0.05
    lq = torch.rand(1, 3, 12, 16, generator=torch.Generator().manual_seed(3))
    assert max_diff(half.upscale_tensor(lq, seed=1), full.upscale_tensor(lq, seed=1)) < 4 * LEVEL


def _upscale_both(model: str, exported: Path, image: Path, tmp_path: Path) -> tuple[np.ndarray, np.ndarray]:
    outputs = []
    for label, spec in (("torch", model), ("onnx", str(exported))):
        assert main(["upscale", str(image), "-o", str(tmp_path / label), "--model", spec, "--seed", "3"]) == 0
        outputs.append(np.asarray(Image.open(tmp_path / label / f"{image.stem}.png")).astype(np.int16))
    return outputs[0], outputs[1]


@needs_onnx
@pytest.mark.parametrize("name", BUNDLED)
def test_upscale_of_a_generated_image_through_both_backends_within_one_level(bundled_onnx, name, tmp_path):
    image = tmp_path / "generated.png"
    Image.fromarray(make_image(np.random.default_rng(4), 40, 52)).save(image)
    by_torch, by_onnx = _upscale_both(name, bundled_onnx(name), image, tmp_path)
    assert by_torch.shape == (160, 208, 3) and np.abs(by_torch - by_onnx).max() <= 1


@needs_onnx
@pytest.mark.skipif(not SET5_LR.is_file(), reason=f"Set5 is not at {SET5_LR} (../shared/data)")
@pytest.mark.parametrize("name", BUNDLED)
def test_upscale_of_a_set5_image_through_both_backends_within_one_level(bundled_onnx, name, tmp_path):
    by_torch, by_onnx = _upscale_both(name, bundled_onnx(name), SET5_LR, tmp_path)
    assert by_torch.shape == (288, 288, 3) and np.abs(by_torch - by_onnx).max() <= 1


# -- serve and bench ---------------------------------------------------------------------------------


@needs_onnx
def test_serve_runs_an_onnx_model_directory(tiny, tmp_path):
    from test_serve import Client

    from flowsr.io import read_image_bytes
    from flowsr.pipeline import image_seed

    _, exported = tiny["meanflow"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    process = subprocess.Popen([sys.executable, "-m", "flowsr", "serve", "--model", str(exported), "--port", "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    killer = threading.Timer(60, process.kill)
    killer.start()
    try:
        line = process.stdout.readline()
        assert "open http" in line, process.stderr.read() if process.poll() is not None else line
        client = Client(line.split("open ")[1].split()[0])
        info = json.loads(client.request("GET", "/api/info")[1])
        assert [m["name"] for m in info["models"]] == [exported.name]
        data = Image.fromarray(make_image(np.random.default_rng(1), 20, 24))
        buffer = __import__("io").BytesIO()
        data.save(buffer, format="PNG")
        _, png = client.upscale(buffer.getvalue(), name="a.png", model=exported.name, t="0.5", seed="2")
    finally:
        killer.cancel()
        process.terminate()
        process.wait(timeout=60)
    served = read_image_bytes(png, "result").rgb
    expected = flowsr.load(exported).upscale_image(read_image_bytes(buffer.getvalue(), "a.png"), Settings(t=0.5),
                                                    seed=image_seed(2, "a.png"))
    assert served.shape == (3, 80, 96) and max_diff(served, (expected.rgb * 255).round() / 255) <= LEVEL + 1e-6


@needs_onnx
def test_bench_times_torch_and_each_onnx_runtime_setting_side_by_side(tiny, tmp_path, capsys):
    source, exported = tiny["oftsr"]
    out = tmp_path / "bench.json"
    assert main(["bench", "--model", str(source), str(exported), "--device", "cpu", "--size", "32,64",
                 "--repeat", "2", "--ort-threads", "1", "--ort-opt", "basic,all", "--ort-execution",
                 "sequential,parallel", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    torch_rows = [r for r in rows if r["backend"] == "torch"]
    onnx_rows = [r for r in rows if r["backend"] == "onnxruntime"]
    assert [r["size"] for r in torch_rows] == [32, 64] and len(onnx_rows) == 2 * 2 * 2
    assert {(r["ort_optimization"], r["ort_execution"], r["size"]) for r in onnx_rows} == {
        (level, mode, size) for level in ("basic", "all") for mode in ("sequential", "parallel") for size in (32, 64)}
    for row in rows:
        assert row["latency_ms_median"] > 0 and row["megapixels_per_s"] > 0 and row["peak_memory_mb"] > 0
        assert row["gflops_per_image"] == pytest.approx(torch_rows[0]["gflops_per_image"] * row["size"] ** 2 / 32**2)
    assert all(r["threads"] == 1 and r["compile"] == "-" for r in onnx_rows)
    assert [r["speedup_vs_first"] for r in torch_rows] == [1.0, 1.0] and all(r["speedup_vs_first"] > 0 for r in rows)
    assert "ort_optimization" in capsys.readouterr().out


# -- the example script without flowsr ---------------------------------------------------------------


def _example():
    spec = importlib.util.spec_from_file_location("onnx_upscale", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _flowsr_noise(seed: int, height: int, width: int, multiple: int) -> np.ndarray:
    """flowsr's banded source noise of an (height, width) output, zero-padded as the pipeline pads it."""
    noise = _SourceNoise(seed, 1, width).block(0, height, keep=False)
    return torch.nn.functional.pad(noise, (0, -width % multiple, 0, -height % multiple)).numpy()


@needs_onnx
@pytest.mark.parametrize("kind", list(TINY))
def test_example_script_matches_flowsr_given_the_same_noise(tiny, kind):
    _, exported = tiny[kind]
    rgb = make_image(np.random.default_rng(5), 19, 26)
    model = flowsr.load(exported)
    expected = model.upscale(rgb, seed=4)
    noise = _flowsr_noise(4, 76, 104, model.net.size_multiple)
    got = np.asarray(_example().upscale(exported, Image.fromarray(rgb), noise=noise)).astype(np.int16)
    difference = np.abs(got - expected)
    # equal but for Pillow's bicubic at the border (outer 8 HR pixels), which these random nets, with
    # attention or group norm, spread over the image; a wrong knob or other noise is >= 10 levels off
    assert got.shape == expected.shape == (76, 104, 3)
    assert difference.mean() < 0.5 and np.percentile(difference, 99) <= 2
    if kind == "oftsr":
        wrong_knob = np.asarray(_example().upscale(exported, Image.fromarray(rgb), t=1.0, noise=noise))
        assert np.abs(wrong_knob - expected).mean() > 5


@needs_onnx
def test_example_script_runs_without_flowsr_and_torch(tiny, tmp_path):
    _, exported = tiny["oftsr"]
    Image.fromarray(make_image(np.random.default_rng(6), 21, 17)).save(tmp_path / "in.png")
    block = ("import runpy, sys; sys.modules['flowsr'] = sys.modules['torch'] = None; "
             f"sys.argv = ['onnx_upscale.py'] + sys.argv[1:]; runpy.run_path({str(EXAMPLE)!r}, run_name='__main__')")
    done = subprocess.run([sys.executable, "-c", block, str(exported), str(tmp_path / "in.png"),
                           str(tmp_path / "out.png"), "--t", "0.3"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert Image.open(tmp_path / "out.png").size == (68, 84)


def _readme_snippet() -> str:
    """The ten-line Python block of the README's Deploy section."""
    deploy = (ROOT / "README.md").read_text().split("## Deploy", 1)[1]
    return deploy.split("```python\n", 1)[1].split("```", 1)[0]


@needs_onnx
def test_readme_ten_lines_run_without_flowsr_and_match_the_example_script(tiny, tmp_path):
    import shutil

    code = _readme_snippet()
    assert len(code.strip().splitlines()) == 10
    _, exported = tiny["oftsr"]
    shutil.copytree(exported, tmp_path / "oftsr-x4-onnx")  # the README's paths, relative to the folder it runs in
    Image.fromarray(make_image(np.random.default_rng(8), 23, 18)).save(tmp_path / "in.png")
    block = "import sys; sys.modules['flowsr'] = sys.modules['torch'] = None\n" + code
    done = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    readme = np.asarray(Image.open(tmp_path / "out.png")).astype(np.int16)
    script = np.asarray(_example().upscale(tmp_path / "oftsr-x4-onnx", Image.open(tmp_path / "in.png"), seed=0))
    assert readme.shape == (92, 72, 3) and np.abs(readme - script).max() <= 1


@needs_onnx
@pytest.mark.parametrize("name", BUNDLED_FLOW[:1])
def test_example_script_with_a_bundled_model_matches_flowsr_given_the_same_noise(bundled_onnx, name):
    exported = bundled_onnx(name)
    rgb = make_image(np.random.default_rng(7), 32, 40)
    model = flowsr.load(exported)
    for t in (0.0, 1.0):
        expected = model.upscale(rgb, t=t if model.config.kind in ("oftsr", "meanflow") else None, seed=1)
        noise = _flowsr_noise(1, 128, 160, model.net.size_multiple)
        got = np.asarray(_example().upscale(exported, Image.fromarray(rgb), t=t, noise=noise)).astype(np.int16)
        difference = np.abs(got - expected)
        assert difference.mean() < 0.5 and difference[16:-16, 16:-16].max() <= 1, (t, difference.max())


# -- errors --------------------------------------------------------------------------------------------


def test_without_the_extra_loading_and_exporting_say_what_to_install(tmp_path, monkeypatch, capsys):
    onnx_dir = tmp_path / "m"
    onnx_dir.mkdir()
    (onnx_dir / "model.onnx").write_bytes(b"not used")
    (onnx_dir / "config.json").write_text("{}")
    for module in ("onnx", "onnxruntime", "onnxscript"):
        monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    with pytest.raises(ModelLoadError, match=r'pip install "flowsr\[onnx\]"'):
        flowsr.load(onnx_dir)
    Image.fromarray(make_image(np.random.default_rng(0), 8, 8)).save(tmp_path / "a.png")
    capsys.readouterr()
    assert main(["upscale", str(tmp_path / "a.png"), "-o", str(tmp_path / "out"), "--model", str(onnx_dir)]) == 1
    assert main(["export", "oftsr-x4", "-o", str(tmp_path / "e")]) == 1
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and all('pip install "flowsr[onnx]"' in line for line in errors), errors
    assert not (tmp_path / "out" / "a.png").exists() and not (tmp_path / "e").exists()


@needs_onnx
def test_bad_onnx_model_directories_give_one_line_errors(tiny, tmp_path):
    import shutil

    _, exported = tiny["oftsr"]
    cases = {}
    for name in ("corrupt", "no-section", "bad-section", "no-config", "foreign"):
        shutil.copytree(exported, tmp_path / name)
        cases[name] = tmp_path / name
    (cases["corrupt"] / "model.onnx").write_bytes(b"\x08\x07garbage")
    config = json.loads((exported / "config.json").read_text())
    (cases["no-section"] / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k != "onnx"}))
    (cases["bad-section"] / "config.json").write_text(json.dumps({**config, "onnx": {"dtype": "int8"}}))
    (cases["no-config"] / "config.json").unlink()
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["image"], ["out"])], "g",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph), str(cases["foreign"] / "model.onnx"))
    expected = {"corrupt": "onnxruntime cannot load it", "no-section": 'no "onnx" section',
                "bad-section": "size_multiple", "no-config": "missing", "foreign": "are not flowsr's"}
    for name, directory in cases.items():
        with pytest.raises(ModelLoadError) as caught:
            flowsr.load(directory)
        assert expected[name] in str(caught.value) and "\n" not in str(caught.value), name


@needs_onnx
def test_export_refuses_what_it_cannot_do_and_writes_nothing(tiny, tmp_path):
    from flowsr.onnx_export import export

    source, exported = tiny["oftsr"]
    before = (source / "config.json").read_text()
    with pytest.raises(ValueError, match="holds a torch model"):
        export(source, source)
    assert (source / "config.json").read_text() == before and not (source / "model.onnx").exists()
    with pytest.raises(ValueError, match="bicubic has no network"):
        export("bicubic", tmp_path / "b")
    with pytest.raises(ValueError, match="already an ONNX export"):
        export(exported, tmp_path / "again")
    with pytest.raises(ValueError, match="opset 18 or later"):
        export(source, tmp_path / "old", opset=17)
    relabel(source, tmp_path / "odd", "flow")  # a teacher whose interval MLP was trained: h = 0 is not "no h"
    with pytest.raises(ValueError, match="interval MLP is not zero"):
        export(tmp_path / "odd", tmp_path / "odd-onnx")
    assert not any((tmp_path / name).exists() for name in ("b", "again", "old", "odd-onnx"))


@needs_onnx
def test_torch_only_options_are_refused_for_onnx_models(tiny):
    _, exported = tiny["oftsr"]
    with pytest.raises(ValueError, match="--dtype does not apply"):
        flowsr.load(exported, dtype="bf16")
    model = flowsr.load(exported, dtype="fp32")
    assert model.compile("none") is model
    with pytest.raises(ValueError, match="torch models only"):
        model.compile("default")
    if not torch.cuda.is_available():
        with pytest.raises((ModelLoadError, ValueError), match="CUDA"):
            flowsr.load(exported, device="cuda")


# -- SR networks (kind sr) and a flow model's start network ------------------------------------------------

# measured max abs differences of an output in [0, 1], ONNX Runtime vs torch (float32), with margin
SR_TOLERANCE = 1e-4  # bsrn-x4 and rlfn-x4: 2e-6 on Set5 bird, 1.6e-5 on random 13-pixel-high images (padded)
STARTED_TOLERANCE = 1e-4  # bsrn-x4 then a tiny student, 1 to 4 steps: 3e-6 on Set5 bird, 1.6e-5 on random images


def tiny_sr_model(directory: Path, arch: str) -> Path:
    """A tiny random feed-forward SR network of ``arch`` (bsrn or rlfn), kind sr."""
    torch.manual_seed(1)
    sr_net = SRNetConfig(arch=arch, channels=16, blocks=1)
    save_model_dir(directory, build_sr_net(sr_net, 4), ModelConfig(kind="sr", scale=4, net=None, sr_net=sr_net,
                                                                     name=f"tiny-{arch}"))
    return directory


@pytest.fixture(scope="module")
def started(tmp_path_factory):
    """(torch model directory, its ONNX export) of a tiny MeanFlow student whose start network is bsrn-x4."""
    if not HAS_ONNX:
        pytest.skip('needs the onnx extra: pip install "flowsr[onnx]"')
    from flowsr.onnx_export import export

    base = tmp_path_factory.mktemp("started")
    tiny_model(base / "student", "meanflow")
    config = ModelConfig.from_dict(json.loads((base / "student" / "config.json").read_text()))
    config.start, config.start_sha256 = "bsrn-x4", weights_sha256(bundled_models()["bsrn-x4"])
    (base / "student" / "config.json").write_text(config.to_json())
    export(base / "student", base / "exported")
    return base / "student", base / "exported"


@needs_onnx
def test_sr_export_is_lq_to_sr_with_dynamic_axes_its_licence_and_flops(started):
    import onnx

    exported = started[1] / "start"  # bsrn-x4's own export
    graph = onnx.load(str(exported / "model.onnx")).graph
    shapes = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
              for i in [*graph.input, *graph.output]}
    assert shapes == {"lq": ["batch", 3, "height", "width"], "sr": ["batch", 3, "4*height", "4*width"]}
    data = json.loads((exported / "config.json").read_text())
    spec = data.pop("onnx")
    bundled = bundled_models()["bsrn-x4"]
    assert ModelConfig.from_dict(data) == ModelConfig.from_dict(json.loads((bundled / "config.json").read_text()))
    assert spec["outputs"][0]["shape"] == ["batch", 3, "4*height", "4*width"] and spec["inputs"][0]["range"] == [0, 1]
    assert spec["check"]["max_abs_diff"] <= SR_TOLERANCE and "h_zero_is_no_h" not in spec
    assert (exported / "LICENSE").read_bytes() == (bundled / "LICENSE").read_bytes()
    from flowsr.bench import flops_per_pixel

    assert spec["flops_per_pixel"] == pytest.approx(flops_per_pixel(flowsr.load("bsrn-x4", device="cpu"), 128))


@needs_onnx
def test_sr_export_runs_through_the_pipeline_like_torch(started):
    from flowsr.onnx_backend import OnnxSRNet

    by_torch, by_onnx = flowsr.load("bsrn-x4", device="cpu"), flowsr.load(started[1] / "start")
    assert by_onnx.backend == "onnxruntime" and isinstance(by_onnx.net, OnnxSRNet)
    assert by_onnx.nfe(Settings()) == 1
    lq = torch.rand(2, 4, 13, 20, generator=torch.Generator().manual_seed(3))  # RGB + alpha, one side below 15
    for tile in (0, 16):
        expected = by_torch.upscale_tensor(lq, tile=tile, tile_overlap=4)
        got = by_onnx.upscale_tensor(lq, tile=tile, tile_overlap=4)
        assert got.shape == (2, 4, 52, 80) and max_diff(got, expected) <= SR_TOLERANCE, tile
    assert max_diff(by_onnx.predict(lq[:, :3]), by_torch.predict(lq[:, :3])) <= SR_TOLERANCE


@needs_onnx
@pytest.mark.parametrize("arch", ["bsrn", "rlfn"])
def test_tiny_sr_networks_export_in_float32_and_float16(arch, tmp_path):
    from flowsr.onnx_export import export

    source = tiny_sr_model(tmp_path / arch, arch)
    torch_model = flowsr.load(source, device="cpu")
    lq = torch.rand(1, 3, 17, 9, generator=torch.Generator().manual_seed(4))
    expected = torch_model.net(lq)
    for dtype, tolerance in (("float32", SR_TOLERANCE), ("float16", 0.01)):
        spec = export(source, tmp_path / dtype, dtype=dtype)
        model = flowsr.load(tmp_path / dtype)
        difference = max_diff(model.net(lq), expected)
        assert spec["dtype"] == dtype and 0 <= difference <= tolerance and spec["check"]["max_abs_diff"] <= tolerance
    assert not (tmp_path / "float32" / "LICENSE").exists()  # a model without a licence file gets none


@needs_onnx
def test_started_export_runs_without_torch_weights_and_matches_torch(started, tmp_path):
    import shutil

    source, exported = started
    copy = tmp_path / "elsewhere" / "student-onnx"
    shutil.copytree(exported, copy)
    assert sorted(p.relative_to(copy).as_posix() for p in copy.rglob("*")) == [
        "config.json", "model.onnx", "start", "start/LICENSE", "start/config.json", "start/model.onnx"]
    config = json.loads((copy / "config.json").read_text())
    assert config["start"] == "start" and config["start_sha256"] == weights_sha256(copy / "start")
    by_torch, by_onnx = flowsr.load(source, device="cpu"), flowsr.load(copy)
    assert by_onnx.backend == by_onnx.start.backend == "onnxruntime" and by_torch.start.name == "bsrn-x4"
    lq = torch.rand(1, 3, 14, 19, generator=torch.Generator().manual_seed(5))
    for settings in (Settings(steps=1, t=0.6), Settings(steps=2)):
        expected = by_torch.upscale_tensor(lq, settings, seed=3)
        got = by_onnx.upscale_tensor(lq, settings, seed=3)
        assert got.shape == (1, 3, 56, 76) and max_diff(got, expected) <= STARTED_TOLERANCE, settings
    # the start network is used: without it (bicubic) the output is far off
    bicubic = flowsr.load(source, device="cpu")
    bicubic.start, bicubic.config.start = None, "bicubic"
    assert max_diff(bicubic.upscale_tensor(lq, Settings(steps=1, t=0.6), seed=3), got) > 0.01


@needs_onnx
def test_started_export_without_its_start_or_with_another_one_is_refused(started, tmp_path):
    import shutil

    import onnx

    copy = tmp_path / "student-onnx"
    shutil.copytree(started[1], copy)
    (copy / "start").rename(tmp_path / "moved")
    with pytest.raises(ModelLoadError) as caught:
        flowsr.load(copy)
    message = str(caught.value)
    assert str(copy) in message and "'start'" in message and "\n" not in message
    (tmp_path / "moved").rename(copy / "start")
    proto = onnx.load(str(copy / "start" / "model.onnx"))
    proto.doc_string = "changed"  # still a valid graph, other bytes
    onnx.save(proto, str(copy / "start" / "model.onnx"))
    with pytest.raises(ModelLoadError, match="does not match the one it was trained on") as caught:
        flowsr.load(copy)
    assert "\n" not in str(caught.value)


@needs_onnx
def test_eval_and_bench_run_on_sr_and_started_exports(started, image_folder, tmp_path):
    source, exported = started
    out = tmp_path / "bench.json"
    models = ["bsrn-x4", str(exported / "start"), str(source), str(exported)]
    assert main(["bench", "--model", *models, "--device", "cpu", "--size", "32", "--repeat", "1",
                 "--ort-threads", "1", "--json", str(out)]) == 0
    gflops = [row["gflops_per_image"] for row in json.loads(out.read_text())["rows"]]
    assert gflops[0] == pytest.approx(gflops[1]) and gflops[2] == pytest.approx(gflops[3]) and gflops[2] > gflops[0]
    out = tmp_path / "eval.json"
    assert main(["eval", "--model", *models, "--data", str(image_folder), "--metrics", "psnr",
                 "--json", str(out)]) == 0
    psnr = [row["metrics"]["psnr_y"] for row in json.loads(out.read_text())["results"]]
    assert psnr[0] == pytest.approx(psnr[1], abs=1e-3) and psnr[2] == pytest.approx(psnr[3], abs=1e-3)


@needs_onnx
def test_a_started_export_is_scored_against_its_torch_teacher_like_its_source(started, image_folder, tmp_path):
    """eval --reference compares the flows' starts by the torch weights they came from: the export's start is
    recorded by its model.onnx, and its graph section names the BSRN weights it was exported from."""
    source, exported = started
    graph = json.loads((exported / "start" / "config.json").read_text())["onnx"]
    assert graph["weights_sha256"] == weights_sha256(bundled_models()["bsrn-x4"])
    teacher = tiny_model(tmp_path / "teacher", "flow")
    config = ModelConfig.from_dict(json.loads((teacher / "config.json").read_text()))
    config.start, config.start_sha256 = "bsrn-x4", weights_sha256(bundled_models()["bsrn-x4"])
    (teacher / "config.json").write_text(config.to_json())
    out = tmp_path / "eval.json"
    assert main(["eval", "--model", str(source), str(exported), "--data", str(image_folder), "--metrics", "psnr",
                 "--reference", str(teacher), "--reference-steps", "2", "--quiet", "--json", str(out)]) == 0
    ref = [row["metrics"]["ref_psnr_y"] for row in json.loads(out.read_text())["results"]]
    assert ref[0] == pytest.approx(ref[1], abs=1e-3) and 10 < ref[0] < 100
    # a teacher that starts elsewhere (bicubic) is still refused, for the export as for its source
    assert main(["eval", "--model", str(exported), "--data", str(image_folder), "--metrics", "psnr",
                 "--reference", str(tiny_model(tmp_path / "bicubic-teacher", "flow")), "--quiet"]) != 0


@needs_onnx
def test_export_of_a_model_whose_start_differs_is_refused_and_writes_nothing(started, tmp_path):
    import shutil

    from flowsr.onnx_export import export

    source = shutil.copytree(started[0], tmp_path / "student")
    config = json.loads((source / "config.json").read_text())
    (source / "config.json").write_text(json.dumps({**config, "start_sha256": "0" * 64}))
    with pytest.raises(ModelLoadError, match="does not match the one it was trained on") as caught:
        export(source, tmp_path / "exported")
    assert "\n" not in str(caught.value) and not (tmp_path / "exported").exists()


@needs_onnx
def test_example_script_runs_sr_and_started_exports_like_flowsr(started):
    _, exported = started
    rgb = make_image(np.random.default_rng(9), 14, 21)
    for directory in (exported / "start", exported):  # bsrn-x4 alone, and the student starting from it
        model = flowsr.load(directory)
        expected = model.upscale(rgb, seed=2)
        noise = _flowsr_noise(2, 56, 84, model.net.size_multiple)
        got = np.asarray(_example().upscale(directory, Image.fromarray(rgb), noise=noise)).astype(np.int16)
        assert got.shape == expected.shape == (56, 84, 3) and np.abs(got - expected).max() <= 1, directory.name
