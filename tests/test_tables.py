"""No number drifts from what ships: every marked table in README.md and docs/ is what benchmarks/tables.py
writes from committed JSON, and the bundled models' rows come from the shipped weights (SHA-256)."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from flowsr.catalog import weights_sha256

ROOT = Path(__file__).resolve().parents[1]


def _module(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


tables = _module("tables")
bundled_results = _module("bundled_results")


def test_every_marked_table_is_what_the_command_writes():
    differing = []
    for page in tables.pages():
        text = page.read_text()
        _, changed = tables.regenerate(text, str(page))
        differing += [f"{page.relative_to(ROOT)}: table {name}" for name in changed]
    assert not differing, f"run `python3 benchmarks/tables.py`: {differing}"


def test_the_readme_shows_the_bundled_tables():
    readme = (ROOT / "README.md").read_text()
    for name in ("models", "bundled"):
        assert f"<!-- table:{name} -->" in readme and f"<!-- /table:{name} -->" in readme


def test_bundled_rows_come_from_the_shipped_weights():
    """Each recorded model is shipped and its SHA-256 is its weights file's: a model whose weights changed
    must be measured again (python3 benchmarks/bundled_results.py --models NAME)."""
    data = json.loads(tables.BUNDLED_JSON.read_text())
    wrong = []
    for entry in data["entries"]:
        name = entry["model"]
        assert all(row["model"] == name and row["dataset"] == entry["set"] for row in entry["rows"]), name
        assert "limit" not in entry and entry["rows"][0]["n_images"] > 0, f"{name} {entry['set']}: part of a set"
        if name == "bicubic":
            assert entry["sha256"] is None
            continue
        weights = tables.WEIGHTS / name / "model.safetensors"
        assert weights.is_file(), f"{name}: in {tables.BUNDLED_JSON.name} but not shipped"
        if entry["sha256"] != weights_sha256(weights.parent):
            wrong.append(f"{name} ({entry['set']})")
    names = " ".join(sorted({w.split()[0] for w in wrong}))
    assert not wrong, f"measured with other weights than the shipped ones: {wrong}; run " \
                      f"python3 benchmarks/bundled_results.py --models {names}"


def test_onnx_tables_come_from_the_shipped_weights():
    """docs/onnx.md's parity and speed tables name the bundled weights they measured; replacing a model makes them
    stale (re-run benchmarks/onnx_parity.py and benchmarks/onnx_cpu.sh)."""
    parity = json.loads((ROOT / "docs" / "onnx" / "parity.json").read_text())
    speed = json.loads((ROOT / "docs" / "onnx" / "speed" / "run.json").read_text())
    recorded = {(row["model"], row["sha256"]) for row in parity["rows"]} | {(speed["model"], speed["sha256"])}
    stale = [name for name, sha in sorted(recorded) if sha != weights_sha256(tables.WEIGHTS / name)]
    assert not stale, f"ONNX tables measured with other weights than the shipped ones: {stale}"


def test_bundled_rows_were_measured_at_the_serving_settings():
    data = json.loads(tables.BUNDLED_JSON.read_text())
    for entry in data["entries"]:
        kind = entry["rows"][0]["kind"]
        command = entry["command"]
        folder = "real/RealSR " if entry["set"] == "RealSR" else f"test/{entry['set']}/HR "
        assert command.startswith(f"python3 -m flowsr eval --data ../shared/data/{folder}") and "--scale 4" in command
        assert f"--model {entry['model']} " in command and f"--metrics {bundled_results.METRICS}" in command
        assert " ".join(bundled_results.SERVING.get(kind, [])) in command
        assert not {"--steps", "--t"} & set(command.split()) or kind in bundled_results.SERVING


def test_check_names_a_table_that_differs_and_rewriting_fixes_it(tmp_path, monkeypatch, capsys):
    page = tmp_path / "README.md"
    page.write_text("intro\n<!-- table:meanflow-ab -->\n| stale |\n<!-- /table:meanflow-ab -->\nafter\n")
    monkeypatch.setattr(tables, "pages", lambda: [page])
    assert tables.main(["--check"]) == 1
    assert f"{page}: table meanflow-ab" in capsys.readouterr().out
    assert page.read_text().count("| stale |") == 1  # --check writes nothing
    assert tables.main([]) == 0 and tables.main(["--check"]) == 0
    text = page.read_text()
    assert text.startswith("intro\n") and text.endswith("after\n") and "| stale |" not in text


def test_an_unknown_table_name_is_refused():
    with pytest.raises(SystemExit, match="unknown table 'nope'"):
        tables.regenerate("<!-- table:nope -->\n<!-- /table:nope -->\n", "page.md")


def _entry(model: str, set_name: str, psnr: float, sha: str | None) -> dict:
    row = {"model": model, "kind": "regression" if model != "bicubic" else "bicubic", "dataset": set_name,
           "protocol": "synthetic", "steps": 1, "t": None, "guidance": 1.0, "nfe": 1, "n_images": 5,
           "metrics": {"psnr_y": psnr, "ssim_y": 0.9, "lpips": 0.1, "dists": 0.1, "hf_ratio": 0.5},
           "seconds_per_image": 0.1, "device": "cpu"}
    return {"model": model, "set": set_name, "sha256": sha, "command": "python3 -m flowsr eval ...",
            "machine": "test", "date": "2026-01-01", "rows": [row]}


def test_rerunning_some_models_replaces_only_their_rows(tmp_path):
    out = tmp_path / "bundled.json"
    first = [_entry("bicubic", s, 28.0, None) for s in ("Set5", "Set14")] + [_entry("regression-x4", "Set5", 31.0, "a")]
    out.write_text(json.dumps(bundled_results.merge(out, first)))
    merged = bundled_results.merge(out, [_entry("regression-x4", "Set5", 30.0, "b")])
    by_key = {(e["model"], e["set"]): e for e in merged["entries"]}
    assert len(by_key) == 3 and by_key[("regression-x4", "Set5")]["sha256"] == "b"
    assert by_key[("regression-x4", "Set5")]["rows"][0]["metrics"]["psnr_y"] == 30.0
    assert by_key[("bicubic", "Set14")]["rows"][0]["metrics"]["psnr_y"] == 28.0


def test_rows_of_other_weights_are_left_out_of_the_tables(tmp_path, monkeypatch):
    shipped = weights_sha256(tables.WEIGHTS / "regression-x4")
    path = tmp_path / "bundled.json"
    path.write_text(json.dumps({"entries": [_entry("regression-x4", "Set5", 12.34, "0" * 64),
                                            _entry("bsrn-x4", "Set5", 56.78, "1" * 64)]}))
    monkeypatch.setattr(tables, "BUNDLED_JSON", path)
    summary = tables.bundled_summary()
    assert "12.34" not in summary and "56.78" not in summary
    assert "python3 benchmarks/bundled_results.py --models" in summary and "regression-x4" in summary
    path.write_text(json.dumps({"entries": [_entry("regression-x4", "Set5", 12.34, shipped)]}))
    assert "12.34" in tables.bundled_summary()


def test_a_try_on_part_of_a_set_cannot_land_in_the_committed_json():
    with pytest.raises(SystemExit):
        bundled_results.main(["--models", "bicubic", "--limit", "1"])


def _row(**metrics) -> dict:
    return {"metrics": metrics}


def test_the_shipping_verdict_names_each_metric_and_set_where_the_new_model_is_not_better():
    pairs = {"Set14": (_row(lpips=0.20, dists=0.18), _row(lpips=0.21, dists=0.15)),
             "BSD100": (_row(lpips=0.26, dists=0.20), _row(lpips=0.25, dists=0.20))}
    assert tables._verdict(pairs, ("lpips", "dists")) == \
        "no: LPIPS not better on Set14; DISTS not better on BSD100"  # a tie is not better
    assert tables._verdict({"Set14": (_row(psnr_y=26.0), _row(psnr_y=28.0))}, ("psnr_y",)) == "yes"
    assert tables._verdict({"Set14": (_row(psnr_y=28.0), _row(psnr_y=26.0))}, ("psnr_y",)) == \
        "no: PSNR-Y not better on Set14"


def test_a_run_record_tags_rows_with_their_set_drops_per_image_values_and_names_a_wrong_file(tmp_path, capsys):
    run_record = _module("run_record")
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"kind": "flow", "training": {"steps": 7, "steps_total": 12}}))
    evals = []
    for name, steps in (("Set14", (1, 8)), ("BSD100", (32,))):
        evals.append(tmp_path / f"{name}.json")
        evals[-1].write_text(json.dumps({"dataset": name, "results": [
            {"steps": n, "metrics": {"lpips": 0.1 * n}, "per_image": [{"name": "a"}]} for n in steps]}))
    out = tmp_path / "record.json"
    assert run_record.main([*map(str, evals), "--model", str(model), "--label", "L", "--what", "W",
                            "--train-command", "T", "--eval-command", "E1", "--eval-command", "E2",
                            "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert [(r["set"], r["steps"]) for r in data["rows"]] == [("Set14", 1), ("Set14", 8), ("BSD100", 32)]
    assert not any("per_image" in r for r in data["rows"])
    assert data["training"] == {"steps": 7, "steps_total": 12} and data["eval_commands"] == ["E1", "E2"]
    wrong = tmp_path / "not-eval.json"
    wrong.write_text("{}")
    assert run_record.main([str(wrong), "--model", str(model), "--label", "L", "--what", "W",
                            "--train-command", "T", "--out", str(tmp_path / "x.json")]) == 1
    assert "not-eval.json" in capsys.readouterr().err and not (tmp_path / "x.json").exists()
