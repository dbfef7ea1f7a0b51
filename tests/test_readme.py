"""The README's examples work: its Python blocks run on a tiny image, and every `flowsr SUBCOMMAND --flag`
it (or a docs page) shows exists in the parser, and every ../shared path it names is a real one."""

import itertools
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import make_image
from PIL import Image

from flowsr.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHARED = ROOT.parent / "shared"


def python_blocks(text: str) -> list[tuple[str, str]]:
    """(section heading, code) of every ```python block."""
    blocks, section = [], ""
    for part in re.split(r"(^```python\n.*?^```$)", text, flags=re.S | re.M):
        if part.startswith("```python\n"):
            blocks.append((section, part[len("```python\n"):-3]))
        else:
            headings = re.findall(r"^## (.+)$", part, flags=re.M)
            section = headings[-1] if headings else section
    return blocks


BLOCKS = python_blocks(README)
# the Deploy section's ten lines need an exported model: tests/test_onnx.py runs them without flowsr and torch
DEPLOY = "Deploy: ONNX and ONNX Runtime"


def test_the_readme_has_its_python_example_and_the_deploy_block():
    assert [s for s, _ in BLOCKS].count(DEPLOY) == 1 and any(s == "Python" for s, _ in BLOCKS)


@pytest.mark.parametrize("section,code", [b for b in BLOCKS if b[0] != DEPLOY], ids=lambda v: v[:20])
def test_python_block_runs_on_a_tiny_image(section, code, tmp_path):
    Image.fromarray(make_image(np.random.default_rng(0), 20, 24)).save(tmp_path / "photo.png")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    if "photo_x4.png" in code:
        assert Image.open(tmp_path / "photo_x4.png").size == (96, 80)


def _subparsers() -> dict:
    parser = build_parser()
    action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return action.choices


def shown_commands(text: str) -> list[str]:
    """Each `flowsr SUB ...` / `-m flowsr SUB ...` the page shows: in code blocks line by line (comments cut),
    in inline code spans and table cells span by span."""
    commands = []
    for language, block in re.findall(r"^```(\w*)\n(.*?)^```$", text, flags=re.S | re.M):
        if language not in ("", "bash", "sh"):
            continue
        for line in block.replace("\\\n", " ").splitlines():
            line = re.split(r"\s#", line, maxsplit=1)[0]
            commands += re.findall(r"(?:^|[\s;&|(])(?:-m )?(flowsr [a-z].*?)(?=$|&&|;|\|\s)", line)
    outside = re.sub(r"^```.*?^```$", "", text, flags=re.S | re.M)
    for span in re.findall(r"`([^`\n]+)`", outside):
        commands += re.findall(r"(?:^|\s)(?:-m )?(flowsr [a-z].*)", span)
    return commands


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_flowsr_subcommand_and_flag_shown_exists(page):
    subparsers = _subparsers()
    shown = shown_commands(page.read_text())
    if page.name == "README.md":
        assert len(shown) > 20
    wrong = []
    for command in shown:
        words = command.split()
        sub = words[1]
        if sub not in subparsers:
            wrong.append(f"{command!r}: no subcommand {sub!r}")
            continue
        known = {o for a in subparsers[sub]._actions for o in a.option_strings}
        flags = re.findall(r"(?<![\w-])(--?[a-zA-Z][\w-]*)", " ".join(words[2:]))
        wrong += [f"{command!r}: flowsr {sub} has no {flag}" for flag in flags
                  if flag not in known and not flag.startswith("--nproc") and flag != "-m"]
    assert not wrong, "\n".join(wrong)


def _expand(path: str) -> list[str]:
    parts = re.split(r"\{([^}]*)\}", path)
    options = [p.split(",") if i % 2 else [p] for i, p in enumerate(parts)]
    return ["".join(choice) for choice in itertools.product(*options)]


@pytest.mark.skipif(not (SHARED / "data").is_dir(), reason=f"../shared is not at {SHARED}")
@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_shared_path_named_exists(page):
    """`../shared/...` paths as the pages write them (the old README's ../shared/data/<set> was not one)."""
    missing = []
    for token in re.findall(r"\.\./shared/[^\s`'\")\]]*", page.read_text()):
        token = token.rstrip(".,:;")
        if re.search(r"/(SET|NAME)(/|$)|\.\.\.", token):  # placeholders the page explains
            continue
        missing += [p for p in _expand(token) if not (ROOT / p).exists()]
    assert not missing, f"{page.name} names paths that are not in ../shared: {sorted(set(missing))}"


@pytest.mark.parametrize("page", [*PAGES, *sorted((ROOT / "docs").glob("*/**/*.md"))], ids=lambda p: p.name)
def test_every_relative_link_points_at_a_file(page):
    text = re.sub(r"^```.*?^```$", "", page.read_text(), flags=re.S | re.M)
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        path = target.split("#", 1)[0]
        if path and not re.match(r"[a-z]+:", path) and not (page.parent / path).exists():
            broken.append(target)
    assert not broken, f"{page.relative_to(ROOT)}: {broken}"
