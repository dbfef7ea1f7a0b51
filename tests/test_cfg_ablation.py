"""The CFG ablation's report (benchmarks/cfg_ablation_report.py, issue 24) on eval JSON built here, and the
ablation script's refusals (no training)."""

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("cfg_ablation_report", ROOT / "benchmarks" / "cfg_ablation_report.py")
report = importlib.util.module_from_spec(spec)
spec.loader.exec_module(report)


def row(kind, steps, guidance=1.0, reference=None, **metrics):
    """One `flowsr eval` result row (what cfg_ablation_eval.sh writes), per-image rows included."""
    return {"model": "m", "kind": kind, "steps": steps, "guidance": guidance, "nfe": steps * (2 if guidance != 1 else 1)
            if kind == "flow" else steps, "n_images": 5, "metrics": metrics, "per_image": [{"name": "a"}],
            **({"reference": {"model": "teacher", "steps": 32, "guidance": reference}} if reference else {})}


def write(folder: Path, name: str, rows: list[dict]) -> None:
    (folder / f"{name}.json").write_text(json.dumps({"dataset": name.split("-")[0], "results": rows}))


@pytest.fixture
def results(tmp_path) -> Path:
    folder = tmp_path / "eval"
    folder.mkdir()
    m = dict(ssim_y=0.8, dists=0.1)
    write(folder, "Set5-w1", [row("meanflow", 1, reference=1.0, psnr_y=31.0, lpips=0.20, hf_ratio=0.5,
                                  ref_psnr_y=40.0, **m),
                              row("meanflow", 4, reference=1.0, psnr_y=30.0, lpips=0.25, hf_ratio=0.6,
                                  ref_psnr_y=38.0, **m)])
    write(folder, "Set5-w1.5", [row("meanflow", 1, reference=1.5, psnr_y=30.0, lpips=0.18, hf_ratio=1.3,
                                    ref_psnr_y=35.0, **m),
                                row("meanflow", 4, reference=1.5, psnr_y=31.5, lpips=0.25, hf_ratio=0.9,
                                    ref_psnr_y=36.0, **m)])
    # NO_REFERENCE: no ref_psnr_y; an HF ratio above 1 but nearest to it
    write(folder, "Set5-mf-w1.5", [row("meanflow", 1, psnr_y=29.0, lpips=0.19, hf_ratio=1.1, **m)])
    write(folder, "Set5-teacher-w1.5", [row("flow", 1, 1.5, psnr_y=35.0, lpips=0.01, hf_ratio=1.0, **m),
                                        row("flow", 32, 1.5, psnr_y=34.0, lpips=0.02, hf_ratio=1.0, **m)])
    write(folder, "Set14-w2.5", [row("meanflow", 1, reference=2.5, psnr_y=27.0, lpips=0.3, hf_ratio=0.7, **m)])
    (folder / "notes.json").write_text(json.dumps({"not": "an eval"}))  # skipped
    return folder


def test_rows_roles_and_order(results):
    rows = report.load_rows(results)
    assert [(r["set"], r["variant"], r["steps"]) for r in rows] == [
        ("Set5", "w1", 1), ("Set5", "w1.5", 1), ("Set5", "mf-w1.5", 1), ("Set5", "w1", 4), ("Set5", "w1.5", 4),
        ("Set5", "teacher-w1.5", 1), ("Set5", "teacher-w1.5", 32), ("Set14", "w2.5", 1)]
    assert {r["role"] for r in rows if r["variant"].startswith("teacher")} == {"teacher"}
    assert all("per_image" not in r for r in rows)


def test_best_per_column_among_students_of_one_step_count(results):
    rows = report.load_rows(results)
    report.mark_best(rows)
    best = {(r["set"], r["variant"], r["steps"]): set(r["best"]) for r in rows}
    assert best[("Set5", "w1", 1)] == {"psnr_y", "ref_psnr_y", "ssim_y", "dists"}  # ties: every equal row
    assert best[("Set5", "w1.5", 1)] == {"lpips", "ssim_y", "dists"}
    assert best[("Set5", "mf-w1.5", 1)] == {"hf_ratio", "ssim_y", "dists"}  # 1.1 beats 0.5 and 1.3: nearest 1
    assert best[("Set5", "w1.5", 4)] == {"psnr_y", "hf_ratio", "lpips", "ssim_y", "dists"}
    assert best[("Set5", "w1", 4)] == {"ref_psnr_y", "lpips", "ssim_y", "dists"}  # lpips: tied at 0.25
    assert best[("Set5", "teacher-w1.5", 1)] == set()  # the teacher is the ceiling, not a competitor
    assert best[("Set14", "w2.5", 1)] == {"psnr_y", "ssim_y", "lpips", "dists", "hf_ratio"}  # alone in its set


def test_report_files(results, tmp_path):
    runs = tmp_path / "runs"
    (runs / "mf-w1.5").mkdir(parents=True)  # the only variant with a training record
    (runs / "mf-w1.5" / "config.json").write_text(json.dumps({"training": {"steps": 44, "wall_seconds": 20.5,
                                                                           "device": "cpu"}}))
    (runs / "mf-w1.5" / "train_config.json").write_text(json.dumps(
        {"mf_target": "conditional", "guidance": 1.0, "mf_omega": 0.75, "mf_kappa": 0.5, "seed": 0,
         "teacher": "t", "init": ""}))
    prefix = tmp_path / "docs" / "cfg_ablation"
    report.main(results, prefix, runs)
    data = json.loads(prefix.with_suffix(".json").read_text())
    assert len(data["rows"]) == 8 and [r["variant"] for r in data["training"]] == ["mf-w1.5"]
    text = prefix.with_suffix(".md").read_text()
    assert "| mf-w1.5 | conditional | – | 0.75 | 0.5 | 44 | 20.5 | cpu |" in text
    assert text.index("### Set5 (x4, 5 images)") < text.index("### Set14 (x4, 5 images)")
    lines = text.splitlines()
    w1 = next(line for line in lines if line.startswith("| w1 | no guidance | 1 |"))
    assert "**31.00**" in w1 and "**40.00**" in w1 and "0.2000" in w1 and "**0.2000**" not in w1
    mf = next(line for line in lines if line.startswith("| mf-w1.5 | MeanFlow CFG, effective 1.5 | 1 |"))
    assert mf.endswith("| – |") and "**1.10**" in mf
    teacher = [line for line in lines if line.startswith("| teacher-w1.5 |")]
    assert "(the reference)" in teacher[1] and "(the reference)" not in teacher[0] and "**" not in "".join(teacher)
    assert "one teacher, the same 44 training steps and seed" in text and "teacher's 32-step output" in text
    assert text.count("<!-- table:cfg-ablation -->") == 1 and text.rstrip().endswith("<!-- /table:cfg-ablation -->")


def test_report_keeps_the_pages_text_and_tables_py_writes_the_same_table(results, tmp_path):
    prefix = tmp_path / "cfg_ablation"
    page = "# Title\n\nWhat holds.\n\n<!-- table:cfg-ablation -->\nstale\n<!-- /table:cfg-ablation -->\n\nAfter.\n"
    prefix.with_suffix(".md").write_text(page)
    report.main(results, prefix)
    text = prefix.with_suffix(".md").read_text()
    assert text.startswith("# Title\n\nWhat holds.\n\n<!-- table:cfg-ablation -->\n") and text.endswith("\n\nAfter.\n")
    assert "stale" not in text and "one budget each" in text
    table = report.tables(json.loads(prefix.with_suffix(".json").read_text()))
    assert "<!-- table:cfg-ablation -->\n" + table.strip("\n") + "\n<!-- /table:cfg-ablation -->" in text
    prefix.with_suffix(".md").write_text("# no markers\n")
    with pytest.raises(SystemExit, match="no <!-- table:cfg-ablation --> ... <!-- /table:cfg-ablation --> markers"):
        report.main(results, prefix)


def test_empty_results_refused(tmp_path):
    with pytest.raises(SystemExit, match="no flowsr eval JSON"):
        report.main(tmp_path, tmp_path / "out")
    assert not (tmp_path / "out.md").exists()


@pytest.mark.parametrize("variants, teacher, message", [
    ("w1 bogus", "teacher", "unknown variant bogus"), ("w1", "missing", "no teacher at")])
def test_ablation_refuses_before_training(tmp_path, variants, teacher, message):
    (tmp_path / "teacher").mkdir()
    (tmp_path / "teacher" / "model.safetensors").write_bytes(b"")
    env = {**os.environ, "VARIANTS": variants, "TEACHER": str(tmp_path / teacher), "RUNS": str(tmp_path / "runs")}
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "cfg_ablation.sh")], env=env, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 2 and message in done.stdout + done.stderr
    assert not (tmp_path / "runs").exists()
